package tufclient

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/client/internal/clock"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// repoServer serves repo as a plain TUF repository and returns its base URL.
func repoServer(t *testing.T, repo *clienttest.Repo) (string, *[]string) {
	t.Helper()
	var mu sync.Mutex
	var log []string
	srv := httptest.NewServer(repo.Handler(&mu, &log))
	t.Cleanup(srv.Close)
	return srv.URL, &log
}

func newClient(t *testing.T, url string, root []byte, dir string) *Client {
	t.Helper()
	c, err := New(context.Background(), Config{
		MetadataURL: url + "/metadata/", TargetsURL: url + "/targets/",
		MetadataDir: dir, Root: root, HTTP: http.DefaultClient,
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The clock rule (client/internal/clock) against go-tuf's own expiry
// checks, with the reference time forced by UnsafeSetRefTime: a device
// whose clock reads 1970 or 2099 must neither accept expired metadata nor
// refuse all updates.
func TestClockRuleWith1970And2099Clocks(t *testing.T) {
	now := time.Now().UTC()
	// Signed evidence the device holds: its certificate, issued an hour ago.
	floor := clock.Source{BootID: func() string { return "" }}.Advance(journal.Clock{}, now.Add(-time.Hour))

	fresh := clienttest.NewRepo(t, "")
	frozen := clienttest.NewRepo(t, "")
	frozen.SetExpiry(now.Add(-24 * time.Hour)) // a mirror frozen since yesterday
	frozen.Publish(t)

	clocks := map[string]time.Time{
		"1970": time.Unix(0, 0).UTC(),
		"2099": time.Date(2099, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	tests := []struct {
		clock       string
		repo        *clienttest.Repo
		naiveOK     bool // go-tuf trusting the wall clock
		ruleOK      bool // the agent's reference time
		description string
	}{
		{"1970", frozen, true, false, "a dead RTC would accept a frozen repository forever"},
		{"1970", fresh, true, true, "a dead RTC still updates"},
		{"2099", fresh, false, true, "a clock in 2099 would refuse every update"},
		{"2099", frozen, false, false, "expired metadata stays refused"},
	}
	for _, tt := range tests {
		t.Run(tt.clock+"/"+tt.description, func(t *testing.T) {
			url, _ := repoServer(t, tt.repo)
			wall := clocks[tt.clock]
			for _, mode := range []string{"naive", "rule"} {
				c := newClient(t, url, tt.repo.RootJSON(), t.TempDir())
				ref, basis := wall, clock.Basis("wall")
				if mode == "rule" {
					ref, basis = clock.Source{Wall: func() time.Time { return wall }, BootID: func() string { return "" }}.Reference(floor)
				}
				c.UnsafeSetRefTime(ref)
				_, err := c.Refresh(journal.Seen{})
				ok := mode == "naive" && tt.naiveOK || mode == "rule" && tt.ruleOK
				if (err == nil) != ok {
					t.Fatalf("%s (reference %v, %s): err = %v, want ok=%v", mode, ref, basis, err, ok)
				}
				if err != nil && !errors.Is(err, &metadata.ErrExpiredMetadata{}) {
					t.Fatalf("%s: want a freeze refusal, got %v", mode, err)
				}
				if mode == "rule" && basis == clock.BasisWall {
					t.Fatalf("the rule trusted a %s wall clock", tt.clock)
				}
			}
		})
	}
}

// A verified timestamp is evidence too: expiry minus the longest timestamp
// validity the repository uses.
func TestTimestampIsTimeEvidence(t *testing.T) {
	repo := clienttest.NewRepo(t, "")
	url, _ := repoServer(t, repo)
	c := newClient(t, url, repo.RootJSON(), t.TempDir())
	if _, err := c.Refresh(journal.Seen{}); err != nil {
		t.Fatal(err)
	}
	if got, want := c.TimestampExpires(), repo.Timestamp().Signed.Expires; !got.Equal(want) {
		t.Fatalf("timestamp expires %v, want %v", got, want)
	}
}
