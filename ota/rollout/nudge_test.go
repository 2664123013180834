package rollout_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/store"
)

// fakeNudger records the models nudged; fail makes every nudge fail.
type fakeNudger struct {
	mu     sync.Mutex
	models []string
	fail   error
}

func (n *fakeNudger) Nudge(_ context.Context, model string) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.models = append(n.models, model)
	return n.fail
}

func (n *fakeNudger) count() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.models)
}

// Devices are nudged exactly when the signed terms offer the release to
// more of them (create, promote, automatic advance) or a rollout resumes;
// pausing, halting and aborting widen nothing and nudge nobody.
func TestNudgesFollowWideningTerms(t *testing.T) {
	e := newEnv(t, 50)
	nudger := &fakeNudger{}
	ctl, err := rollout.New(rollout.Config{Store: e.db, Publisher: e.pub, Now: e.clock.now, Nudger: nudger})
	if err != nil {
		t.Fatal(err)
	}
	alice := "urn:foster:admin:alice"
	step := func(name string, want int, act func() error) {
		t.Helper()
		if err := act(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := nudger.count(); got != want {
			t.Fatalf("after %s: %d nudges, want %d", name, got, want)
		}
	}
	var s rollout.Status
	step("create", 1, func() (err error) {
		s, err = ctl.Create(e.ctx, alice, rollout.CreateRequest{Model: model, Version: e.rel.Version, Waves: []int{10, 50, 100}, WaveInterval: time.Hour})
		return err
	})
	step("promote", 2, func() error { _, err := ctl.Promote(e.ctx, alice, s.ID); return err })
	step("pause", 2, func() error { _, err := ctl.Pause(e.ctx, alice, s.ID); return err })
	step("resume", 3, func() error { _, err := ctl.Resume(e.ctx, alice, s.ID); return err })
	step("tick before the interval", 3, func() error { return ctl.Tick(e.ctx) })
	e.clock.advance(2 * time.Hour)
	step("automatic advance", 4, func() error { return ctl.Tick(e.ctx) })
	step("abort", 4, func() error { _, err := ctl.Abort(e.ctx, alice, s.ID); return err })

	rel2 := e.release("1.1.0")
	h, err := ctl.Create(e.ctx, alice, rollout.CreateRequest{Model: model, Version: rel2.Version, Waves: []int{10, 100}, MinSample: 1})
	if err != nil {
		t.Fatal(err)
	}
	in, _ := e.offered(h, 1000)
	e.attest(in[0], rel2.TargetPath, attest.OutcomeFailed)
	step("halt", 5, func() error { return ctl.Tick(e.ctx) }) // 5: the create above
	if got := e.get(h.ID); got.State != store.RolloutHalted {
		t.Fatalf("not halted: %+v", got.Rollout)
	}
	for _, m := range nudger.models {
		if m != model {
			t.Fatalf("nudged model %q, want %q", m, model)
		}
	}
}

// A broker that is down delays devices until their next poll; it never
// fails or undoes a rollout action.
func TestFailingNudgeDoesNotFailTheAction(t *testing.T) {
	e := newEnv(t, 10)
	nudger := &fakeNudger{fail: errors.New("broker down")}
	ctl, err := rollout.New(rollout.Config{Store: e.db, Publisher: e.pub, Now: e.clock.now, Nudger: nudger})
	if err != nil {
		t.Fatal(err)
	}
	s, err := ctl.Create(e.ctx, "urn:foster:admin:alice", rollout.CreateRequest{Model: model, Version: e.rel.Version, Waves: []int{10, 100}})
	if err != nil || s.State != store.RolloutRunning || e.pub.current(e.rel.TargetPath).Share != 1000 {
		t.Fatalf("create with a failing nudger: %+v %v", s.Rollout, err)
	}
	if got, err := ctl.Promote(e.ctx, "urn:foster:admin:alice", s.ID); err != nil || got.State != store.RolloutCompleted && got.Wave != 1 {
		t.Fatalf("promote with a failing nudger: %+v %v", got.Rollout, err)
	}
	if nudger.count() != 2 {
		t.Fatalf("%d nudges attempted, want 2", nudger.count())
	}
}
