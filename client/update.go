package client

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/install"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/killpoint"
	"github.com/foster-ota/foster/client/internal/tufclient"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/signing"
)

// This file is the update flow, one function per phase of the journal's
// state machine (client/internal/journal). Each step first persists the
// phase it moves to, then performs that phase's side effect, which is
// idempotent: after a power cut the step is simply run again.

func targetOf(c *tufclient.Candidate) Target {
	t := Target{
		Name:           c.Name,
		SHA256:         hex.EncodeToString(c.SHA256),
		Length:         c.Info.Length,
		Version:        c.Custom.Version,
		ReleaseCounter: c.Custom.ReleaseCounter,
	}
	if c.SHA512 != nil {
		t.SHA512 = hex.EncodeToString(c.SHA512)
	}
	return t
}

func expected(t Target) (Expected, error) {
	e := Expected{Name: t.Name, Length: t.Length}
	var err error
	if e.SHA256, err = hex.DecodeString(t.SHA256); err != nil {
		return e, fmt.Errorf("target %q: bad sha256 in journal: %w", t.Name, err)
	}
	if t.SHA512 != "" {
		if e.SHA512, err = hex.DecodeString(t.SHA512); err != nil {
			return e, fmt.Errorf("target %q: bad sha512 in journal: %w", t.Name, err)
		}
	}
	return e, nil
}

func planOf(p *journal.Pending) (install.Plan, error) {
	want, err := expected(p.Target)
	if err != nil {
		return install.Plan{}, err
	}
	image := p.Image
	if image == "" {
		image = p.Staged
	}
	return install.Plan{Image: image, Name: p.Target.Name, Version: p.Target.Version, Want: want, From: p.From, To: p.To}, nil
}

// update downloads sel (resuming a download of the same target), verifies
// it and drives the install.
func (a *Agent) update(ctx context.Context, j *journal.Journal, sel *selection, rep *Report) error {
	inst := a.cfg.Installer
	want, err := expected(sel.target)
	if err != nil {
		return err
	}
	var p *journal.Pending
	if st := j.State(); st.Phase == journal.PhaseDownloading {
		old := st.Pending
		if old.Target.SHA256 == sel.target.SHA256 && old.Installer == inst.Name() {
			// A slot must still be the one that is not running.
			dest, err := inst.Prepare(ctx)
			if err != nil {
				return err
			}
			if dest.Path == old.Staged && dest.To == old.To {
				// Still listed by the metadata just verified: attest those versions.
				if err := j.Update(func(s *journal.State) {
					s.Pending.TargetsVersion, s.Pending.SnapshotVersion = sel.targetsVersion, sel.snapshotVersion
				}); err != nil {
					return err
				}
				p = j.State().Pending
			}
		}
		if p == nil {
			a.log.Info("abandoning an interrupted download that no longer applies", "target", old.Target.Name)
			if err := a.discard(j, "download superseded"); err != nil {
				return err
			}
		}
	}
	if p == nil {
		dest, err := inst.Prepare(ctx)
		if err != nil {
			return err
		}
		dest = install.FinalName(dest, sel.target.Name)
		p = &journal.Pending{
			Target:          sel.target,
			TargetsVersion:  sel.targetsVersion,
			SnapshotVersion: sel.snapshotVersion,
			Installer:       inst.Name(),
			Staged:          dest.Path,
			Image:           dest.Image(),
			InPlace:         dest.InPlace,
			From:            dest.From,
			To:              dest.To,
			Since:           a.now(),
		}
		if err := j.Transition(journal.PhaseDownloading, func(s *journal.State) { s.Pending = p }); err != nil {
			return err
		}
	}
	a.log.Info("downloading", "target", p.Target.Name, "to", p.Staged, "resume_from", p.Downloaded, "length", p.Target.Length)
	err = sel.dl.Download(ctx, fetch.Request{
		URL:     sel.url,
		Want:    want,
		Dest:    p.Staged,
		InPlace: p.InPlace,
		Offset:  p.Downloaded,
		Checkpoint: func(n int64) error {
			return j.Update(func(s *journal.State) { s.Pending.Downloaded = n })
		},
	})
	if err != nil {
		if fetch.Resumable(err) {
			a.log.Warn("download interrupted; it resumes on the next run", "target", p.Target.Name, "err", err)
			return err
		}
		return a.abandon(j, err)
	}
	if err := j.Transition(journal.PhaseVerified, func(s *journal.State) { s.Pending.Downloaded = p.Target.Length }); err != nil {
		return err
	}
	a.log.Info("verified", "target", p.Target.Name, "sha256", p.Target.SHA256)
	return a.drive(ctx, j, rep, false)
}

// discard abandons pending work that no longer applies; it returns only a
// failure to record that.
func (a *Agent) discard(j *journal.Journal, reason string) error {
	cause := errors.New(reason)
	if err := a.abandon(j, cause); err != cause {
		return err
	}
	return nil
}

// abandon returns to idle after a failure before anything was installed,
// and returns cause (joined with any failure to record it).
func (a *Agent) abandon(j *journal.Journal, cause error) error {
	if p := j.State().Pending; p != nil && !p.InPlace {
		os.Remove(p.Staged)
		if p.Image != p.Staged {
			os.Remove(p.Image)
		}
	}
	now := a.now()
	if err := j.Transition(journal.PhaseIdle, func(s *journal.State) {
		s.Pending = nil
		s.LastError, s.LastErrorAt = cause.Error(), now
	}); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// drive moves an install that is past its download to rest, or to a
// reboot. resumed says the phase was left by an earlier process.
func (a *Agent) drive(ctx context.Context, j *journal.Journal, rep *Report, resumed bool) error {
	for {
		st := j.State()
		if !st.Phase.InFlight() || st.Phase == journal.PhaseDownloading {
			return nil
		}
		p := st.Pending
		if p.Installer != a.cfg.Installer.Name() {
			if st.Phase == journal.PhaseVerified {
				a.log.Warn("abandoning a verified image staged for another installer", "target", p.Target.Name, "installer", p.Installer)
				_ = a.abandon(j, errors.New("interrupted install abandoned: installer configuration changed"))
				continue
			}
			return fmt.Errorf("an install with the %q installer is in flight (phase %s); configure that installer to finish it",
				p.Installer, st.Phase)
		}
		plan, err := planOf(p)
		if err != nil {
			return err
		}
		if resumed {
			a.log.Info("continuing an install", "target", p.Target.Name, "phase", st.Phase)
		}
		switch st.Phase {
		case journal.PhaseVerified:
			err = a.stepVerified(j, p, plan, resumed)
		case journal.PhaseInstalling:
			err = a.stepInstalling(ctx, j, p, plan, rep, resumed)
		case journal.PhaseRebooting:
			err = a.stepRebooting(ctx, j, p, plan, rep)
		case journal.PhaseHealthCheck:
			err = a.stepHealthCheck(ctx, j, plan, resumed)
		case journal.PhaseCommitted:
			err = a.stepCommitted(ctx, j, plan, rep, resumed)
		case journal.PhaseRolledBack:
			err = a.stepRolledBack(ctx, j, p, plan, rep)
		}
		if err != nil || rep.Rebooting {
			return err
		}
		resumed = false
	}
}

// verifyImage re-checks an image that sat on disk across a crash.
func verifyImage(p *journal.Pending, plan install.Plan) error {
	path := plan.Image
	if _, err := os.Stat(p.Staged); err == nil {
		path = p.Staged // not promoted yet
	}
	if p.InPlace {
		return fetch.VerifyPrefix(path, plan.Want)
	}
	return fetch.VerifyFile(path, plan.Want)
}

// stepVerified promotes the verified image to its final name and moves on
// to installing.
func (a *Agent) stepVerified(j *journal.Journal, p *journal.Pending, plan install.Plan, resumed bool) error {
	if resumed {
		if err := verifyImage(p, plan); err != nil {
			a.log.Warn("staged image no longer verifies; discarding it", "target", p.Target.Name, "err", err)
			_ = a.abandon(j, fmt.Errorf("interrupted install abandoned: %w", err))
			return nil
		}
	}
	if plan.Image != p.Staged {
		if _, err := os.Stat(p.Staged); err == nil {
			if err := atomicfile.Rename(p.Staged, plan.Image); err != nil {
				return fmt.Errorf("promoting verified image: %w", err)
			}
		}
	}
	return j.Transition(journal.PhaseInstalling, nil)
}

// stepInstalling activates the image. With a reboot ahead, the reboot is
// journalled (with the current boot id) before it is requested.
func (a *Agent) stepInstalling(ctx context.Context, j *journal.Journal, p *journal.Pending, plan install.Plan, rep *Report, resumed bool) error {
	inst := a.cfg.Installer
	if resumed {
		if inst.Reboots() {
			// A power cut after the trial was armed boots the new image
			// before this step was journalled as done.
			if r, err := inst.Running(ctx, plan); err == nil && r == install.RunningNew {
				return j.Transition(journal.PhaseHealthCheck, nil)
			}
		}
		if _, err := os.Stat(plan.Image); err == nil {
			if err := verifyImage(p, plan); err != nil {
				return a.toRolledBack(j, fmt.Sprintf("staged image no longer verifies: %v", err))
			}
		}
	}
	if err := inst.Install(ctx, plan); err != nil {
		a.log.Error("install failed; rolling back", "target", p.Target.Name, "err", err)
		return a.toRolledBack(j, fmt.Sprintf("install failed: %v", err))
	}
	a.log.Info("installed", "target", p.Target.Name, "version", p.Target.Version, "installer", inst.Name())
	if !inst.Reboots() {
		return j.Transition(journal.PhaseHealthCheck, nil)
	}
	boot := a.bootID()
	if err := j.Transition(journal.PhaseRebooting, func(s *journal.State) {
		s.Pending.BootID, s.Pending.Reboots = boot, 1
	}); err != nil {
		return err
	}
	return a.reboot(ctx, rep)
}

// stepRebooting runs after the process restarted: either the reboot
// happened (and the bootloader started the new image or fell back) or it
// did not (ask again, a bounded number of times).
func (a *Agent) stepRebooting(ctx context.Context, j *journal.Journal, p *journal.Pending, plan install.Plan, rep *Report) error {
	if cur := a.bootID(); cur != "" && cur == p.BootID {
		if p.Reboots >= a.cfg.MaxReboots {
			return a.toRolledBack(j, fmt.Sprintf("the device did not reboot after %d requests", p.Reboots))
		}
		if err := j.Update(func(s *journal.State) { s.Pending.Reboots++ }); err != nil {
			return err
		}
		return a.reboot(ctx, rep)
	}
	r, err := a.cfg.Installer.Running(ctx, plan)
	if err != nil {
		return err
	}
	if r != install.RunningNew {
		return a.toRolledBack(j, "the bootloader started the old image: the new one did not come up (boot limit exceeded)")
	}
	a.log.Info("running the new image", "target", p.Target.Name, "slot", p.To)
	return j.Transition(journal.PhaseHealthCheck, nil)
}

// running reports which image runs. Without a reboot in between, an
// install this process just made is known to run (the file installer would
// otherwise hash the whole image again).
func (a *Agent) running(ctx context.Context, plan install.Plan, resumed bool) (install.Running, error) {
	if !resumed && !a.cfg.Installer.Reboots() {
		return install.RunningNew, nil
	}
	return a.cfg.Installer.Running(ctx, plan)
}

// stepHealthCheck decides: commit or roll back.
func (a *Agent) stepHealthCheck(ctx context.Context, j *journal.Journal, plan install.Plan, resumed bool) error {
	inst := a.cfg.Installer
	r, err := a.running(ctx, plan, resumed)
	if err != nil {
		return err
	}
	if r != install.RunningNew {
		return a.toRolledBack(j, "the old image runs: the bootloader fell back (or the install was undone) before the health check")
	}
	bs, err := inst.Status(ctx)
	if err != nil {
		return err
	}
	if bs.Overflow() {
		return a.toRolledBack(j, fmt.Sprintf("boot count %d exceeded the boot limit %d", bs.BootCount, bs.BootLimit))
	}
	if err := a.healthCheck(ctx, plan); err != nil {
		a.log.Error("health check failed; rolling back", "target", plan.Name, "err", err)
		return a.toRolledBack(j, fmt.Sprintf("health check failed: %v", err))
	}
	a.log.Info("health check passed", "target", plan.Name)
	return j.Transition(journal.PhaseCommitted, func(s *journal.State) { s.Pending.BootCount = bs.BootCount })
}

func (a *Agent) healthCheck(ctx context.Context, plan install.Plan) error {
	if len(a.cfg.HealthCheck) == 0 {
		return nil
	}
	killpoint.Hit("health-check")
	cmd := install.Command{Timeout: a.cfg.HealthTimeout}
	_, err := cmd.Run(ctx, a.cfg.HealthCheck,
		"FOSTER_TARGET="+plan.Name, "FOSTER_VERSION="+plan.Version, "FOSTER_SLOT="+plan.To, "FOSTER_IMAGE="+plan.Image)
	return err
}

// stepCommitted applies the commit and attests it.
func (a *Agent) stepCommitted(ctx context.Context, j *journal.Journal, plan install.Plan, rep *Report, resumed bool) error {
	inst := a.cfg.Installer
	r, err := a.running(ctx, plan, resumed)
	if err != nil {
		return err
	}
	if r == install.RunningOld {
		return a.toRolledBack(j, "the bootloader fell back to the old image before the commit was applied")
	}
	if err := inst.Commit(ctx, plan); err != nil {
		return fmt.Errorf("committing: %w", err)
	}
	st := j.State()
	if err := a.finish(j, attest.OutcomeCommitted, ""); err != nil {
		return err
	}
	inst.Cleanup(plan)
	t := st.Pending.Target
	rep.Installed, rep.Previous = &t, st.Installed
	a.log.Info("committed", "target", t.Name, "version", t.Version, "release_counter", t.ReleaseCounter)
	return nil
}

// toRolledBack records the decision to return to the old image.
func (a *Agent) toRolledBack(j *journal.Journal, reason string) error {
	return j.Transition(journal.PhaseRolledBack, func(s *journal.State) {
		s.Pending.Reason = reasonOf("%s", reason)
		s.Pending.BootID, s.Pending.Reboots = "", 0
	})
}

// stepRolledBack applies the rollback (rebooting into the old image if the
// new one runs) and attests it.
func (a *Agent) stepRolledBack(ctx context.Context, j *journal.Journal, p *journal.Pending, plan install.Plan, rep *Report) error {
	inst := a.cfg.Installer
	if err := inst.Rollback(ctx, plan); err != nil {
		return fmt.Errorf("rolling back: %w", err)
	}
	if inst.Reboots() {
		r, err := inst.Running(ctx, plan)
		if err != nil {
			return err
		}
		if r != install.RunningOld {
			if p.Reboots >= a.cfg.MaxReboots {
				return fmt.Errorf("rolling back: still running the new image after %d reboots", p.Reboots)
			}
			boot := a.bootID()
			if err := j.Update(func(s *journal.State) { s.Pending.BootID, s.Pending.Reboots = boot, s.Pending.Reboots+1 }); err != nil {
				return err
			}
			a.log.Warn("rebooting into the old image", "target", p.Target.Name, "reason", p.Reason)
			return a.reboot(ctx, rep)
		}
	}
	if err := a.finish(j, attest.OutcomeRolledBack, p.Reason); err != nil {
		return err
	}
	inst.Cleanup(plan)
	t := p.Target
	rep.RolledBack = &t
	a.log.Warn("rolled back", "target", t.Name, "reason", p.Reason)
	return nil
}

// reboot asks the device to reboot; the install continues in the next boot.
func (a *Agent) reboot(ctx context.Context, rep *Report) error {
	killpoint.Hit("reboot")
	rep.Rebooting = true
	a.log.Warn("requesting a reboot", "command", a.cfg.RebootCommand)
	cmd := install.Command{Timeout: 2 * time.Minute}
	if _, err := cmd.Run(ctx, a.cfg.RebootCommand); err != nil {
		return fmt.Errorf("requesting a reboot: %w", err)
	}
	return nil
}

// finish records an outcome and reserves its attestation sequence number in
// the same journal write (phase attested), then signs and queues it.
func (a *Agent) finish(j *journal.Journal, outcome, reason string) error {
	st := j.State()
	p := st.Pending
	rec := journal.Attestation{
		Sequence:        st.AttestSequence + 1,
		Previous:        st.Installed,
		New:             p.Target,
		TargetsVersion:  p.TargetsVersion,
		SnapshotVersion: p.SnapshotVersion,
		Outcome:         outcome,
		Reason:          reasonOf("%s", reason),
		BootCounter:     p.BootCount,
		Time:            a.now(),
	}
	err := j.Transition(journal.PhaseAttested, func(s *journal.State) {
		if outcome == attest.OutcomeCommitted {
			t := p.Target
			s.Installed = &t
			s.LastError = ""
		} else {
			s.Failed = journal.AddFailed(s.Failed, p.Target.SHA256)
			s.LastError, s.LastErrorAt = "rolled back "+p.Target.Name+": "+rec.Reason, rec.Time
		}
		s.Pending = nil
		s.AttestSequence = rec.Sequence
		s.Unqueued = append(s.Unqueued, rec)
	})
	if err != nil {
		return err
	}
	return a.queueAttestations(j)
}

// queueAttestations signs journalled outcomes into the outbox. An envelope
// already in the outbox (or sent) is never signed again: the server accepts
// a resend of the same bytes, not a second envelope for one sequence.
func (a *Agent) queueAttestations(j *journal.Journal) error {
	recs := j.State().Unqueued
	if len(recs) == 0 {
		return nil
	}
	signer, err := signing.FromPrivateKey(a.id.key)
	if err != nil {
		return err
	}
	for _, r := range recs {
		if a.outbox.Has(r.Sequence) {
			continue
		}
		env, err := attest.Sign(signer, attest.Install{
			Device:          a.id.principal.URI(),
			Previous:        attestTarget(r.Previous),
			New:             *attestTarget(&r.New),
			TargetsVersion:  r.TargetsVersion,
			SnapshotVersion: r.SnapshotVersion,
			Outcome:         r.Outcome,
			Reason:          r.Reason,
			BootCounter:     r.BootCounter,
			Sequence:        r.Sequence,
			Time:            r.Time,
		})
		if err != nil {
			return fmt.Errorf("attestation %d: %w", r.Sequence, err)
		}
		if err := a.outbox.Put(r.Sequence, env); err != nil {
			return err
		}
		killpoint.Hit("outbox-put")
		a.log.Info("attestation queued", "sequence", r.Sequence, "outcome", r.Outcome, "target", r.New.Name)
	}
	return j.Update(func(s *journal.State) { s.Unqueued = nil })
}

func attestTarget(t *Target) *attest.Target {
	if t == nil {
		return nil
	}
	return &attest.Target{Name: t.Name, SHA256: t.SHA256, Length: t.Length, Version: t.Version, ReleaseCounter: t.ReleaseCounter}
}
