package server_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/store"
)

// BenchmarkPollRollouts: device polls with 10 active rollouts against
// none (issue 10: >= 90 %). Two instances, each serving 10 models with one
// release each and running the rollout Controller's loop at a 1 s tick
// (fosterd runs it always; the short tick makes its cost show); in the
// second each release is held and has a running rollout created through the
// instance's Controller, so each model role carries signed terms and the
// loop evaluates 10 rollouts a second. One enrolled device's mTLS
// credentials, 64 keep-alive connections (the pollers of
// BenchmarkTimestampPoll), polling what devices poll:
//
//   - timestamp-304: timestamp.json with If-None-Match, answered 304 (what
//     an up-to-date device asks at every poll);
//   - model-role-200: the device's model role (which carries the terms),
//     fetched whole, as a device does when the timestamp changed.
//
// The machine is shared and noisy, so the two are measured in alternating
// rounds of 3 s within one run (6 rounds each), and the ratio is taken per
// round pair; each iteration is one whole comparison:
//
//	go test -run '^$' -bench BenchmarkPollRollouts -benchtime 1x -v ./ota/server/
func BenchmarkPollRollouts(b *testing.B) {
	for _, what := range []string{"timestamp-304", "model-role-200"} {
		b.Run(what, func(b *testing.B) {
			none, ten := pollRollouts(b, what, 0), pollRollouts(b, what, 10)
			for range b.N {
				var sum0, sum10 float64
				var ratios []float64
				for round := range 6 {
					var p0, p10 float64
					if round%2 == 0 { // alternate which goes first
						p0, p10 = none(3*time.Second), ten(3*time.Second)
					} else {
						p10, p0 = ten(3*time.Second), none(3*time.Second)
					}
					sum0, sum10 = sum0+p0, sum10+p10
					ratios = append(ratios, p10/p0)
					b.Logf("round %d: rollouts=0 %.0f polls/s, rollouts=10 %.0f polls/s, ratio %.3f", round+1, p0, p10, p10/p0)
				}
				slices.Sort(ratios)
				b.ReportMetric(sum0/6, "polls/s-rollouts=0")
				b.ReportMetric(sum10/6, "polls/s-rollouts=10")
				b.ReportMetric(sum10/sum0, "ratio")
				b.ReportMetric(ratios[0], "min-round-ratio")
			}
		})
	}
}

// pollRollouts sets up one instance and returns a function that polls it
// for d and returns the polls per second.
func pollRollouts(b *testing.B, what string, rollouts int) func(d time.Duration) float64 {
	base, cfg, in, ac := pollInstance(b, false)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { in.Rollouts.Run(ctx, time.Second); close(done) }()
	b.Cleanup(func() { cancel(); <-done })
	for i := range 10 {
		m := "edge-gw" // the polling device's model (pollInstance made it)
		if i > 0 {
			m = fmt.Sprintf("model-%d", i)
			postJSON(b, ac, base+"/v1/models", fmt.Sprintf(`{"name":%q}`, m))
		}
		q := "/v1/releases?model=" + m + "&version=1.0.0&name=fw.bin"
		if rollouts > i {
			q += "&hold=true"
		}
		resp, err := ac.Post(base+q, "application/octet-stream", bytes.NewReader([]byte("firmware of "+m)))
		if err != nil {
			b.Fatal(err)
		}
		msg, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 201 {
			b.Fatalf("release of %s: %d %s", m, resp.StatusCode, msg)
		}
		if rollouts > i {
			if _, err := in.Rollouts.Create(ctx, "urn:foster:admin:bench", rollout.CreateRequest{Model: m, Version: "1.0.0"}); err != nil {
				b.Fatal(err)
			}
		}
	}
	if got, err := in.Rollouts.List(ctx, store.RolloutFilter{Active: true, Limit: rollout.MaxList}); err != nil || len(got) != rollouts {
		b.Fatalf("%d active rollouts (%v), want %d", len(got), err, rollouts)
	}
	target := base + "/tuf/timestamp.json"
	want := 304
	if what == "model-role-200" {
		want = 200
		for _, ri := range in.Repo.Roles() {
			if ri.Name == tufrepo.ModelRole("edge-gw") {
				target = fmt.Sprintf("%s/tuf/%d.%s.json", base, ri.Version, url.QueryEscape(ri.Name))
			}
		}
	}
	tr := &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 128, MaxConnsPerHost: 128, IdleConnTimeout: time.Minute}
	client := &http.Client{Transport: tr}
	b.Cleanup(tr.CloseIdleConnections)
	resp, err := client.Get(target)
	if err != nil {
		b.Fatal(err)
	}
	etag := resp.Header.Get("ETag")
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || (want == 304 && etag == "") {
		b.Fatalf("first poll of %s: %d etag %q", target, resp.StatusCode, etag)
	}
	if what == "model-role-200" && rollouts > 0 && !bytes.Contains(body, []byte(`"rollout"`)) {
		b.Fatalf("model role without rollout terms: %.300s", body)
	}
	return func(d time.Duration) float64 {
		var polls atomic.Int64
		stop := time.Now().Add(d)
		var wg sync.WaitGroup
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for time.Now().Before(stop) {
					req, _ := http.NewRequest("GET", target, nil)
					if want == 304 {
						req.Header.Set("If-None-Match", etag)
					}
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != want {
						b.Errorf("poll: %d, want %d", resp.StatusCode, want)
						return
					}
					polls.Add(1)
				}
			}()
		}
		wg.Wait()
		return float64(polls.Load()) / d.Seconds()
	}
}

func postJSON(b *testing.B, c *http.Client, url, body string) {
	b.Helper()
	resp, err := c.Post(url, "application/json", bytes.NewReader([]byte(body)))
	if err != nil {
		b.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b.Fatalf("POST %s: %d %s", url, resp.StatusCode, msg)
	}
}
