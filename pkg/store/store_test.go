package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

func forEach(t *testing.T, fn func(t *testing.T, d *store.DB)) { storetest.Each(t, fn) }

// enrollToken enrolls serial with the admin token hash through the live
// enrollment path (EnrollDevice), with a key of its own.
func enrollToken(ctx context.Context, d *store.DB, hash, serial, model string) (store.Device, error) {
	return d.EnrollDevice(ctx, store.EnrollRequest{Serial: serial, Model: model, KeySHA256: "key-" + serial, TokenHash: hash}, issuer("key-"+serial))
}

func setup(t *testing.T, d *store.DB) context.Context {
	ctx := context.Background()
	if _, err := d.CreateModel(ctx, store.Model{Name: "edge-gw"}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

func TestModels(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		if _, err := d.CreateModel(ctx, store.Model{Name: "edge-gw"}); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("duplicate model: %v", err)
		}
		if _, err := d.GetModel(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown model: %v", err)
		}
		ms, err := d.ListModels(ctx)
		if err != nil || len(ms) != 1 || ms[0].Name != "edge-gw" {
			t.Fatalf("%v %v", ms, err)
		}
	})
}

func TestUpdateModelHardwareIDsIsSeenAtOnce(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		if _, err := d.GetModel(ctx, "edge-gw"); err != nil { // cached now
			t.Fatal(err)
		}
		m, err := d.UpdateModel(ctx, "edge-gw", []string{"rev-a", "rev-b", "rev-a"}, nil)
		if err != nil || !slices.Equal(m.HardwareIDs, []string{"rev-a", "rev-b"}) {
			t.Fatalf("add: %v %v", m.HardwareIDs, err)
		}
		if got, err := d.GetModel(ctx, "edge-gw"); err != nil || !slices.Equal(got.HardwareIDs, []string{"rev-a", "rev-b"}) {
			t.Fatalf("stale cached model after update: %v %v", got.HardwareIDs, err)
		}
		m, err = d.UpdateModel(ctx, "edge-gw", []string{"rev-c"}, []string{"rev-a", "nope"})
		if err != nil || !slices.Equal(m.HardwareIDs, []string{"rev-b", "rev-c"}) {
			t.Fatalf("add+remove: %v %v", m.HardwareIDs, err)
		}
		if _, err := d.UpdateModel(ctx, "nope", []string{"x"}, nil); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown model: %v", err)
		}
		many := make([]string, store.MaxHardwareIDs)
		for i := range many {
			many[i] = fmt.Sprintf("hw-%d", i)
		}
		if _, err := d.UpdateModel(ctx, "edge-gw", many, nil); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("too many hardware ids: %v", err)
		}
		if got, _ := d.GetModel(ctx, "edge-gw"); !slices.Equal(got.HardwareIDs, []string{"rev-b", "rev-c"}) {
			t.Fatalf("a refused update changed the model: %v", got.HardwareIDs)
		}
	})
}

func TestEnrollTokenIsSingleUseAndBound(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		tok := store.Token{Hash: "h1", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour), CreatedBy: "admin"}
		if err := d.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		if _, err := enrollToken(ctx, d, "h1", "SN-2", "edge-gw"); !errors.Is(err, store.ErrTokenBinding) {
			t.Fatalf("other serial: %v", err)
		}
		if _, err := enrollToken(ctx, d, "nope", "SN-1", "edge-gw"); !errors.Is(err, store.ErrTokenInvalid) {
			t.Fatalf("unknown token: %v", err)
		}
		boom := errors.New("issuer down")
		failing := func() (store.Issued, error) { return store.Issued{}, boom }
		if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "key-SN-1", TokenHash: "h1"}, failing); !errors.Is(err, boom) {
			t.Fatalf("failing issuer: %v", err)
		}
		// The failed issuance must not have consumed the token.
		dv, err := enrollToken(ctx, d, "h1", "SN-1", "edge-gw")
		if err != nil {
			t.Fatalf("enroll after failed issuance: %v", err)
		}
		if dv.Status != store.DeviceActive {
			t.Fatalf("status %q", dv.Status)
		}
		if _, err := enrollToken(ctx, d, "h1", "SN-1", "edge-gw"); !errors.Is(err, store.ErrTokenUsed) {
			t.Fatalf("reuse: %v", err)
		}
		got, err := d.GetDevice(ctx, dv.ID)
		if err != nil || got.Serial != "SN-1" {
			t.Fatalf("%+v %v", got, err)
		}
	})
}

func TestEnrollRefusesExpiredTokenAndDuplicateDevice(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		d.CreateToken(ctx, store.Token{Hash: "old", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(-time.Second)})
		if _, err := enrollToken(ctx, d, "old", "SN-1", "edge-gw"); !errors.Is(err, store.ErrTokenExpired) {
			t.Fatalf("expired: %v", err)
		}
		d.CreateToken(ctx, store.Token{Hash: "a", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		d.CreateToken(ctx, store.Token{Hash: "b", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		if _, err := enrollToken(ctx, d, "a", "SN-1", "edge-gw"); err != nil {
			t.Fatal(err)
		}
		// Another token for the same serial with another key: a clone.
		if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "other", TokenHash: "b"}, issuer("other")); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second enrollment of a serial: %v", err)
		}
	})
}

func TestConcurrentTokenUseIssuesOnce(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		d.CreateToken(ctx, store.Token{Hash: "race", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := 0
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := enrollToken(ctx, d, "race", "SN-1", "edge-gw"); err == nil {
					mu.Lock()
					ok++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if ok != 1 {
			t.Fatalf("token used %d times, want exactly once", ok)
		}
	})
}

func TestReleasesAreMonotonic(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		r := store.Release{Model: "edge-gw", Version: "1.0.0", Counter: 1, TargetPath: "edge-gw/1.0.0/fw.bin", SHA256: "aa", Length: 3}
		if _, err := d.AddRelease(ctx, r, nil); err != nil {
			t.Fatal(err)
		}
		r2 := r
		r2.Version, r2.TargetPath = "0.9.0", "edge-gw/0.9.0/fw.bin"
		if _, err := d.AddRelease(ctx, r2, nil); !errors.Is(err, store.ErrStale) {
			t.Fatalf("same counter: %v", err)
		}
		r3 := r
		r3.Counter = 2
		if _, err := d.AddRelease(ctx, r3, nil); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("same version: %v", err)
		}
		failed := errors.New("publish failed")
		r4 := store.Release{Model: "edge-gw", Version: "1.1.0", Counter: 2, TargetPath: "edge-gw/1.1.0/fw.bin", SHA256: "bb", Length: 3}
		if _, err := d.AddRelease(ctx, r4, func() error { return failed }); !errors.Is(err, failed) {
			t.Fatalf("failed check: %v", err)
		}
		latest, err := d.LatestRelease(ctx, "edge-gw")
		if err != nil || latest.Version != "1.0.0" {
			t.Fatalf("a failed publish was recorded: %+v %v", latest, err)
		}
		if _, err := d.AddRelease(ctx, r4, nil); err != nil {
			t.Fatal(err)
		}
		rs, _ := d.ListReleases(ctx, "edge-gw")
		if len(rs) != 2 || rs[0].Version != "1.1.0" {
			t.Fatalf("%+v", rs)
		}
		got, err := d.ReleaseByTarget(ctx, "edge-gw/1.1.0/fw.bin")
		if err != nil || got.Counter != 2 {
			t.Fatalf("%+v %v", got, err)
		}
	})
}

// TestGetReleaseIsScopedToModel: a version is looked up within its model; the
// same version string in another model is a different release.
func TestGetReleaseIsScopedToModel(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		if _, err := d.CreateModel(ctx, store.Model{Name: "cam"}); err != nil {
			t.Fatal(err)
		}
		for _, r := range []store.Release{
			{Model: "edge-gw", Version: "1.0.0", Counter: 1, TargetPath: "edge-gw/1.0.0/fw.bin", SHA256: "aa", Length: 3},
			{Model: "edge-gw", Version: "1.1.0", Counter: 2, TargetPath: "edge-gw/1.1.0/fw.bin", SHA256: "bb", Length: 3},
			{Model: "cam", Version: "1.0.0", Counter: 7, TargetPath: "cam/1.0.0/fw.bin", SHA256: "cc", Length: 4},
		} {
			if _, err := d.AddRelease(ctx, r, nil); err != nil {
				t.Fatal(err)
			}
		}
		tests := []struct {
			name, model, version string
			wantTarget           string
			wantErr              error
		}{
			{name: "found", model: "edge-gw", version: "1.0.0", wantTarget: "edge-gw/1.0.0/fw.bin"},
			{name: "same version in another model", model: "cam", version: "1.0.0", wantTarget: "cam/1.0.0/fw.bin"},
			{name: "version of another model only", model: "cam", version: "1.1.0", wantErr: store.ErrNotFound},
			{name: "unknown version", model: "edge-gw", version: "9.9.9", wantErr: store.ErrNotFound},
			{name: "unknown model", model: "nope", version: "1.0.0", wantErr: store.ErrNotFound},
		}
		for _, tt := range tests {
			got, err := d.GetRelease(ctx, tt.model, tt.version)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("%s: err = %v, want %v", tt.name, err, tt.wantErr)
			}
			if tt.wantErr != nil {
				continue
			}
			if got.Model != tt.model || got.Version != tt.version || got.TargetPath != tt.wantTarget || got.ID == 0 || got.CreatedAt.IsZero() {
				t.Fatalf("%s: got %+v", tt.name, got)
			}
		}
	})
}

// TestReleasesArePaged: PageReleases pages in ListReleases' order (model,
// then newest counter first) inside the query, and refuses a cursor that is
// not a release (of the filtered model).
func TestReleasesArePaged(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		if _, err := d.CreateModel(ctx, store.Model{Name: "cam"}); err != nil {
			t.Fatal(err)
		}
		add := func(model string, counter int64) {
			v := fmt.Sprintf("1.0.%d", counter)
			r := store.Release{Model: model, Version: v, Counter: counter, TargetPath: model + "/" + v + "/fw.bin", SHA256: "aa", Length: 3}
			if _, err := d.AddRelease(ctx, r, nil); err != nil {
				t.Fatal(err)
			}
		}
		for c := int64(1); c <= 5; c++ {
			add("edge-gw", c)
			if c <= 2 {
				add("cam", c)
			}
		}
		walk := func(model string, limit int) string {
			t.Helper()
			var got []string
			after := int64(0)
			for {
				page, err := d.PageReleases(ctx, model, after, limit)
				if err != nil || len(page) > limit {
					t.Fatalf("page after %d: %d releases, %v", after, len(page), err)
				}
				for _, r := range page {
					got = append(got, r.Model+"#"+fmt.Sprint(r.Counter))
				}
				if len(page) < limit {
					return fmt.Sprint(got)
				}
				after = page[len(page)-1].ID
			}
		}
		all, _ := d.ListReleases(ctx, "")
		var want []string
		for _, r := range all {
			want = append(want, r.Model+"#"+fmt.Sprint(r.Counter))
		}
		if fmt.Sprint(want) != "[cam#2 cam#1 edge-gw#5 edge-gw#4 edge-gw#3 edge-gw#2 edge-gw#1]" {
			t.Fatalf("ListReleases order: %v", want)
		}
		for _, limit := range []int{1, 2, 3, 7, store.MaxReleasePage} {
			if got := walk("", limit); got != fmt.Sprint(want) {
				t.Fatalf("limit %d: %s, want %v", limit, got, want)
			}
		}
		if got := walk("edge-gw", 2); got != "[edge-gw#5 edge-gw#4 edge-gw#3 edge-gw#2 edge-gw#1]" {
			t.Fatalf("edge-gw pages: %s", got)
		}
		for _, limit := range []int{0, -1, store.MaxReleasePage + 1} {
			if _, err := d.PageReleases(ctx, "", 0, limit); err == nil {
				t.Fatalf("limit %d accepted", limit)
			}
		}
		if _, err := d.PageReleases(ctx, "", 999999, 10); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown cursor: %v", err)
		}
		cam, _ := d.PageReleases(ctx, "cam", 0, 1)
		if _, err := d.PageReleases(ctx, "edge-gw", cam[0].ID, 10); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("cursor of another model: %v", err)
		}
	})
}

func TestAttestationReplayRefused(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		d.CreateToken(ctx, store.Token{Hash: "h", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		dv, _ := enrollToken(ctx, d, "h", "SN-1", "edge-gw")
		a := store.Attestation{DeviceID: dv.ID, Sequence: 1, Outcome: "committed", TargetPath: "edge-gw/1.0.1/fw.bin", SHA256: "aa", Version: "1.0.1", Counter: 1, Envelope: []byte("{}")}
		if _, err := d.AddAttestation(ctx, a); err != nil {
			t.Fatal(err)
		}
		if _, err := d.AddAttestation(ctx, a); !errors.Is(err, store.ErrReplay) {
			t.Fatalf("replay: %v", err)
		}
		got, _ := d.GetDevice(ctx, dv.ID)
		if got.InstalledVersion != "1.0.1" || got.LastAttestationAt.IsZero() || got.InstalledCounter != 1 {
			t.Fatalf("%+v", got)
		}
		rb := a
		rb.Sequence, rb.Outcome, rb.Version = 2, "rolled-back", "1.0.2"
		if _, err := d.AddAttestation(ctx, rb); err != nil {
			t.Fatal(err)
		}
		got, _ = d.GetDevice(ctx, dv.ID)
		if got.InstalledVersion != "1.0.1" {
			t.Fatalf("a rollback changed the installed version to %q", got.InstalledVersion)
		}
		all, _ := d.ListAttestations(ctx, dv.ID)
		if len(all) != 2 {
			t.Fatalf("%d attestations", len(all))
		}
		if _, err := d.AddAttestation(ctx, store.Attestation{DeviceID: "urn:foster:device:x:y", Sequence: 1}); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("unknown device: %v", err)
		}
	})
}

func TestRevocationAndAudit(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		d.CreateToken(ctx, store.Token{Hash: "h", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		dv, _ := enrollToken(ctx, d, "h", "SN-1", "edge-gw")
		if err := d.SetDeviceStatus(ctx, dv.ID, store.DeviceRevoked); err != nil {
			t.Fatal(err)
		}
		got, _ := d.GetDevice(ctx, dv.ID)
		if got.Status != store.DeviceRevoked {
			t.Fatal("not revoked")
		}
		if err := d.SetDeviceStatus(ctx, "urn:foster:device:x:y", store.DeviceRevoked); !errors.Is(err, store.ErrNotFound) {
			t.Fatal(err)
		}
		for i := 0; i < 3; i++ {
			if err := d.Audit(ctx, "urn:foster:admin:admin", "test", fmt.Sprint(i)); err != nil {
				t.Fatal(err)
			}
		}
		ev, _ := d.ListAudit(ctx)
		if len(ev) != 3 || ev[2].Detail != "2" {
			t.Fatalf("%+v", ev)
		}
	})
}

// TestDevicesBySerialFindsEveryModelsDevice: a serial may exist once per
// model; the lookup returns each (so an ambiguous serial is reported), and
// nothing for an unknown serial.
func TestDevicesBySerialFindsEveryModelsDevice(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		if _, err := d.CreateModel(ctx, store.Model{Name: "cam"}); err != nil {
			t.Fatal(err)
		}
		for _, m := range []string{"edge-gw", "cam"} {
			if err := d.CreateToken(ctx, store.Token{Hash: "h-" + m, Serial: "SN-1", Model: m, ExpiresAt: time.Now().Add(time.Hour), CreatedBy: "admin"}); err != nil {
				t.Fatal(err)
			}
			if _, err := enrollToken(ctx, d, "h-"+m, "SN-1", m); err != nil {
				t.Fatal(err)
			}
		}
		ds, err := d.DevicesBySerial(ctx, "SN-1")
		if err != nil || len(ds) != 2 || ds[0].Model != "cam" || ds[1].Model != "edge-gw" {
			t.Fatalf("DevicesBySerial(SN-1) = %+v %v", ds, err)
		}
		if ds, err := d.DevicesBySerial(ctx, "SN-2"); err != nil || len(ds) != 0 {
			t.Fatalf("DevicesBySerial(SN-2) = %+v %v", ds, err)
		}
	})
}
