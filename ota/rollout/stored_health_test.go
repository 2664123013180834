package rollout_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/store"
)

// walkCounter counts fleet walks (pages of PageFleet).
type walkCounter struct {
	*store.DB
	walks atomic.Int64
}

func (w *walkCounter) PageFleet(ctx context.Context, q store.FleetQuery) ([]store.FleetDevice, error) {
	w.walks.Add(1)
	return w.DB.PageFleet(ctx, q)
}

// enroll adds an active device of the model.
func (e *env) enroll(serial string) {
	e.t.Helper()
	if err := e.db.CreateToken(e.ctx, store.Token{Hash: "h-" + serial, Serial: serial, Model: model, ExpiresAt: e.clock.now().Add(time.Hour)}); err != nil {
		e.t.Fatal(err)
	}
	_, err := e.db.EnrollDevice(e.ctx, store.EnrollRequest{Serial: serial, Model: model, KeySHA256: "k-" + serial, TokenHash: "h-" + serial}, func() (store.Issued, error) {
		return store.Issued{Serial: "c0ffee" + serial, NotBefore: e.clock.now(), NotAfter: e.clock.now().Add(90 * 24 * time.Hour), KeySHA256: "k-" + serial, ChainPEM: "pem"}, nil
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// TestListingFinishedRolloutsWalksNoFleet: a finished rollout shows the
// health stored when it finished. Listing rollouts walked every listed
// rollout's whole fleet on every read (seconds per page at 100,000
// devices); now a finished one costs no walk, and a device enrolled since
// does not change its final figures.
func TestListingFinishedRolloutsWalksNoFleet(t *testing.T) {
	e := newEnv(t, 20)
	w := &walkCounter{DB: e.db}
	ctl, err := rollout.New(rollout.Config{Store: w, Publisher: e.pub, Now: e.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	actor := "urn:foster:admin:alice"
	done, err := ctl.Create(e.ctx, actor, rollout.CreateRequest{Model: model, Version: e.rel.Version, Waves: []int{100}})
	if err != nil {
		t.Fatal(err)
	}
	if done, err = ctl.Promote(e.ctx, actor, done.ID); err != nil || done.State != store.RolloutCompleted {
		t.Fatalf("completing: %+v, %v", done, err)
	}
	e.release("1.1.0")
	gone, err := ctl.Create(e.ctx, actor, rollout.CreateRequest{Model: model, Version: "1.1.0", Waves: []int{50, 100}})
	if err != nil {
		t.Fatal(err)
	}
	if gone, err = ctl.Abort(e.ctx, actor, gone.ID); err != nil {
		t.Fatal(err)
	}
	e.enroll("SN-LATE")

	w.walks.Store(0)
	for range 3 {
		list, err := ctl.List(e.ctx, store.RolloutFilter{Limit: 10})
		if err != nil || len(list) != 2 {
			t.Fatalf("list: %d, %v", len(list), err)
		}
		for _, s := range list {
			want := done
			if s.ID == gone.ID {
				want = gone
			}
			if s.Health.Eligible != 20 || s.Health.Eligible != want.Health.Eligible || s.Health.Offered != want.Health.Offered || !s.Health.At.Equal(want.Health.At) {
				t.Fatalf("%s (%s) lists health %+v, at its end it was %+v", s.ID, s.State, s.Health, want.Health)
			}
		}
	}
	if n := w.walks.Load(); n != 0 {
		t.Fatalf("listing finished rollouts walked the fleet %d times", n)
	}
}

// TestActiveRolloutShowsLastEvaluationAndOutcomesNow: while Run evaluates
// an active rollout, Get takes its fleet counts from the last evaluation
// (no walk) and counts its outcomes now, so an attestation shows at once;
// without Run in the process, Get walks the fleet as before.
func TestActiveRolloutShowsLastEvaluationAndOutcomesNow(t *testing.T) {
	e := newEnv(t, 20)
	w := &walkCounter{DB: e.db}
	ctl, err := rollout.New(rollout.Config{Store: w, Publisher: e.pub, Now: e.clock.now})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ctl.Create(e.ctx, "urn:foster:admin:alice", rollout.CreateRequest{Model: model, Version: e.rel.Version, Waves: []int{100}, MaxFailureRate: 1})
	if err != nil {
		t.Fatal(err)
	}
	w.walks.Store(0)
	if _, err := ctl.Get(e.ctx, s.ID); err != nil || w.walks.Load() == 0 {
		t.Fatalf("without Run, Get walked the fleet %d times (%v)", w.walks.Load(), err)
	}

	ctx, cancel := context.WithCancel(e.ctx)
	ran := make(chan error, 1)
	go func() { ran <- ctl.Run(ctx, time.Hour) }()
	// Run's first tick evaluates the rollout and stores its health.
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := e.db.GetRollout(e.ctx, s.ID)
		if err != nil {
			t.Fatal(err)
		}
		if r.HealthRevision == r.Revision && w.walks.Load() >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run's first tick stored no health within 60 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.enroll("SN-LATE") // counted at the next evaluation, not by a read
	e.attest(e.devices[0], e.rel.TargetPath, attest.OutcomeCommitted)
	e.attest(e.devices[1], e.rel.TargetPath, attest.OutcomeFailed)
	w.walks.Store(0)
	got, err := ctl.Get(e.ctx, s.ID)
	if err != nil {
		t.Fatal(err)
	}
	if n := w.walks.Load(); n != 0 {
		t.Fatalf("Get walked the fleet %d times while Run evaluates the rollout", n)
	}
	if h := got.Health; h.Eligible != 20 || h.Offered != 20 || h.Succeeded != 1 || h.Failed != 1 || h.FailureRate != 0.5 {
		t.Fatalf("health %+v: want the last evaluation's 20 eligible and offered, and the 2 outcomes since", h)
	}
	cancel()
	if err := <-ran; !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
	got, err = ctl.Get(e.ctx, s.ID)
	if err != nil || w.walks.Load() == 0 || got.Health.Eligible != 21 {
		t.Fatalf("after Run stopped: %d walks, health %+v (%v); want a walk counting SN-LATE", w.walks.Load(), got.Health, err)
	}
}
