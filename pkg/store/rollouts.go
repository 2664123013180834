package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

// Staged rollouts (ota/rollout owns their lifecycle; docs/ROLLOUTS.md).
//
// A rollout row changes only through UpdateRollout, a compare-and-swap on
// (state, revision): two fosterd replicas sharing a PostgreSQL database that
// decide the same transition (promote, halt) from the same row apply it
// once; the other gets ErrRolloutChanged and re-reads. While the change is
// decided and published (the re-signed terms) the row is locked, so the
// terms published last are those of the row committed last.

// Rollout states.
const (
	RolloutRunning   = "running"
	RolloutPaused    = "paused"
	RolloutHalted    = "halted"
	RolloutCompleted = "completed"
	RolloutAborted   = "aborted"
)

// Errors of rollouts, for errors.Is.
var (
	// ErrRolloutActive: a running or paused rollout already covers the
	// model and group set, or the release.
	ErrRolloutActive = errors.New("an active rollout already covers this model and group set or release")
	// ErrRolloutChanged: the rollout is no longer in the state (or at the
	// revision) the change was decided from; another replica or admin
	// changed it first.
	ErrRolloutChanged = errors.New("rollout changed concurrently")
)

// Bounds on a rollout row.
const (
	MaxWaves         = 20
	MaxRolloutGroups = 64 // = rollout.MaxGroups: the groups signed in one Terms
	MaxHaltIndices   = 100
	MaxHaltReason    = 1024 // bytes
	MaxRolloutPage   = 1000
)

// Rollout is a staged release's rollout.
type Rollout struct {
	ID         string `json:"id"`
	Model      string `json:"model"`
	Version    string `json:"version"` // the release's version
	TargetPath string `json:"target"`
	// Groups restricts the rollout to devices in one of them (sorted,
	// empty: every device of the model).
	Groups []string `json:"groups,omitempty"`
	// Waves are increasing percentages of the eligible devices; Wave is
	// the index of the current one.
	Waves           []int         `json:"waves"`
	Wave            int           `json:"wave"`
	WaveInterval    time.Duration `json:"wave_interval"`
	MaxFailureRate  float64       `json:"max_failure_rate"`
	MinSample       int           `json:"min_sample"`
	SilenceDeadline time.Duration `json:"silence_deadline"`
	Seed            string        `json:"seed"` // hex, the signed terms' seed
	State           string        `json:"state"`
	// Revision counts the row's changes (the compare-and-swap's witness).
	Revision  int64     `json:"revision"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// WaveStarts[i] is when wave i was first offered (len = Wave+1): a
	// device is offered from the start of the first wave covering its bucket.
	WaveStarts []time.Time `json:"wave_starts"`
	HaltReason string      `json:"halt_reason,omitempty"`
	// HaltIndices are the transparency-log indices of the failing install
	// attestations that halted the rollout (at most MaxHaltIndices).
	HaltIndices []int64 `json:"halt_log_indices,omitempty"`
	CreatedBy   string  `json:"created_by"`
	UpdatedBy   string  `json:"updated_by"`
	// Health is the health ota/rollout last stored for the rollout (its
	// JSON, opaque here) and HealthRevision the revision it was computed
	// at (SetRolloutHealth); nil before the first.
	Health         []byte `json:"-"`
	HealthRevision int64  `json:"-"`
}

// WaveStartedAt is when the current wave was first offered.
func (r Rollout) WaveStartedAt() time.Time {
	if r.Wave < 0 || r.Wave >= len(r.WaveStarts) {
		return time.Time{}
	}
	return r.WaveStarts[r.Wave]
}

// Active reports whether the rollout is running or paused.
func (r Rollout) Active() bool { return r.State == RolloutRunning || r.State == RolloutPaused }

// GroupsKey is the canonical form of a group set (sorted, comma-joined).
func GroupsKey(groups []string) string {
	g := slices.Clone(groups)
	slices.Sort(g)
	return strings.Join(slices.Compact(g), ",")
}

// validate checks the row's bounds; ota/rollout checks what they mean.
func (r Rollout) validate() error {
	if err := identity.ValidName(r.ID); err != nil {
		return fmt.Errorf("rollout id: %w", err)
	}
	if err := identity.ValidName(r.Model); err != nil {
		return fmt.Errorf("rollout model: %w", err)
	}
	if r.Version == "" || len(r.Version) > 128 || r.TargetPath == "" || len(r.TargetPath) > 1024 {
		return errors.New("rollout: release version and target path required (at most 128 and 1024 bytes)")
	}
	if len(r.Groups) > MaxRolloutGroups {
		return fmt.Errorf("rollout: %d groups, at most %d", len(r.Groups), MaxRolloutGroups)
	}
	for _, g := range r.Groups {
		if err := identity.ValidName(g); err != nil {
			return fmt.Errorf("rollout group: %w", err)
		}
	}
	if len(r.Waves) == 0 || len(r.Waves) > MaxWaves {
		return fmt.Errorf("rollout: %d waves, want 1..%d", len(r.Waves), MaxWaves)
	}
	if r.Wave < 0 || r.Wave >= len(r.Waves) || len(r.WaveStarts) != r.Wave+1 {
		return fmt.Errorf("rollout: wave %d of %d (%d started)", r.Wave, len(r.Waves), len(r.WaveStarts))
	}
	switch r.State {
	case RolloutRunning, RolloutPaused, RolloutHalted, RolloutCompleted, RolloutAborted:
	default:
		return fmt.Errorf("rollout: unknown state %q", r.State)
	}
	if len(r.HaltIndices) > MaxHaltIndices || len(r.HaltReason) > MaxHaltReason {
		return fmt.Errorf("rollout: halt record above %d indices or %d bytes", MaxHaltIndices, MaxHaltReason)
	}
	if len(r.Seed) > 128 || len(r.CreatedBy) > 512 || len(r.UpdatedBy) > 512 {
		return errors.New("rollout: seed or actor too long")
	}
	return nil
}

const rolloutSchema = `
CREATE TABLE IF NOT EXISTS rollouts (
	id TEXT PRIMARY KEY,
	model TEXT NOT NULL REFERENCES models(name),
	version TEXT NOT NULL,
	target_path TEXT NOT NULL,
	groups_key TEXT NOT NULL,
	group_list TEXT NOT NULL,
	waves TEXT NOT NULL,
	wave INTEGER NOT NULL,
	wave_interval BIGINT NOT NULL,
	max_failure_rate DOUBLE PRECISION NOT NULL,
	min_sample BIGINT NOT NULL,
	silence_deadline BIGINT NOT NULL,
	seed TEXT NOT NULL,
	state TEXT NOT NULL,
	revision BIGINT NOT NULL,
	created_at BIGINT NOT NULL,
	updated_at BIGINT NOT NULL,
	wave_starts TEXT NOT NULL,
	halt_reason TEXT NOT NULL,
	halt_indices TEXT NOT NULL,
	created_by TEXT NOT NULL,
	updated_by TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_active_groups ON rollouts (model, groups_key) WHERE state IN ('running', 'paused');
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_active_target ON rollouts (target_path) WHERE state IN ('running', 'paused');
CREATE INDEX IF NOT EXISTS rollouts_model ON rollouts (model, created_at);
CREATE INDEX IF NOT EXISTS devices_model_id ON devices (model, id);
CREATE INDEX IF NOT EXISTS attestations_target ON attestations (target_path, received_at)
`

func (d *DB) migrateRollouts(ctx context.Context) error {
	for _, stmt := range strings.Split(rolloutSchema+";"+groupSchema, ";") {
		if strings.TrimSpace(stmt) == "" {
			continue
		}
		if _, err := d.db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("migrating store schema (rollouts): %w", err)
		}
	}
	return nil
}

const rolloutCols = `id, model, version, target_path, group_list, waves, wave, wave_interval, max_failure_rate, min_sample, silence_deadline, seed, state, revision, created_at, updated_at, wave_starts, halt_reason, halt_indices, created_by, updated_by`

// rolloutReadCols are what reads scan: the written columns and the stored
// health (migration 3; SetRolloutHealth writes it).
const rolloutReadCols = rolloutCols + `, health, health_revision`

func rolloutArgs(r Rollout) ([]any, error) {
	if r.Groups == nil {
		r.Groups = []string{}
	}
	if r.HaltIndices == nil {
		r.HaltIndices = []int64{}
	}
	starts := make([]int64, len(r.WaveStarts))
	for i, t := range r.WaveStarts {
		starts[i] = ts(t)
	}
	var js [4][]byte
	for i, v := range []any{r.Groups, r.Waves, starts, r.HaltIndices} {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		js[i] = b
	}
	return []any{r.ID, r.Model, r.Version, r.TargetPath, string(js[0]), string(js[1]), r.Wave, int64(r.WaveInterval),
		r.MaxFailureRate, r.MinSample, int64(r.SilenceDeadline), r.Seed, r.State, r.Revision, ts(r.CreatedAt),
		ts(r.UpdatedAt), string(js[2]), r.HaltReason, string(js[3]), r.CreatedBy, r.UpdatedBy}, nil
}

func scanRollout(s scanner) (Rollout, error) {
	var r Rollout
	var groups, waves, starts, indices, health string
	var interval, silence, created, updated int64
	err := s.Scan(&r.ID, &r.Model, &r.Version, &r.TargetPath, &groups, &waves, &r.Wave, &interval, &r.MaxFailureRate,
		&r.MinSample, &silence, &r.Seed, &r.State, &r.Revision, &created, &updated, &starts, &r.HaltReason, &indices,
		&r.CreatedBy, &r.UpdatedBy, &health, &r.HealthRevision)
	if err != nil {
		return Rollout{}, err
	}
	if health != "" {
		r.Health = []byte(health)
	}
	r.WaveInterval, r.SilenceDeadline = time.Duration(interval), time.Duration(silence)
	r.CreatedAt, r.UpdatedAt = fromTS(created), fromTS(updated)
	var ns []int64
	for _, f := range []struct {
		raw string
		v   any
	}{{groups, &r.Groups}, {waves, &r.Waves}, {starts, &ns}, {indices, &r.HaltIndices}} {
		if err := json.Unmarshal([]byte(f.raw), f.v); err != nil {
			return Rollout{}, fmt.Errorf("rollout %s: corrupt row: %w", r.ID, err)
		}
	}
	for _, n := range ns {
		r.WaveStarts = append(r.WaveStarts, fromTS(n))
	}
	if len(r.Groups) == 0 {
		r.Groups = nil
	}
	if len(r.HaltIndices) == 0 {
		r.HaltIndices = nil
	}
	return r, nil
}

// CreateRollout records a new rollout (its State running or paused;
// Revision, CreatedAt and UpdatedAt are set here). ErrRolloutActive if an
// active rollout covers the same model and group set, or the same release;
// ErrConflict if the id is taken.
func (d *DB) CreateRollout(ctx context.Context, r Rollout) (Rollout, error) {
	r.Groups = strings.Split(GroupsKey(r.Groups), ",")
	if r.Groups[0] == "" {
		r.Groups = nil
	}
	r.Revision = 1
	r.CreatedAt = d.now()
	r.UpdatedAt = r.CreatedAt
	if r.UpdatedBy == "" {
		r.UpdatedBy = r.CreatedBy
	}
	if err := r.validate(); err != nil {
		return Rollout{}, err
	}
	if !r.Active() {
		return Rollout{}, fmt.Errorf("rollout: a new rollout is running or paused, not %s", r.State)
	}
	args, err := rolloutArgs(r)
	if err != nil {
		return Rollout{}, err
	}
	args = append(args, GroupsKey(r.Groups))
	_, err = d.db.ExecContext(ctx, d.q(`INSERT INTO rollouts (`+rolloutCols+`, groups_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`), args...)
	if isUnique(err) {
		var other string
		if d.db.QueryRowContext(ctx, d.q(`SELECT id FROM rollouts WHERE state IN ('running', 'paused') AND ((model = ? AND groups_key = ?) OR target_path = ?) LIMIT 1`),
			r.Model, GroupsKey(r.Groups), r.TargetPath).Scan(&other) == nil {
			return Rollout{}, fmt.Errorf("rollout %s of %s %s (groups %q) is active: abort it first: %w", other, r.Model, r.Version, GroupsKey(r.Groups), ErrRolloutActive)
		}
		return Rollout{}, fmt.Errorf("rollout %s: %w", r.ID, ErrConflict)
	}
	if err != nil {
		return Rollout{}, fmt.Errorf("creating rollout: %w", err)
	}
	return r, nil
}

// GetRollout returns a rollout or ErrNotFound.
func (d *DB) GetRollout(ctx context.Context, id string) (Rollout, error) {
	return d.getRollout(ctx, d.db, id, "")
}

type queryRower interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

func (d *DB) getRollout(ctx context.Context, q queryRower, id, suffix string) (Rollout, error) {
	r, err := scanRollout(q.QueryRowContext(ctx, d.q(`SELECT `+rolloutReadCols+` FROM rollouts WHERE id = ?`+suffix), id))
	if errors.Is(err, sql.ErrNoRows) {
		return Rollout{}, fmt.Errorf("rollout %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return Rollout{}, fmt.Errorf("reading rollout: %w", err)
	}
	return r, nil
}

// RolloutFilter selects rollouts for ListRollouts.
type RolloutFilter struct {
	Model  string // "" for every model
	Active bool   // only running and paused rollouts
	// Before pages: only rollouts created before it (zero: no bound).
	Before time.Time
	Limit  int // 1..MaxRolloutPage
}

// ListRollouts returns rollouts newest first.
func (d *DB) ListRollouts(ctx context.Context, f RolloutFilter) ([]Rollout, error) {
	if f.Limit <= 0 || f.Limit > MaxRolloutPage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", f.Limit, MaxRolloutPage)
	}
	var where []string
	var args []any
	if f.Model != "" {
		where, args = append(where, "model = ?"), append(args, f.Model)
	}
	if f.Active {
		where = append(where, "state IN ('running', 'paused')")
	}
	if !f.Before.IsZero() {
		where, args = append(where, "created_at < ?"), append(args, ts(f.Before))
	}
	q := `SELECT ` + rolloutReadCols + ` FROM rollouts`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	rows, err := d.db.QueryContext(ctx, d.q(q+" ORDER BY created_at DESC, id LIMIT "+strconv.Itoa(f.Limit)), args...)
	if err != nil {
		return nil, fmt.Errorf("listing rollouts: %w", err)
	}
	defer rows.Close()
	var out []Rollout
	for rows.Next() {
		r, err := scanRollout(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

// UpdateRollout changes rollout from.ID from the row from (compare-and-swap
// on its State and Revision): it locks the row, re-reads it, and fails with
// ErrRolloutChanged if it is no longer from; otherwise apply decides the next
// row, and may publish it (the re-signed terms) before it is written, holding
// the lock (PostgreSQL: SELECT ... FOR UPDATE; SQLite: a mutex of this
// process, the write itself one short transaction). If apply fails nothing is
// written. The stored row gets Revision+1 and UpdatedAt now; id, model,
// release, seed and creation fields cannot change.
func (d *DB) UpdateRollout(ctx context.Context, from Rollout, apply func(cur Rollout) (Rollout, error)) (Rollout, error) {
	var out Rollout
	change := func(q queryRower, exec func(ctx context.Context, query string, args ...any) (sql.Result, error)) error {
		cur, err := d.getRollout(ctx, q, from.ID, d.forUpdate())
		if err != nil {
			return err
		}
		if cur.State != from.State || cur.Revision != from.Revision {
			return fmt.Errorf("rollout %s is %s at revision %d, not %s at %d: %w", cur.ID, cur.State, cur.Revision, from.State, from.Revision, ErrRolloutChanged)
		}
		next, err := apply(cur)
		if err != nil {
			return err
		}
		next.ID, next.Model, next.Version, next.TargetPath, next.Seed = cur.ID, cur.Model, cur.Version, cur.TargetPath, cur.Seed
		next.Groups, next.CreatedAt, next.CreatedBy = cur.Groups, cur.CreatedAt, cur.CreatedBy
		next.Revision, next.UpdatedAt = cur.Revision+1, d.now()
		if err := next.validate(); err != nil {
			return err
		}
		if next.Active() && !cur.Active() {
			return fmt.Errorf("rollout %s: a %s rollout cannot become %s", cur.ID, cur.State, next.State)
		}
		args, err := rolloutArgs(next)
		if err != nil {
			return err
		}
		res, err := exec(ctx, d.q(`UPDATE rollouts SET waves = ?, wave = ?, wave_interval = ?, max_failure_rate = ?, min_sample = ?, silence_deadline = ?, state = ?, revision = ?, updated_at = ?, wave_starts = ?, halt_reason = ?, halt_indices = ?, updated_by = ? WHERE id = ? AND state = ? AND revision = ?`),
			args[5], args[6], args[7], args[8], args[9], args[10], args[12], args[13], args[15], args[16], args[17], args[18], args[20],
			cur.ID, cur.State, cur.Revision)
		if err != nil {
			return fmt.Errorf("updating rollout: %w", err)
		}
		if n, _ := res.RowsAffected(); n != 1 {
			return fmt.Errorf("rollout %s: %w", cur.ID, ErrRolloutChanged)
		}
		out = next
		return nil
	}
	if d.dialect == postgres {
		if err := d.tx(ctx, func(tx *sql.Tx) error { return change(tx, tx.ExecContext) }); err != nil {
			return Rollout{}, err
		}
		return out, nil
	}
	// One fosterd per SQLite file: a mutex of this process is the row lock.
	d.rolloutMu.Lock()
	defer d.rolloutMu.Unlock()
	if err := change(d.db, d.db.ExecContext); err != nil {
		return Rollout{}, err
	}
	return out, nil
}

// MaxRolloutHealth bounds a stored health's JSON.
const MaxRolloutHealth = 16 << 10 // bytes

// SetRolloutHealth stores health (JSON) as the rollout's health at
// revision, unless the rollout has changed since (another revision): a
// summary kept on write, so listing rollouts reads it instead of walking
// each rollout's fleet. It does not change the row's revision.
func (d *DB) SetRolloutHealth(ctx context.Context, id string, revision int64, health []byte) error {
	if len(health) == 0 || len(health) > MaxRolloutHealth {
		return fmt.Errorf("rollout %s: health of %d bytes, want 1..%d", id, len(health), MaxRolloutHealth)
	}
	_, err := d.db.ExecContext(ctx, d.q(`UPDATE rollouts SET health = ?, health_revision = ? WHERE id = ? AND revision = ?`), string(health), revision, id, revision)
	if err != nil {
		return fmt.Errorf("storing rollout %s health: %w", id, err)
	}
	return nil
}
