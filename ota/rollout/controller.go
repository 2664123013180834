// Package rollout is fosterd's rollout control plane: it owns a staged
// release's rollout from creation to completion, and publishes each decision
// as signed terms (pkg/rollout) that devices check themselves.
//
// States and transitions (the transitions table enforces them):
//
//	create            -> running (wave 1 signed)
//	running, paused   -> next wave       promote; or automatically, running, after
//	                                     the wave interval when the wave is healthy
//	running, paused   -> completed       the same, from the last (100 %) wave
//	running <-> paused                   pause, resume
//	running, paused   -> halted          failure rate > max with >= min-sample outcomes
//	                                     (share 0 signed, log indices recorded)
//	running, paused, halted -> aborted   abort (share 0)
//
// The database and the API are not trusted by devices: what a Controller
// decides reaches them only as terms re-signed through TermsPublisher. Each
// transition is a compare-and-swap on the rollout row (store.UpdateRollout),
// decided and published under the row's lock, so replicas sharing one
// PostgreSQL database never apply a promotion or a halt twice, and the terms
// published last are those of the row committed last.
//
// Health is computed from install attestations, which are signed by devices
// and in the transparency log: the halt record names their log indices.
package rollout

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
)

// Store is what the Controller needs of fosterd's store (*store.DB).
type Store interface {
	GetRelease(ctx context.Context, model, version string) (store.Release, error)
	CreateRollout(ctx context.Context, r store.Rollout) (store.Rollout, error)
	GetRollout(ctx context.Context, id string) (store.Rollout, error)
	ListRollouts(ctx context.Context, f store.RolloutFilter) ([]store.Rollout, error)
	UpdateRollout(ctx context.Context, from store.Rollout, apply func(cur store.Rollout) (store.Rollout, error)) (store.Rollout, error)
	PageFleet(ctx context.Context, q store.FleetQuery) ([]store.FleetDevice, error)
	TargetOutcomes(ctx context.Context, target string, since time.Time, maxIndices int) (store.Outcomes, error)
	TargetAttesters(ctx context.Context, target string, since time.Time) (map[string]bool, error)
	SetRolloutHealth(ctx context.Context, id string, revision int64, health []byte) error

	TagDevice(ctx context.Context, deviceID string, tags []string) error
	UntagDevice(ctx context.Context, deviceID string, tags []string) error
	DevicesWithTag(ctx context.Context, tag, afterID string, limit int) ([]string, error)
	DevicesBySerial(ctx context.Context, serial string) ([]store.Device, error)
	CreateGroup(ctx context.Context, g store.Group) (store.Group, error)
	GetGroup(ctx context.Context, name string) (store.Group, error)
	GroupSerials(ctx context.Context, name, after string, limit int) ([]string, error)
	DeleteGroup(ctx context.Context, name string) error
	DeviceGroups(ctx context.Context, deviceIDs []string) (map[string][]string, error)

	Audit(ctx context.Context, actor, action, detail string) error
}

// TermsPublisher signs rollout decisions into the TUF repository
// (*tufrepo.Repo).
type TermsPublisher interface {
	// SetTerms re-signs the role listing targetPath with t in its custom
	// metadata (nil: offered to every device).
	SetTerms(ctx context.Context, targetPath string, t *rollout.Terms) (tufrepo.Target, error)
	// SetMemberships signs the groups of model's devices, serial -> groups
	// (empty removes the device's membership: the default group).
	SetMemberships(ctx context.Context, model string, members map[string][]string) error
}

// Nudger asks a model's devices to check for updates now (ota/nudge, over
// MQTT). It carries no authority: devices still check the signed terms, so
// a nudge only shortens the wait for what was just signed.
type Nudger interface {
	Nudge(ctx context.Context, model string) error
}

// Defaults of CreateRequest's zero fields.
var (
	DefaultWaves           = []int{1, 10, 50, 100}
	DefaultWaveInterval    = 6 * time.Hour
	DefaultMaxFailureRate  = 0.05
	DefaultMinSample       = 20
	DefaultSilenceDeadline = 24 * time.Hour
)

// Bounds on a rollout's settings.
const (
	MinWaveInterval    = time.Second
	MaxWaveInterval    = 365 * 24 * time.Hour
	MaxMinSample       = 1_000_000
	MinSilenceDeadline = time.Second
	MaxSilenceDeadline = 365 * 24 * time.Hour
	// SystemActor is the actor of the Controller's own transitions
	// (automatic advance, halt, completion) in the audit trail.
	SystemActor = "fosterd"
)

// Errors callers (the API) branch on with errors.Is; store.ErrNotFound,
// store.ErrRolloutActive and store.ErrRolloutChanged come through too.
var (
	// ErrInvalid: the request is malformed or out of bounds.
	ErrInvalid = errors.New("invalid rollout request")
	// ErrTransition: the rollout's state does not allow the action.
	ErrTransition = errors.New("rollout state does not allow this")
)

// Config configures a Controller.
type Config struct {
	Store     Store          // required
	Publisher TermsPublisher // required
	Log       *slog.Logger   // default: discard
	// Now is the clock (default time.Now); tests move it.
	Now func() time.Time
	// Rand supplies rollout ids and seeds (default crypto/rand).
	Rand io.Reader
	// Nudger, when set, is called whenever the signed terms offer a release
	// to more devices (create, promote, advance) or resume (nil: no nudges).
	Nudger Nudger
}

// Controller runs rollouts. Safe for concurrent use; several Controllers
// (fosterd replicas) may share one PostgreSQL store.
type Controller struct {
	store  Store
	pub    TermsPublisher
	log    *slog.Logger
	now    func() time.Time
	rand   io.Reader
	nudger Nudger

	// walkAge is, while Run runs, how old the stored fleet counts of an
	// active rollout may be for Get and List (0: walk the fleet on each).
	walkAge atomic.Int64

	mu      sync.Mutex
	pending map[string]bool // models Notify asked about, not yet evaluated
	silent  map[string]int  // rollout id -> silent devices at its last full evaluation
	wake    chan struct{}
}

// New returns a Controller.
func New(cfg Config) (*Controller, error) {
	if cfg.Store == nil || cfg.Publisher == nil {
		return nil, errors.New("rollout: Store and Publisher are required")
	}
	c := &Controller{store: cfg.Store, pub: cfg.Publisher, log: cfg.Log, now: cfg.Now, rand: cfg.Rand, nudger: cfg.Nudger,
		pending: map[string]bool{}, silent: map[string]int{}, wake: make(chan struct{}, 1)}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	if c.now == nil {
		c.now = time.Now
	}
	if c.rand == nil {
		c.rand = rand.Reader
	}
	return c, nil
}

// CreateRequest starts a rollout of a published release. Zero fields take
// the defaults above.
type CreateRequest struct {
	Model, Version string
	// Groups restricts the rollout to devices in one of them (empty: every
	// device of the model; rollout.DefaultGroup: devices in no group).
	Groups []string
	// Waves are strictly increasing percentages of the eligible devices,
	// the last 100.
	Waves           []int
	WaveInterval    time.Duration
	MaxFailureRate  float64 // (0, 1]
	MinSample       int     // outcomes needed before a halt
	SilenceDeadline time.Duration
}

// Health is a rollout's wave health, from install attestations.
type Health struct {
	Eligible  int `json:"eligible"`  // active devices of the model in the rollout's groups
	Offered   int `json:"offered"`   // ... whose bucket the current wave covers
	Succeeded int `json:"succeeded"` // devices that committed the release (and never failed it)
	Failed    int `json:"failed"`    // devices that attested a failed install or a rollback
	Silent    int `json:"silent"`    // offered longer than the silence deadline, no attestation
	// FailureRate = (Failed+Silent) / (Succeeded+Failed+Silent), 0 with no outcome.
	FailureRate float64 `json:"failure_rate"`
	// FailedIndices: transparency-log indices of failing attestations (at
	// most store.MaxHaltIndices).
	FailedIndices []int64 `json:"failed_log_indices,omitempty"`
	// At is when the fleet was counted (eligible, offered, silent): Get and
	// List show an active rollout's last evaluation by Run, a finished
	// one's final evaluation (Controller.readHealth).
	At time.Time `json:"at"`
}

// Status is a rollout and its health.
type Status struct {
	store.Rollout
	Share  int    `json:"share"` // buckets of rollout.Scale the signed terms offer
	Health Health `json:"health"`
}

// transitions are the admin and automatic moves allowed from each state.
var transitions = map[string][]string{
	store.RolloutRunning: {store.RolloutPaused, store.RolloutHalted, store.RolloutCompleted, store.RolloutAborted},
	store.RolloutPaused:  {store.RolloutRunning, store.RolloutHalted, store.RolloutCompleted, store.RolloutAborted},
	store.RolloutHalted:  {store.RolloutAborted},
}

func allowed(from, to string) bool { return slices.Contains(transitions[from], to) }

func invalid(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

func (req *CreateRequest) validate() error {
	if req.Waves == nil {
		req.Waves = DefaultWaves
	}
	if req.WaveInterval == 0 {
		req.WaveInterval = DefaultWaveInterval
	}
	if req.MaxFailureRate == 0 {
		req.MaxFailureRate = DefaultMaxFailureRate
	}
	if req.MinSample == 0 {
		req.MinSample = DefaultMinSample
	}
	if req.SilenceDeadline == 0 {
		req.SilenceDeadline = DefaultSilenceDeadline
	}
	if err := identity.ValidName(req.Model); err != nil {
		return invalid("model: %v", err)
	}
	if req.Version == "" || len(req.Version) > 128 {
		return invalid("version %q", req.Version)
	}
	if len(req.Groups) > rollout.MaxGroups {
		return invalid("%d groups, at most %d", len(req.Groups), rollout.MaxGroups)
	}
	for _, g := range req.Groups {
		if err := identity.ValidName(g); err != nil {
			return invalid("group: %v", err)
		}
	}
	if len(req.Waves) == 0 || len(req.Waves) > store.MaxWaves {
		return invalid("%d waves, want 1..%d", len(req.Waves), store.MaxWaves)
	}
	for i, w := range req.Waves {
		if w < 1 || w > 100 || (i > 0 && w <= req.Waves[i-1]) {
			return invalid("waves %v: want strictly increasing percentages in 1..100", req.Waves)
		}
	}
	if req.Waves[len(req.Waves)-1] != 100 {
		return invalid("waves %v: the last wave must be 100 (pause a rollout to hold it at a wave)", req.Waves)
	}
	if req.WaveInterval < MinWaveInterval || req.WaveInterval > MaxWaveInterval {
		return invalid("wave interval %v outside %v..%v", req.WaveInterval, MinWaveInterval, MaxWaveInterval)
	}
	if !(req.MaxFailureRate > 0 && req.MaxFailureRate <= 1) {
		return invalid("max failure rate %v outside (0, 1]", req.MaxFailureRate)
	}
	if req.MinSample < 1 || req.MinSample > MaxMinSample {
		return invalid("min sample %d outside 1..%d", req.MinSample, MaxMinSample)
	}
	if req.SilenceDeadline < MinSilenceDeadline || req.SilenceDeadline > MaxSilenceDeadline {
		return invalid("silence deadline %v outside %v..%v", req.SilenceDeadline, MinSilenceDeadline, MaxSilenceDeadline)
	}
	return nil
}

// share is the buckets a rollout in its state offers.
func share(r store.Rollout) int {
	switch r.State {
	case store.RolloutRunning, store.RolloutPaused:
		return waveShare(r)
	case store.RolloutCompleted:
		return rollout.Scale
	}
	return 0
}

// waveShare: wave% of the buckets (Scale/100 buckets per percent).
func waveShare(r store.Rollout) int { return r.Waves[r.Wave] * (rollout.Scale / 100) }

func terms(r store.Rollout) *rollout.Terms {
	return &rollout.Terms{ID: r.ID, Seed: r.Seed, Share: share(r), Groups: r.Groups, State: r.State}
}

// Create starts a rollout of a published release: it records the rollout
// (refused with store.ErrRolloutActive while another active rollout covers
// the model and group set, or the release) and signs its first wave's
// terms. The action is in the audit trail under actor.
func (c *Controller) Create(ctx context.Context, actor string, req CreateRequest) (Status, error) {
	if err := req.validate(); err != nil {
		return Status{}, err
	}
	rel, err := c.store.GetRelease(ctx, req.Model, req.Version)
	if err != nil {
		return Status{}, fmt.Errorf("release %s %s is not published: %w", req.Model, req.Version, err)
	}
	b := make([]byte, 6+rollout.SeedBytes)
	if _, err := io.ReadFull(c.rand, b); err != nil {
		return Status{}, fmt.Errorf("rollout seed: %w", err)
	}
	now := c.now().UTC()
	r, err := c.store.CreateRollout(ctx, store.Rollout{
		ID: "ro-" + hex.EncodeToString(b[:6]), Model: rel.Model, Version: rel.Version, TargetPath: rel.TargetPath,
		Groups: req.Groups, Waves: slices.Clone(req.Waves), WaveInterval: req.WaveInterval, MaxFailureRate: req.MaxFailureRate,
		MinSample: req.MinSample, SilenceDeadline: req.SilenceDeadline, Seed: hex.EncodeToString(b[6:]),
		State: store.RolloutRunning, WaveStarts: []time.Time{now}, CreatedBy: actor,
	})
	if err != nil {
		return Status{}, err
	}
	if _, err := c.pub.SetTerms(ctx, r.TargetPath, terms(r)); err != nil {
		// Recorded but not signed: abort the row so it does not hold the
		// model's slot for terms no device ever saw.
		_, aerr := c.store.UpdateRollout(ctx, r, func(cur store.Rollout) (store.Rollout, error) {
			cur.State, cur.UpdatedBy, cur.HaltReason = store.RolloutAborted, actor, "signing the first wave's terms failed"
			return cur, nil
		})
		return Status{}, errors.Join(fmt.Errorf("signing rollout %s terms: %w", r.ID, err), aerr)
	}
	c.audit(ctx, actor, "rollout.create", r, fmt.Sprintf("model=%s version=%s groups=%s waves=%v", r.Model, r.Version, store.GroupsKey(r.Groups), r.Waves))
	c.nudge(ctx, r)
	return c.status(ctx, r)
}

// Get returns a rollout with its health computed now.
func (c *Controller) Get(ctx context.Context, id string) (Status, error) {
	r, err := c.store.GetRollout(ctx, id)
	if err != nil {
		return Status{}, err
	}
	return c.status(ctx, r)
}

// MaxList bounds List: each rollout's health reads its model's fleet.
const MaxList = 100

// List returns rollouts newest first (f.Limit 1..MaxList), with health.
func (c *Controller) List(ctx context.Context, f store.RolloutFilter) ([]Status, error) {
	if f.Limit <= 0 || f.Limit > MaxList {
		return nil, invalid("list size %d outside 1..%d", f.Limit, MaxList)
	}
	rs, err := c.store.ListRollouts(ctx, f)
	if err != nil {
		return nil, err
	}
	out := make([]Status, 0, len(rs))
	for _, r := range rs {
		s, err := c.status(ctx, r)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func (c *Controller) status(ctx context.Context, r store.Rollout) (Status, error) {
	h, err := c.readHealth(ctx, r)
	if err != nil {
		return Status{}, err
	}
	return Status{Rollout: r, Share: share(r), Health: h}, nil
}

// readHealth is r's health for Get and List, without a fleet walk per
// rollout per read (0.25-1 s per 100,000 devices: a list of rollouts paid it
// for each row; docs/BENCHMARKS.md). Every full evaluation stores its health
// on the rollout (store.SetRolloutHealth), for the revision it is of:
//
//   - a finished rollout (completed, aborted, halted) shows the health
//     stored for its final revision: at the transition, or computed once
//     here and stored;
//   - an active one, while Run evaluates it in this process, shows the fleet
//     counts of its last full evaluation (eligible, offered, silent; at most
//     ten ticks and a minute old, the time in Health.At; the failing log
//     indices too) with its succeeded and failed devices counted now, one
//     query over its target's attestations in an index;
//   - otherwise (no Run here, an older evaluation) the fleet is walked now.
func (c *Controller) readHealth(ctx context.Context, r store.Rollout) (Health, error) {
	if h, ok := storedHealth(r); ok {
		if !r.Active() {
			return h, nil
		}
		if age := time.Duration(c.walkAge.Load()); age > 0 && c.now().Sub(h.At) <= age {
			// The counts only: the failing attestations' log indices are
			// the evaluation's (reading them costs a row per failure).
			o, err := c.store.TargetOutcomes(ctx, r.TargetPath, outcomesSince(r), 0)
			if err != nil {
				return Health{}, err
			}
			h.Succeeded, h.Failed = o.Succeeded, o.Failed
			h.FailureRate = rate(h.Succeeded, h.Failed, h.Silent)
			return h, nil
		}
	}
	h, err := c.health(ctx, r)
	if err != nil {
		return Health{}, err
	}
	c.storeHealth(ctx, r.ID, r.Revision, h)
	return h, nil
}

// storedHealth is the health stored for r's current revision.
func storedHealth(r store.Rollout) (Health, bool) {
	var h Health
	if len(r.Health) == 0 || r.HealthRevision != r.Revision || json.Unmarshal(r.Health, &h) != nil {
		return Health{}, false
	}
	return h, true
}

// storeHealth keeps h as the health of rollout id at revision (unless it
// changed since). A failure costs the next read a fleet walk: logged only.
func (c *Controller) storeHealth(ctx context.Context, id string, revision int64, h Health) {
	b, err := json.Marshal(h)
	if err == nil {
		err = c.store.SetRolloutHealth(ctx, id, revision, b)
	}
	if err != nil && ctx.Err() == nil {
		c.log.Warn("storing rollout health", "rollout", id, "err", err)
	}
}

// Promote offers the next wave now (from the last wave: completes the
// rollout). It applies to the rollout as the caller last read it: of two
// concurrent promotes, one advances and the other fails with
// store.ErrRolloutChanged.
func (c *Controller) Promote(ctx context.Context, actor, id string) (Status, error) {
	return c.act(ctx, actor, id, "rollout.promote", func(cur store.Rollout, now time.Time) (store.Rollout, error) {
		if !cur.Active() {
			return cur, fmt.Errorf("%w: rollout %s is %s, only a running or paused rollout is promoted", ErrTransition, cur.ID, cur.State)
		}
		return advance(cur, now), nil
	})
}

// advance moves r to its next wave, or completes it from the last.
func advance(r store.Rollout, now time.Time) store.Rollout {
	if r.Wave == len(r.Waves)-1 {
		r.State = store.RolloutCompleted
		return r
	}
	r.Wave++
	r.WaveStarts = append(slices.Clone(r.WaveStarts), now)
	return r
}

// Pause stops automatic advance; devices already offered stay offered, and
// the rollout still halts on failures.
func (c *Controller) Pause(ctx context.Context, actor, id string) (Status, error) {
	return c.moveTo(ctx, actor, id, "rollout.pause", store.RolloutPaused)
}

// Resume restarts automatic advance of a paused rollout (a halted one is
// final: abort it and start a new rollout).
func (c *Controller) Resume(ctx context.Context, actor, id string) (Status, error) {
	return c.moveTo(ctx, actor, id, "rollout.resume", store.RolloutRunning)
}

// Abort ends a rollout and offers its release to no device (share 0).
func (c *Controller) Abort(ctx context.Context, actor, id string) (Status, error) {
	return c.moveTo(ctx, actor, id, "rollout.abort", store.RolloutAborted)
}

func (c *Controller) moveTo(ctx context.Context, actor, id, action, to string) (Status, error) {
	return c.act(ctx, actor, id, action, func(cur store.Rollout, _ time.Time) (store.Rollout, error) {
		if !allowed(cur.State, to) {
			return cur, fmt.Errorf("%w: rollout %s is %s, cannot become %s", ErrTransition, cur.ID, cur.State, to)
		}
		cur.State = to
		return cur, nil
	})
}

// act applies an admin action to the rollout as read now.
func (c *Controller) act(ctx context.Context, actor, id, action string, next func(store.Rollout, time.Time) (store.Rollout, error)) (Status, error) {
	if actor == "" || len(actor) > 512 {
		return Status{}, invalid("actor required (at most 512 bytes)")
	}
	from, err := c.store.GetRollout(ctx, id)
	if err != nil {
		return Status{}, err
	}
	r, err := c.transition(ctx, actor, from, func(cur store.Rollout) (store.Rollout, error) {
		return next(cur, c.now().UTC())
	})
	if err != nil {
		return Status{}, err
	}
	c.audit(ctx, actor, action, r, fmt.Sprintf("wave=%d/%d share=%d", r.Wave+1, len(r.Waves), share(r)))
	if share(r) > share(from) || (r.State == store.RolloutRunning && from.State != store.RolloutRunning) {
		c.nudge(ctx, r)
	}
	return c.status(ctx, r)
}

// transition is the one way a rollout changes: compare-and-swap from the
// row from, and publish the new terms (when they change) under the row's
// lock before the row is written.
func (c *Controller) transition(ctx context.Context, actor string, from store.Rollout, next func(cur store.Rollout) (store.Rollout, error)) (store.Rollout, error) {
	return c.store.UpdateRollout(ctx, from, func(cur store.Rollout) (store.Rollout, error) {
		n, err := next(cur)
		if err != nil {
			return store.Rollout{}, err
		}
		n.UpdatedBy = actor
		// A rollout that has stopped offering (halted) is not re-signed on
		// abort: a newer rollout of the release may own its terms by then.
		if share(n) != share(cur) || (n.State != cur.State && cur.Active()) {
			if _, err := c.pub.SetTerms(ctx, n.TargetPath, terms(n)); err != nil {
				return store.Rollout{}, fmt.Errorf("signing rollout %s terms: %w", n.ID, err)
			}
		}
		return n, nil
	})
}

func (c *Controller) audit(ctx context.Context, actor, action string, r store.Rollout, detail string) {
	detail = fmt.Sprintf("rollout=%s state=%s %s", r.ID, r.State, detail)
	if err := c.store.Audit(ctx, actor, action, detail); err != nil {
		c.log.Error("recording rollout audit event", "rollout", r.ID, "action", action, "err", err)
	}
}

// nudge asks r's model's devices to check now; a failure only delays them
// until their next poll.
func (c *Controller) nudge(ctx context.Context, r store.Rollout) {
	if c.nudger == nil {
		return
	}
	if err := c.nudger.Nudge(ctx, r.Model); err != nil {
		c.log.Warn("nudging devices failed; they will see the rollout at their next poll", "rollout", r.ID, "model", r.Model, "err", err)
	}
}

// seed decodes a rollout's seed.
func seed(r store.Rollout) ([]byte, error) {
	s, err := hex.DecodeString(r.Seed)
	if err != nil || len(s) != rollout.SeedBytes {
		return nil, fmt.Errorf("rollout %s: corrupt seed", r.ID)
	}
	return s, nil
}

// inGroups: does a device in groups (nil: the default group) match r?
func inGroups(r store.Rollout, groups []string) bool {
	if len(r.Groups) == 0 {
		return true
	}
	if len(groups) == 0 {
		groups = []string{rollout.DefaultGroup}
	}
	return slices.ContainsFunc(groups, func(g string) bool { return slices.Contains(r.Groups, g) })
}

func joinIndices(ix []int64) string {
	s := make([]string, len(ix))
	for i, v := range ix {
		s[i] = fmt.Sprint(v)
	}
	return strings.Join(s, ",")
}
