package client

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"time"

	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/outbox"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/client/internal/tufclient"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/signing"
)

// Defaults.
const (
	DefaultRequestTimeout = 60 * time.Second // per API or metadata request
	DefaultStallTimeout   = fetch.DefaultStallTimeout
	DefaultInterval       = time.Hour // between checks in Run
	maxTUFRoot            = 512000    // bytes, go-tuf's RootMaxLength
	maxReason             = 1024      // bytes, attest's limit
)

// Target identifies a firmware target as signed in TUF metadata.
type Target = journal.Target

// Config configures an Agent.
type Config struct {
	// StateDir is the enrolled state directory (required).
	StateDir string
	// Installer puts verified images in place (required for RunOnce and Run).
	Installer Installer
	// Logger receives the agent's logs; default: discard.
	Logger *slog.Logger
	// RequestTimeout bounds each API and metadata request; default 60s.
	RequestTimeout time.Duration
	// StallTimeout aborts a target download when no byte arrives for this
	// long; default 60s. Downloads have no overall timeout.
	StallTimeout time.Duration
	// UserAgent is sent with every request; default "foster-agent".
	UserAgent string
	// Now is the clock; default time.Now. Only bookkeeping uses it: trust
	// decisions rest on signed metadata (go-tuf checks expiry itself).
	Now func() time.Time
}

// Agent is an enrolled device agent. Not safe for concurrent use; RunOnce
// also takes an exclusive lock on the state dir against other processes.
type Agent struct {
	cfg    Config
	layout statedir.Layout
	id     *deviceIdentity
	log    *slog.Logger
	api    fetch.Doer
	dl     *fetch.Downloader
	outbox *outbox.Outbox
}

// New loads the device identity from cfg.StateDir.
func New(cfg Config) (*Agent, error) {
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "foster-agent"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	layout := statedir.Layout{Dir: cfg.StateDir}
	id, err := loadIdentity(layout, true)
	if err != nil {
		return nil, err
	}
	log := orDiscard(cfg.Logger).With("device", id.principal.URI())
	api, dl := id.httpClients(cfg.RequestTimeout)
	a := &Agent{
		cfg:    cfg,
		layout: layout,
		id:     id,
		log:    log,
		api:    userAgent{api, cfg.UserAgent},
		dl:     &fetch.Downloader{Client: userAgent{dl, cfg.UserAgent}, StallTimeout: cfg.StallTimeout},
		outbox: &outbox.Outbox{Layout: layout, Log: log},
	}
	if err := layout.Ensure(); err != nil {
		return nil, err
	}
	if now := cfg.Now(); now.After(id.chain[0].NotAfter) {
		log.Warn("device certificate has expired (or the clock is wrong); the server will refuse it until it is renewed",
			"not_after", id.chain[0].NotAfter)
	}
	return a, nil
}

// Report says what one RunOnce did.
type Report struct {
	// UpToDate is true when no newer target for this device was found.
	UpToDate bool `json:"up_to_date"`
	// Installed is the target this run installed (or finished installing after a restart).
	Installed *Target `json:"installed,omitempty"`
	// Previous is what was installed before.
	Previous *Target `json:"previous,omitempty"`
	// AttestationsSent counts envelopes the server accepted during this run.
	AttestationsSent int `json:"attestations_sent"`
	// AttestationsQueued counts envelopes still waiting in the outbox.
	AttestationsQueued int `json:"attestations_queued"`
}

// RunOnce finishes whatever a previous run left half-done, sends queued
// attestations, checks for an update and installs it. An install succeeds
// even when its attestation cannot be delivered yet (it stays queued).
func (a *Agent) RunOnce(ctx context.Context) (*Report, error) {
	if a.cfg.Installer == nil {
		return nil, errors.New("no installer configured")
	}
	unlock, err := a.layout.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Renew the certificate first when due (or expired): everything below
	// authenticates with it. A failure is logged and retried next run.
	if _, err := a.renew(ctx, false); err != nil {
		a.log.Warn("certificate renewal failed; will retry on the next run", "err", err)
	}
	j, err := journal.Open(a.layout.State())
	if err != nil {
		return nil, err
	}
	rep := &Report{}
	defer func() { rep.AttestationsQueued = a.queuedCount() }()

	if err := a.resume(ctx, j, rep); err != nil {
		return rep, a.recordError(j, err)
	}
	a.flush(ctx, rep)

	sel, err := a.check(ctx, j)
	if err != nil {
		return rep, a.recordError(j, err)
	}
	if sel == nil {
		rep.UpToDate = true
		inst := j.State().Installed
		if inst != nil {
			a.log.Info("up to date", "version", inst.Version, "release_counter", inst.ReleaseCounter)
		} else {
			a.log.Info("up to date", "installed", "none")
		}
		return rep, nil
	}
	if err := a.update(ctx, j, sel, rep); err != nil {
		return rep, a.recordError(j, err)
	}
	a.flush(ctx, rep)
	return rep, nil
}

// Run checks for updates now and then every interval (±10% jitter, so a
// fleet does not poll in lockstep) until ctx is done. Transient failures are
// retried sooner with exponential backoff, capped at interval.
func (a *Agent) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = DefaultInterval
	}
	backoff := 30 * time.Second
	for {
		_, err := a.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait := jitter(interval)
		switch {
		case err == nil:
			backoff = 30 * time.Second
		case IsTransient(err):
			wait = min(jitter(backoff), wait)
			backoff = min(backoff*2, interval)
			a.log.Warn("check failed; retrying", "err", err, "in", wait.Round(time.Second))
		default:
			a.log.Error("check failed", "err", err, "next_check_in", wait.Round(time.Second))
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// selection is a target chosen from freshly verified metadata.
type selection struct {
	target Target
	url    string // derived from signed data only
	// TUF versions the target was selected from.
	targetsVersion, snapshotVersion int64
}

// check refreshes TUF metadata and selects a target, or nil when up to date.
func (a *Agent) check(ctx context.Context, j *journal.Journal) (*selection, error) {
	root, err := statedir.ReadBounded(a.layout.TUFRoot(), maxTUFRoot)
	if err != nil {
		return nil, fmt.Errorf("reading trusted TUF root: %w", err)
	}
	tc, err := tufclient.New(ctx, tufclient.Config{
		Server:      a.id.cfg.Server,
		MetadataDir: a.layout.TUFDir(),
		Root:        root,
		HTTP:        a.api,
		UserAgent:   a.cfg.UserAgent,
	})
	if err != nil {
		return nil, err
	}
	if err := tc.Refresh(); err != nil {
		return nil, err
	}
	if err := j.Update(func(s *journal.State) {
		s.LastCheck = a.cfg.Now().UTC()
		s.LastError, s.LastErrorAt = "", time.Time{}
	}); err != nil {
		return nil, err
	}
	var counter int64
	if inst := j.State().Installed; inst != nil {
		counter = inst.ReleaseCounter
	}
	cand, err := tc.Latest(tufclient.Criteria{
		Model:             a.id.cfg.Model,
		HardwareID:        a.id.cfg.HardwareID,
		MinReleaseCounter: counter,
	})
	if err != nil || cand == nil {
		return nil, err
	}
	sel := &selection{target: targetOf(cand), url: tc.TargetURL(cand)}
	sel.targetsVersion, sel.snapshotVersion = tc.Versions()
	a.log.Info("update available", "target", sel.target.Name, "version", sel.target.Version,
		"release_counter", sel.target.ReleaseCounter, "length", sel.target.Length,
		"targets_version", sel.targetsVersion, "snapshot_version", sel.snapshotVersion)
	return sel, nil
}

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

// update downloads, verifies, installs and attests sel.
func (a *Agent) update(ctx context.Context, j *journal.Journal, sel *selection, rep *Report) error {
	inst := a.cfg.Installer
	target := sel.target
	want, err := expected(target)
	if err != nil {
		return err
	}
	p := &journal.Pending{
		Target:          target,
		TargetsVersion:  sel.targetsVersion,
		SnapshotVersion: sel.snapshotVersion,
		Installer:       inst.Name(),
		Staged:          inst.StagingPath(),
		Since:           a.cfg.Now().UTC(),
	}
	if err := j.Transition(journal.PhaseDownloading, func(s *journal.State) { s.Pending = p }); err != nil {
		return err
	}
	a.log.Info("downloading", "target", target.Name, "to", p.Staged)
	if err := a.dl.Download(ctx, sel.url, p.Staged, want); err != nil {
		// Download removed the partial file; the installed image was never touched.
		return a.abandon(j, err)
	}
	if err := j.Transition(journal.PhaseVerified, nil); err != nil {
		return err
	}
	a.log.Info("verified", "target", target.Name, "sha256", target.SHA256)
	return a.install(ctx, j, rep)
}

// install runs the installer on the verified staged image (from verified or,
// when resuming, installing) and records the outcome.
func (a *Agent) install(ctx context.Context, j *journal.Journal, rep *Report) error {
	st := j.State()
	if st.Phase != journal.PhaseInstalling {
		if err := j.Transition(journal.PhaseInstalling, nil); err != nil {
			return err
		}
	}
	p := st.Pending
	if err := a.cfg.Installer.Install(ctx, p.Staged); err != nil {
		os.Remove(p.Staged)
		ierr := fmt.Errorf("installing %q: %w", p.Target.Name, err)
		if ferr := a.finish(j, attest.OutcomeFailed, ierr.Error()); ferr != nil {
			return errors.Join(ierr, ferr)
		}
		return ierr
	}
	a.log.Info("installed", "target", p.Target.Name, "version", p.Target.Version,
		"release_counter", p.Target.ReleaseCounter, "installer", a.cfg.Installer.Name())
	if err := a.finish(j, attest.OutcomeCommitted, ""); err != nil {
		return err
	}
	rep.Installed, rep.Previous = &p.Target, st.Installed
	return nil
}

// finish records an install outcome and reserves its attestation sequence
// number in the same journal write, then signs and queues the attestation.
func (a *Agent) finish(j *journal.Journal, outcome, reason string) error {
	st := j.State()
	p := st.Pending
	if len(reason) > maxReason {
		reason = reason[:maxReason]
	}
	rec := journal.Attestation{
		Sequence:        st.AttestSequence + 1,
		Previous:        st.Installed,
		New:             p.Target,
		TargetsVersion:  p.TargetsVersion,
		SnapshotVersion: p.SnapshotVersion,
		Outcome:         outcome,
		Reason:          reason,
		Time:            a.cfg.Now().UTC(),
	}
	to := journal.PhaseIdle
	if outcome == attest.OutcomeCommitted {
		to = journal.PhaseCommitted
	}
	err := j.Transition(to, func(s *journal.State) {
		if outcome == attest.OutcomeCommitted {
			t := p.Target
			s.Installed = &t
			s.LastError = ""
		} else {
			s.LastError, s.LastErrorAt = reason, rec.Time
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

// queueAttestations signs journalled outcomes into the outbox.
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
		env, err := attest.Sign(signer, attest.Install{
			Device:          a.id.principal.URI(),
			Previous:        attestTarget(r.Previous),
			New:             *attestTarget(&r.New),
			TargetsVersion:  r.TargetsVersion,
			SnapshotVersion: r.SnapshotVersion,
			Outcome:         r.Outcome,
			Reason:          r.Reason,
			Sequence:        r.Sequence,
			Time:            r.Time,
		})
		if err != nil {
			return fmt.Errorf("attestation %d: %w", r.Sequence, err)
		}
		if err := a.outbox.Put(r.Sequence, env); err != nil {
			return err
		}
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

// abandon returns to idle after a failure before anything was installed.
func (a *Agent) abandon(j *journal.Journal, cause error) error {
	if p := j.State().Pending; p != nil {
		os.Remove(p.Staged)
	}
	now := a.cfg.Now().UTC()
	if err := j.Transition(journal.PhaseIdle, func(s *journal.State) {
		s.Pending = nil
		s.LastError, s.LastErrorAt = cause.Error(), now
	}); err != nil {
		return errors.Join(cause, err)
	}
	return cause
}

// resume finishes or abandons the work a crashed or killed run left.
func (a *Agent) resume(ctx context.Context, j *journal.Journal, rep *Report) error {
	st := j.State()
	inst := a.cfg.Installer
	switch st.Phase {
	case journal.PhaseDownloading:
		a.log.Warn("previous download was interrupted; discarding it", "target", st.Pending.Target.Name)
		_ = a.abandon(j, errors.New("download interrupted"))
	case journal.PhaseVerified, journal.PhaseInstalling:
		p := st.Pending
		if p.Installer != inst.Name() || p.Staged != inst.StagingPath() {
			a.log.Warn("abandoning an interrupted install made with another installer configuration",
				"target", p.Target.Name, "installer", p.Installer, "staged", p.Staged)
			_ = a.abandon(j, errors.New("interrupted install abandoned: installer configuration changed"))
			break
		}
		want, err := expected(p.Target)
		if err != nil {
			_ = a.abandon(j, err)
			break
		}
		if _, err := os.Stat(p.Staged); errors.Is(err, os.ErrNotExist) && st.Phase == journal.PhaseInstalling {
			ok, err := inst.Installed(ctx, want)
			if err != nil {
				return err
			}
			if ok {
				a.log.Info("previous install had completed; recording it", "target", p.Target.Name)
				if err := a.finish(j, attest.OutcomeCommitted, ""); err != nil {
					return err
				}
				rep.Installed, rep.Previous = &p.Target, st.Installed
				break
			}
		}
		// Re-verify: the staged file sat on disk across a crash.
		if err := fetch.VerifyFile(p.Staged, want); err != nil {
			a.log.Warn("staged image no longer verifies; discarding it", "target", p.Target.Name, "err", err)
			_ = a.abandon(j, fmt.Errorf("interrupted install abandoned: %w", err))
			break
		}
		a.log.Info("resuming interrupted install", "target", p.Target.Name, "phase", st.Phase)
		if err := a.install(ctx, j, rep); err != nil {
			return err
		}
	}
	return a.queueAttestations(j)
}

// flush sends queued attestations; failures leave them queued for next time.
func (a *Agent) flush(ctx context.Context, rep *Report) {
	res, err := a.outbox.Flush(ctx, a.api, a.id.cfg.Server+"/v1/attestations")
	rep.AttestationsSent += res.Sent
	if err != nil {
		a.log.Warn("attestations stay queued; will retry on the next run", "queued", res.Remaining, "err", err)
	}
}

func (a *Agent) queuedCount() int {
	q, _ := a.outbox.Queued()
	return len(q)
}

// recordError notes err in the journal (for status) and returns it.
func (a *Agent) recordError(j *journal.Journal, err error) error {
	now := a.cfg.Now().UTC()
	msg := err.Error()
	_ = j.Update(func(s *journal.State) {
		if s.LastError != msg {
			s.LastError, s.LastErrorAt = msg, now
		}
	})
	return err
}

// userAgent sets the User-Agent header on every request.
type userAgent struct {
	d  fetch.Doer
	ua string
}

func (u userAgent) Do(req *http.Request) (*http.Response, error) {
	req.Header.Set("User-Agent", u.ua)
	return u.d.Do(req)
}
