package rollout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
)

// health computes r's health now: outcomes from the attestations of its
// target received since it was created, and the offered devices of its
// model (the bucket formula the devices use, computed here from the URNs the
// store knows) that are silent past the deadline.
func (c *Controller) health(ctx context.Context, r store.Rollout) (Health, error) {
	now := c.now().UTC()
	o, err := c.store.TargetOutcomes(ctx, r.TargetPath, outcomesSince(r), store.MaxHaltIndices)
	if err != nil {
		return Health{}, err
	}
	h := Health{Succeeded: o.Succeeded, Failed: o.Failed, FailedIndices: o.FailedIndices, At: now}
	s, err := seed(r)
	if err != nil {
		return Health{}, err
	}
	// The attesters are read once: asking the store per device (PageFleet's
	// Target) costs devices x attestations (110 s per health at 100,000
	// devices and 2,000 attestations on SQLite; docs/BENCHMARKS.md).
	attested, err := c.store.TargetAttesters(ctx, r.TargetPath, outcomesSince(r))
	if err != nil {
		return Health{}, err
	}
	after := ""
	for {
		page, err := c.store.PageFleet(ctx, store.FleetQuery{Model: r.Model, AfterID: after, Limit: store.MaxDevicePage, NoGroups: len(r.Groups) == 0})
		if err != nil {
			return Health{}, err
		}
		for _, d := range page {
			if d.Status != store.DeviceActive || !inGroups(r, d.Groups) {
				continue
			}
			h.Eligible++
			b := rollout.Bucket(s, d.ID)
			if b >= waveShare(r) {
				continue
			}
			h.Offered++
			if attested[d.ID] || d.InstalledTarget == r.TargetPath {
				continue
			}
			if now.Sub(offeredAt(r, b)) > r.SilenceDeadline {
				h.Silent++
			}
		}
		if len(page) < store.MaxDevicePage {
			break
		}
		after = page[len(page)-1].ID
	}
	h.FailureRate = rate(h.Succeeded, h.Failed, h.Silent)
	c.mu.Lock()
	if r.Active() {
		c.silent[r.ID] = h.Silent
	} else {
		delete(c.silent, r.ID) // bounded by the active rollouts
	}
	c.mu.Unlock()
	return h, nil
}

// outcomesSince is when r's outcomes start counting: its creation, to the
// second, because fosterd records an attestation's receipt time in whole
// seconds (the time in its log entry). Without the truncation the
// attestations received in the second the rollout was created would be
// missed, and a wave failing fast would never halt.
func outcomesSince(r store.Rollout) time.Time { return r.CreatedAt.Truncate(time.Second) }

// offeredAt is when bucket b was first offered: the start of the first wave
// whose share covers it.
func offeredAt(r store.Rollout, b int) time.Time {
	for i := 0; i <= r.Wave && i < len(r.WaveStarts); i++ {
		if b < r.Waves[i]*(rollout.Scale/100) {
			return r.WaveStarts[i]
		}
	}
	return r.WaveStartedAt()
}

func rate(succeeded, failed, silent int) float64 {
	total := succeeded + failed + silent
	if total == 0 {
		return 0
	}
	return float64(failed+silent) / float64(total)
}

// quickHealth is health without the fleet walk: fresh outcomes, and the
// silent count of this Controller's last full evaluation. Notify uses it so
// a failing attestation halts a rollout in one query, not a fleet scan.
func (c *Controller) quickHealth(ctx context.Context, r store.Rollout) (Health, error) {
	c.mu.Lock()
	silent, ok := c.silent[r.ID]
	c.mu.Unlock()
	if !ok {
		return c.health(ctx, r)
	}
	o, err := c.store.TargetOutcomes(ctx, r.TargetPath, outcomesSince(r), store.MaxHaltIndices)
	if err != nil {
		return Health{}, err
	}
	return Health{Succeeded: o.Succeeded, Failed: o.Failed, Silent: silent, FailedIndices: o.FailedIndices,
		FailureRate: rate(o.Succeeded, o.Failed, silent), At: c.now().UTC()}, nil
}

// evaluate halts, advances or completes one active rollout as its health
// says. Losing the compare-and-swap to another replica is not an error:
// that replica applied the same decision or a newer one, which is re-read
// and evaluated again (a few times at most).
func (c *Controller) evaluate(ctx context.Context, r store.Rollout, quick bool) error {
	for range 3 {
		err := c.evaluateOnce(ctx, r, quick)
		if !errors.Is(err, store.ErrRolloutChanged) {
			return err
		}
		if r, err = c.store.GetRollout(ctx, r.ID); err != nil {
			return err
		}
		if !r.Active() {
			return nil
		}
	}
	return nil
}

func (c *Controller) evaluateOnce(ctx context.Context, r store.Rollout, quick bool) error {
	hf := c.health
	if quick {
		hf = c.quickHealth
	}
	h, err := hf(ctx, r)
	if err != nil {
		return err
	}
	if !quick {
		c.storeHealth(ctx, r.ID, r.Revision, h)
	}
	outcomes := h.Succeeded + h.Failed + h.Silent
	now := c.now().UTC()
	switch {
	case outcomes >= r.MinSample && h.FailureRate > r.MaxFailureRate:
		reason := fmt.Sprintf("failure rate %.4f above %.4f at wave %d (%d%%): %d failed, %d silent past %v, %d succeeded",
			h.FailureRate, r.MaxFailureRate, r.Wave+1, r.Waves[r.Wave], h.Failed, h.Silent, r.SilenceDeadline, h.Succeeded)
		n, err := c.transition(ctx, SystemActor, r, func(cur store.Rollout) (store.Rollout, error) {
			cur.State, cur.HaltReason, cur.HaltIndices = store.RolloutHalted, reason, h.FailedIndices
			return cur, nil
		})
		if err != nil {
			return err
		}
		if !quick { // the health that halted it is its final one
			c.storeHealth(ctx, n.ID, n.Revision, h)
		}
		c.log.Warn("rollout halted", "rollout", n.ID, "model", n.Model, "version", n.Version, "reason", reason, "log_indices", n.HaltIndices)
		c.audit(ctx, SystemActor, "rollout.halt", n, fmt.Sprintf("reason=%q log_indices=%s", reason, joinIndices(n.HaltIndices)))
	case quick || r.State != store.RolloutRunning || h.FailureRate > r.MaxFailureRate:
		// Notify only halts; a paused or not (yet) healthy wave waits.
	case now.Sub(r.WaveStartedAt()) >= r.WaveInterval:
		n, err := c.transition(ctx, SystemActor, r, func(cur store.Rollout) (store.Rollout, error) { return advance(cur, now), nil })
		if err != nil {
			return err
		}
		c.log.Info("rollout advanced", "rollout", n.ID, "state", n.State, "wave", n.Wave+1, "percent", n.Waves[n.Wave])
		c.audit(ctx, SystemActor, "rollout.advance", n, fmt.Sprintf("wave=%d/%d share=%d failure_rate=%.4f outcomes=%d", n.Wave+1, len(n.Waves), share(n), h.FailureRate, outcomes))
		c.nudge(ctx, n)
	}
	return nil
}

// Tick evaluates every active rollout once (each replica may tick; the
// compare-and-swap applies each decision once). It returns the errors of
// the rollouts it could not evaluate, joined, after trying them all.
func (c *Controller) Tick(ctx context.Context) error {
	return c.evaluateActive(ctx, "", false)
}

func (c *Controller) evaluateActive(ctx context.Context, model string, quick bool) error {
	var errs []error
	f := store.RolloutFilter{Model: model, Active: true, Limit: store.MaxRolloutPage}
	for {
		rs, err := c.store.ListRollouts(ctx, f)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		for _, r := range rs {
			if err := c.evaluate(ctx, r, quick); err != nil {
				errs = append(errs, fmt.Errorf("rollout %s: %w", r.ID, err))
			}
		}
		if len(rs) < f.Limit {
			return errors.Join(errs...)
		}
		f.Before = rs[len(rs)-1].CreatedAt
	}
}

// Notify asks Run to re-check model's active rollouts now (attestation
// ingest calls it for each accepted attestation), so a failing wave halts
// within seconds rather than at the next tick. It never blocks: notes for
// one model coalesce until Run takes them.
func (c *Controller) Notify(model string) {
	c.mu.Lock()
	if len(c.pending) < maxPending {
		c.pending[model] = true
	}
	c.mu.Unlock()
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// maxPending bounds the models waiting for Run (beyond it, the next tick
// covers them).
const maxPending = 10_000

// Run ticks every interval and serves Notify until ctx ends. Errors are
// logged; Run returns ctx's error.
//
// Notify is served on its own goroutine, not between ticks: a tick walks
// the fleet of every active rollout (0.25-1 s per 100,000 devices,
// docs/BENCHMARKS.md), and a failing wave must not wait for it to halt.
// Both may evaluate one rollout at once; each transition is a
// compare-and-swap, as between replicas.
func (c *Controller) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return errors.New("rollout: Run needs a positive interval")
	}
	// Reads take an active rollout's fleet counts from the last tick's
	// evaluation while it is at most ten ticks (and a minute) old: a slow
	// tick (a large fleet on a loaded machine) must not make every read
	// walk the fleet too.
	c.walkAge.Store(int64(max(10*interval, time.Minute)))
	defer c.walkAge.Store(0)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); c.serveNotes(ctx) }()
	defer wg.Wait()
	t := time.NewTicker(interval)
	defer t.Stop()
	c.tick(ctx)
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			c.tick(ctx)
		}
	}
}

// serveNotes evaluates the models Notify named, with quick health, until
// ctx ends.
func (c *Controller) serveNotes(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.wake:
			c.mu.Lock()
			models := c.pending
			c.pending = map[string]bool{}
			c.mu.Unlock()
			for m := range models {
				if err := c.evaluateActive(ctx, m, true); err != nil && ctx.Err() == nil {
					c.log.Error("evaluating rollouts after an attestation", "model", m, "err", err)
				}
			}
		}
	}
}

func (c *Controller) tick(ctx context.Context) {
	if err := c.Tick(ctx); err != nil && ctx.Err() == nil {
		c.log.Error("rollout tick", "err", err)
	}
}
