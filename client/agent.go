package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"github.com/foster-ota/foster/client/internal/clock"
	"github.com/foster-ota/foster/client/internal/fetch"
	"github.com/foster-ota/foster/client/internal/journal"
	"github.com/foster-ota/foster/client/internal/nudge"
	"github.com/foster-ota/foster/client/internal/outbox"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/client/internal/tufclient"
	"github.com/foster-ota/foster/pkg/apierr"
)

// Defaults.
const (
	DefaultRequestTimeout = 60 * time.Second // per API or metadata request
	DefaultStallTimeout   = fetch.DefaultStallTimeout
	DefaultInterval       = time.Hour       // between checks in Run
	DefaultHealthTimeout  = 5 * time.Minute // per health check run
	DefaultMaxReboots     = 3               // reboot requests per phase before giving up on them
	DefaultRebootWait     = 5 * time.Minute // Run waits this long for a requested reboot
	// DefaultNudgeInterval: Run checks at most once per this long because
	// of MQTT nudges (a flood of forged ones cannot make it hammer fosterd).
	DefaultNudgeInterval = time.Minute
	maxReason            = 1024 // bytes, attest's limit
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
	// MinRate (bytes/s), when positive, abandons a download that receives
	// less than MinRate*RateWindow in a RateWindow (default 60s); the partial
	// download is resumed by a later run.
	MinRate    int64
	RateWindow time.Duration
	// CheckpointEvery is how many bytes are downloaded between durable
	// resume points; default 4 MiB.
	CheckpointEvery int64
	// RedirectCAFile adds CA certificates (PEM) to the system roots for
	// hosts fosterd redirects target downloads to (presigned S3 URLs).
	RedirectCAFile string
	// HealthCheck is the command that decides whether a new image is
	// healthy (exit status 0) once it runs; nil: running is healthy enough.
	// It sees FOSTER_TARGET, FOSTER_VERSION, FOSTER_SLOT in its environment.
	HealthCheck   []string
	HealthTimeout time.Duration // default 5m
	// RebootCommand reboots the device; default ["reboot"].
	RebootCommand []string
	// BootIDFile changes on every boot; default /proc/sys/kernel/random/boot_id.
	BootIDFile string
	// MaxReboots bounds reboot requests that do not happen; default 3.
	MaxReboots int
	// RebootWait is how long Run waits for a requested reboot; default 5m.
	RebootWait time.Duration
	// MaxClockLead and TimestampValidity tune the clock rule (client/internal/clock).
	MaxClockLead      time.Duration
	TimestampValidity time.Duration
	// UserAgent is sent with every request; default "foster-agent".
	UserAgent string
	// MQTT, when MQTT.Broker is set, makes Run also check when fosterd
	// nudges the device over MQTT (docs/AGENT.md). Polling goes on as usual.
	MQTT MQTTConfig
	// Now is the wall clock; default time.Now. Trust decisions use the
	// reference time derived from it and signed evidence (docs/AGENT.md).
	Now func() time.Time
}

// MQTTConfig is the broker the agent listens to for "update now" nudges.
// A nudge carries no authority: it only runs the ordinary signed check
// sooner (client/internal/nudge).
type MQTTConfig struct {
	// Broker is tcp://HOST:PORT or ssl://HOST:PORT; empty: no nudges.
	Broker string
	// CAFile verifies the broker (default: system roots); CertFile and
	// KeyFile are a client certificate for brokers that require one.
	CAFile, CertFile, KeyFile string
	// MinInterval: at most one nudged check per this long; default
	// DefaultNudgeInterval.
	MinInterval time.Duration
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
	clock  clock.Source
	// floor is the clock state (journal.Clock) in use; read by TLS handshakes.
	floor atomic.Pointer[journal.Clock]
	// revoked is the server's last "revoked" refusal of this device's
	// certificate, seen on any request (go-tuf's errors keep only the status).
	revoked atomic.Pointer[string]
	// serverNotBefore is the newest NotBefore of a verified server certificate (unix seconds).
	serverNotBefore atomic.Int64
	warnedClock     bool
	// closeIdle drops pooled connections, whose TLS handshakes presented
	// the certificate a renewal just replaced: fosterd refuses that one
	// once the new one has been used on another connection.
	closeIdle func()
}

// New loads the device identity from cfg.StateDir.
func New(cfg Config) (*Agent, error) {
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.HealthTimeout <= 0 {
		cfg.HealthTimeout = DefaultHealthTimeout
	}
	if len(cfg.RebootCommand) == 0 {
		cfg.RebootCommand = []string{"reboot"}
	}
	if cfg.MaxReboots <= 0 {
		cfg.MaxReboots = DefaultMaxReboots
	}
	if cfg.RebootWait <= 0 {
		cfg.RebootWait = DefaultRebootWait
	}
	if cfg.TimestampValidity <= 0 {
		cfg.TimestampValidity = clock.DefaultTimestampValidity
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "foster-agent"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MQTT.MinInterval <= 0 {
		cfg.MQTT.MinInterval = DefaultNudgeInterval
	}
	layout := statedir.Layout{Dir: cfg.StateDir}
	id, err := loadIdentity(layout, true)
	if err != nil {
		return nil, err
	}
	log := orDiscard(cfg.Logger).With("device", id.principal.URI())
	a := &Agent{
		cfg:    cfg,
		layout: layout,
		id:     id,
		log:    log,
		outbox: &outbox.Outbox{Layout: layout, Log: log},
	}
	a.clock = clock.Source{
		Wall:    cfg.Now,
		MaxLead: cfg.MaxClockLead,
		BootID:  a.bootID,
	}
	// Until RunOnce loads the journal, the certificate is the evidence at hand.
	initial := a.clock.Advance(journal.Clock{}, id.chain[0].NotBefore)
	a.floor.Store(&initial)
	api, dl := id.httpClients(cfg.RequestTimeout, a.now, a.sawServerCert)
	if cfg.RedirectCAFile != "" {
		if err := withRedirectRoots(dl, cfg.RedirectCAFile); err != nil {
			return nil, err
		}
	}
	a.api = userAgent{api, cfg.UserAgent, &a.revoked}
	a.closeIdle = func() { api.CloseIdleConnections(); dl.CloseIdleConnections() }
	a.dl = &fetch.Downloader{
		Client:          userAgent{dl, cfg.UserAgent, &a.revoked},
		StallTimeout:    cfg.StallTimeout,
		MinRate:         cfg.MinRate,
		RateWindow:      cfg.RateWindow,
		CheckpointEvery: cfg.CheckpointEvery,
		Log:             log,
	}
	if err := layout.Ensure(); err != nil {
		return nil, err
	}
	if now := a.now(); now.After(id.chain[0].NotAfter) {
		log.Warn("device certificate has expired (or the clock is wrong); the server will refuse it until it is renewed",
			"not_after", id.chain[0].NotAfter)
	}
	return a, nil
}

// Close drops the agent's pooled connections. A process that keeps one
// agent, or runs RunOnce and exits, does not need it; one that makes an
// agent per check for many devices (the fleet simulator, a gateway for its
// sub-devices) calls it after each, so that idle TLS connections, each
// authenticated as its device, do not pile up on fosterd (whose
// http.max_connections they count against) until their idle timeout.
// The agent must not be used after Close.
func (a *Agent) Close() error {
	a.closeIdle()
	return nil
}

// now is the reference time: the wall clock unless signed evidence says it is wrong.
func (a *Agent) now() time.Time {
	t, _ := a.clock.Reference(*a.floor.Load())
	return t
}

func (a *Agent) bootID() string { return clock.SystemBootID(a.cfg.BootIDFile) }

func (a *Agent) sawServerCert(notBefore time.Time) {
	for {
		cur := a.serverNotBefore.Load()
		if notBefore.Unix() <= cur || a.serverNotBefore.CompareAndSwap(cur, notBefore.Unix()) {
			return
		}
	}
}

// loadClock starts from the journalled floor plus the evidence at hand.
func (a *Agent) loadClock(j *journal.Journal) {
	c := a.clock.Advance(j.State().Clock, a.id.chain[0].NotBefore, time.Unix(a.serverNotBefore.Load(), 0))
	a.floor.Store(&c)
	t, basis := a.clock.Reference(c)
	if basis != clock.BasisWall && !a.warnedClock {
		a.warnedClock = true
		a.log.Warn("not trusting the wall clock", "wall", a.cfg.Now().UTC(), "using", t, "basis", string(basis))
	}
}

// Report says what one RunOnce did.
type Report struct {
	// UpToDate is true when no newer target for this device was found.
	UpToDate bool `json:"up_to_date"`
	// Installed is the target this run committed (or finished committing after a restart).
	Installed *Target `json:"installed,omitempty"`
	// RolledBack is the target this run rolled back.
	RolledBack *Target `json:"rolled_back,omitempty"`
	// Previous is what was installed before.
	Previous *Target `json:"previous,omitempty"`
	// Rebooting is true when the run requested a reboot to continue.
	Rebooting bool `json:"rebooting,omitempty"`
	// Phase is the journal's phase when the run ended.
	Phase string `json:"phase"`
	// AttestationsSent counts envelopes the server accepted during this run.
	AttestationsSent int `json:"attestations_sent"`
	// AttestationsQueued counts envelopes still waiting in the outbox.
	AttestationsQueued int `json:"attestations_queued"`
	// NotOffered says why newer releases were passed over: their signed
	// rollout terms do not offer them to this device.
	NotOffered []string `json:"not_offered,omitempty"`
}

// ErrRolledBack is returned by RunOnce when the install it drove was rolled back.
var ErrRolledBack = errors.New("install rolled back")

// RunOnce finishes whatever a previous run (or boot) left in flight, sends
// queued attestations, checks for an update and installs it. It returns with
// Report.Rebooting when the install continues after a reboot. An install
// succeeds even when its attestation cannot be delivered yet (it stays
// queued).
func (a *Agent) RunOnce(ctx context.Context) (*Report, error) {
	if a.cfg.Installer == nil {
		return nil, errors.New("no installer configured")
	}
	unlock, err := a.layout.Lock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	j, err := journal.Open(a.layout.State())
	if err != nil {
		return nil, err
	}
	j.SetClock(a.now)
	a.loadClock(j) // renewal decides with the trusted clock
	a.revoked.Store(nil)
	// Renew the certificate first when due (or expired): everything below
	// authenticates with it. A failure is logged and retried next run.
	if _, err := a.renew(ctx, false); err != nil {
		a.log.Warn("certificate renewal failed; will retry on the next run", "err", err)
	}
	a.loadClock(j) // a renewed certificate's NotBefore is newer evidence
	rep := &Report{}
	defer func() {
		rep.AttestationsQueued = a.queuedCount()
		rep.Phase = string(j.State().Phase)
	}()

	if err := a.queueAttestations(j); err != nil {
		return rep, a.recordError(j, err)
	}
	// Everything in flight past the download is driven to rest first: it
	// needs no network, and the device may be running a trial image.
	if err := a.drive(ctx, j, rep, true); err != nil || rep.Rebooting || rep.RolledBack != nil {
		a.flush(ctx, rep)
		return rep, a.recordError(j, rolledBack(rep, err))
	}
	a.flush(ctx, rep)

	sel, err := a.check(ctx, j, a.fosterd())
	rep.NotOffered = j.State().NotOffered
	if err != nil {
		return rep, a.recordError(j, a.plainRevoked(err))
	}
	if sel == nil {
		if st := j.State(); st.Phase == journal.PhaseDownloading {
			a.log.Info("the target being downloaded is no longer offered; abandoning it", "target", st.Pending.Target.Name)
			if err := a.discard(j, "target withdrawn"); err != nil {
				return rep, err
			}
		}
		rep.UpToDate = true
		if inst := j.State().Installed; inst != nil {
			a.log.Info("up to date", "version", inst.Version, "release_counter", inst.ReleaseCounter)
		} else {
			a.log.Info("up to date", "installed", "none")
		}
		return rep, nil
	}
	err = a.update(ctx, j, sel, rep)
	a.flush(ctx, rep)
	return rep, a.recordError(j, rolledBack(rep, err))
}

func rolledBack(rep *Report, err error) error {
	if err == nil && rep.RolledBack != nil {
		return fmt.Errorf("%w: %s", ErrRolledBack, rep.RolledBack.Name)
	}
	return err
}

// Run checks for updates now and then every interval (±10% jitter, so a
// fleet does not poll in lockstep) until ctx is done. Transient failures are
// retried sooner with exponential backoff, capped at interval. With an MQTT
// broker configured, a nudge starts a check at once, at most one per
// MQTT.MinInterval (a nudge arriving sooner is deferred to the end of that
// interval, never dropped, unless the next poll comes first).
func (a *Agent) Run(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		interval = DefaultInterval
	}
	nudges, stop := a.listen()
	defer stop()
	var lastNudged time.Time
	backoff := 30 * time.Second
	for {
		rep, err := a.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		wait, woken := jitter(interval), nudges
		switch {
		case rep != nil && rep.Rebooting:
			// The reboot should end this process; if it does not, look again.
			wait = a.cfg.RebootWait
			woken = nil // a nudge must not spend a reboot attempt
			a.log.Info("waiting for the reboot", "timeout", wait)
		case err == nil || errors.Is(err, ErrRolledBack):
			backoff = 30 * time.Second
		case IsTransient(err):
			wait = min(jitter(backoff), wait)
			backoff = min(backoff*2, interval)
			a.log.Warn("check failed; retrying", "err", err, "in", wait.Round(time.Second))
		default:
			a.log.Error("check failed", "err", err, "next_check_in", wait.Round(time.Second))
		}
		if nudged, ok := a.sleep(ctx, wait, woken, &lastNudged); !ok {
			return nil
		} else if nudged {
			a.log.Info("nudged over MQTT: checking for updates now")
		}
	}
}

// sleep waits for the next check: wait elapsing or a nudge (debounced by
// lastNudged). It reports whether a nudge ended the wait, and false in ok
// when ctx is done.
func (a *Agent) sleep(ctx context.Context, wait time.Duration, nudges <-chan struct{}, lastNudged *time.Time) (nudged, ok bool) {
	t := time.NewTimer(wait)
	defer t.Stop()
	deadline := time.Now().Add(wait)
	deferred := false
	for {
		select {
		case <-ctx.Done():
			return false, false
		case <-t.C:
			if deferred {
				*lastNudged = time.Now()
			}
			return deferred, true
		case <-nudges:
			now := time.Now()
			next := lastNudged.Add(a.cfg.MQTT.MinInterval)
			if !now.Before(next) {
				*lastNudged = now
				return true, true
			}
			if next.Before(deadline) && !deferred {
				a.log.Debug("nudge deferred: checked because of a nudge recently", "in", next.Sub(now).Round(time.Millisecond))
				t.Reset(next.Sub(now))
				deadline, deferred = next, true
			}
		}
	}
}

// listen subscribes to nudges when a broker is configured (a nil channel,
// never ready, otherwise). A broker that cannot be used leaves polling
// alone. stop closes the subscription.
func (a *Agent) listen() (nudges <-chan struct{}, stop func()) {
	m := a.cfg.MQTT
	if m.Broker == "" {
		return nil, func() {}
	}
	l, err := nudge.Start(nudge.Config{
		Broker: m.Broker, CAFile: m.CAFile, CertFile: m.CertFile, KeyFile: m.KeyFile,
		Model: a.id.cfg.Model, Serial: a.id.cfg.Serial, Log: a.log,
	})
	if err != nil {
		a.log.Error("MQTT nudges disabled; polling continues", "err", err)
		return nil, func() {}
	}
	return l.C(), l.Close
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.9 + 0.2*rand.Float64()))
}

// selection is a target chosen from freshly verified metadata.
type selection struct {
	target Target
	url    string // derived from signed data only
	// dl downloads url (fosterd's downloader, or an offline bundle's).
	dl *fetch.Downloader
	// TUF versions the target was selected from.
	targetsVersion, snapshotVersion int64
	// expires is when the timestamp it was selected under expires.
	expires time.Time
}

// source is where a check reads metadata and targets: fosterd, or an
// offline bundle (bundle.go).
type source struct {
	metadataURL, targetsURL string
	http                    fetch.Doer
	dl                      *fetch.Downloader
	// metadataDir holds the trusted metadata to update (the state dir's).
	metadataDir string
	// target is an offline bundle's release; "" picks the newest qualifying.
	target string
	// offline: not fosterd. The check leaves the online bookkeeping (last
	// check, releases not offered) alone and adopts a bundle's timestamp
	// of the cached version (tufclient.Config.AdoptEqualTimestamp).
	offline bool
	// dryRun: metadataDir is a scratch copy; the journal and the clock
	// floor are left alone.
	dryRun bool
}

// fosterd is the online source.
func (a *Agent) fosterd() source {
	return source{
		metadataURL: a.id.cfg.Server + "/tuf/",
		targetsURL:  a.id.cfg.Server + "/targets/",
		http:        a.api,
		dl:          a.dl,
		metadataDir: a.layout.TUFDir(),
	}
}

// check refreshes TUF metadata from src and selects a target, or nil when
// up to date.
func (a *Agent) check(ctx context.Context, j *journal.Journal, src source) (*selection, error) {
	st := j.State()
	tc, err := tufclient.New(ctx, tufclient.Config{
		MetadataURL:         src.metadataURL,
		TargetsURL:          src.targetsURL,
		MetadataDir:         src.metadataDir,
		KeepRootBackup:      true,
		HTTP:                src.http,
		UserAgent:           a.cfg.UserAgent,
		RefTime:             a.now(),
		AdoptEqualTimestamp: src.offline,
	})
	if err != nil {
		return nil, err
	}
	seen, err := tc.Refresh(st.Seen)
	if err != nil {
		return nil, err
	}
	floor := a.clock.Advance(*a.floor.Load(), a.timestampEvidence(tc), time.Unix(a.serverNotBefore.Load(), 0))
	if !src.dryRun {
		a.floor.Store(&floor)
		if err := j.Update(func(s *journal.State) {
			if !src.offline {
				s.LastCheck = a.now()
				s.LastError, s.LastErrorAt = "", time.Time{}
			}
			s.Seen = seen
			s.Clock = floor
		}); err != nil {
			return nil, err
		}
	}
	var counter int64
	var version string
	if inst := st.Installed; inst != nil {
		counter, version = inst.ReleaseCounter, inst.Version
	}
	cr := tufclient.Criteria{
		Model:             a.id.cfg.Model,
		HardwareID:        a.id.cfg.HardwareID,
		MinReleaseCounter: counter,
		Refused:           st.Failed,
		InstalledVersion:  version,
		Device:            a.id.principal.URI(),
		Serial:            a.id.cfg.Serial,
	}
	var cand *tufclient.Candidate
	if src.target != "" {
		cand, err = tc.Named(src.target, cr)
	} else {
		cand, err = tc.Latest(cr)
	}
	if err != nil {
		return nil, err
	}
	if !src.dryRun && !src.offline {
		if err := a.noteNotOffered(j, tc.NotOffered()); err != nil {
			return nil, err
		}
	}
	if cand == nil {
		return nil, nil
	}
	sel := &selection{target: targetOf(cand), url: tc.TargetURL(cand.Name, cand.Info), dl: src.dl, expires: tc.TimestampExpires()}
	sel.targetsVersion, sel.snapshotVersion = tc.Versions()
	if !src.dryRun {
		a.log.Info("update available", "target", sel.target.Name, "version", sel.target.Version,
			"release_counter", sel.target.ReleaseCounter, "length", sel.target.Length,
			"targets_version", sel.targetsVersion, "snapshot_version", sel.snapshotVersion)
	}
	return sel, nil
}

// timestampEvidence is the time a verified timestamp proves has passed:
// its signing time when fosterd signed it for an offline bundle (whose
// longer expiry would otherwise push the evidence into the future), else
// its expiry minus the longest validity the repository uses.
func (a *Agent) timestampEvidence(tc *tufclient.Client) time.Time {
	if at, ok := tc.BundleSignedAt(); ok {
		return at
	}
	return tc.TimestampExpires().Add(-a.cfg.TimestampValidity)
}

// noteNotOffered logs and records (for status) why newer releases were
// passed over by their signed rollout terms.
func (a *Agent) noteNotOffered(j *journal.Journal, passed []tufclient.NotOffered) error {
	var notes []string
	for _, n := range passed {
		a.log.Info("newer release not offered to this device", "target", n.Name, "version", n.Version, "reason", n.Reason)
		if len(notes) < journal.MaxNotOffered {
			notes = append(notes, reasonOf("%s", n.String()))
		}
	}
	if slices.Equal(notes, j.State().NotOffered) {
		return nil
	}
	return j.Update(func(s *journal.State) { s.NotOffered = notes })
}

// flush sends queued attestations; failures leave them queued for next time.
func (a *Agent) flush(ctx context.Context, rep *Report) {
	res, err := a.outbox.Flush(ctx, a.api, a.id.cfg.Server+"/v1/attestations")
	rep.AttestationsSent += res.Sent
	if err != nil {
		a.log.Warn("attestations stay queued; will retry on the next run", "queued", res.Remaining, "err", err)
	}
	if err := a.outbox.PruneSent(); err != nil {
		a.log.Warn("pruning sent attestations", "err", err)
	}
}

func (a *Agent) queuedCount() int {
	q, _ := a.outbox.Queued()
	return len(q)
}

// recordError notes err in the journal (for status) and returns it.
func (a *Agent) recordError(j *journal.Journal, err error) error {
	if err == nil || errors.Is(err, ErrRolledBack) {
		return err
	}
	now := a.now()
	msg := err.Error()
	_ = j.Update(func(s *journal.State) {
		if s.LastError != msg {
			s.LastError, s.LastErrorAt = msg, now
		}
	})
	return err
}

// userAgent sets the User-Agent header on every request, and notes the
// server's refusal of a revoked certificate in revoked.
type userAgent struct {
	d       fetch.Doer
	ua      string
	revoked *atomic.Pointer[string]
}

func (u userAgent) Do(req *http.Request) (*http.Response, error) {
	req.Header.Set("User-Agent", u.ua)
	resp, err := u.d.Do(req)
	if err != nil || resp.StatusCode != http.StatusForbidden || u.revoked == nil {
		return resp, err
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
	resp.Body = io.NopCloser(bytes.NewReader(body))
	if rerr == nil {
		peek := &http.Response{StatusCode: resp.StatusCode, Status: resp.Status, Body: io.NopCloser(bytes.NewReader(body))}
		var e *apierr.Error
		if errors.As(apierr.FromResponse(peek), &e) && e.Code == apierr.CodeRevoked {
			msg := e.Message
			u.revoked.Store(&msg)
		}
	}
	return resp, err
}

// ErrRevoked: the server refused this device's certificate as revoked.
// Nothing the agent retries will change that: an operator must allow a
// re-enrollment (foster device reprovision) and the device enroll again.
var ErrRevoked = errors.New("this device's certificate is revoked")

// plainRevoked replaces err by ErrRevoked when the server said the
// certificate is revoked during this run.
func (a *Agent) plainRevoked(err error) error {
	if err == nil {
		return nil
	}
	if msg := a.revoked.Load(); msg != nil && !errors.Is(err, ErrRevoked) {
		return fmt.Errorf("%w (server: %s); it cannot check for updates or report installs until it is enrolled again", ErrRevoked, *msg)
	}
	return err
}

func reasonOf(format string, args ...any) string {
	r := fmt.Sprintf(format, args...)
	if len(r) > maxReason {
		r = r[:maxReason]
	}
	return r
}
