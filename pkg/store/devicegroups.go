package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

// Device tags and groups: what a rollout's groups are made of. A tag group
// holds every device with its tag; a static group the devices whose serial it
// lists (of any model). ota/rollout signs each device's groups for the
// device to check (rollout.MembershipPath).

// Group kinds.
const (
	GroupTag    = "tag"
	GroupStatic = "static"
)

// Bounds on tags and groups.
const (
	MaxDeviceTags    = 32      // tags of one device
	MaxGroupCount    = 1000    // groups in the instance
	MaxStaticSerials = 100_000 // serials of one static group
	maxInsertRows    = 500     // rows per multi-row INSERT
)

// Group is a named set of devices.
type Group struct {
	Name string `json:"name"`
	Kind string `json:"kind"`          // GroupTag or GroupStatic
	Tag  string `json:"tag,omitempty"` // kind tag
	// Serials are a static group's members (CreateGroup only; GetGroup
	// and ListGroups report SerialCount).
	Serials     []string  `json:"serials,omitempty"`
	SerialCount int       `json:"serial_count,omitempty"`
	CreatedBy   string    `json:"created_by"`
	CreatedAt   time.Time `json:"created_at"`
}

const groupSchema = `
CREATE TABLE IF NOT EXISTS device_tags (
	device_id TEXT NOT NULL REFERENCES devices(id),
	tag TEXT NOT NULL,
	PRIMARY KEY (device_id, tag)
);
CREATE INDEX IF NOT EXISTS device_tags_tag ON device_tags (tag, device_id);
CREATE TABLE IF NOT EXISTS device_groups (
	name TEXT PRIMARY KEY,
	kind TEXT NOT NULL,
	tag TEXT NOT NULL,
	created_by TEXT NOT NULL,
	created_at BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS device_groups_tag ON device_groups (tag);
CREATE TABLE IF NOT EXISTS group_serials (
	group_name TEXT NOT NULL REFERENCES device_groups(name),
	serial TEXT NOT NULL,
	PRIMARY KEY (group_name, serial)
);
CREATE INDEX IF NOT EXISTS group_serials_serial ON group_serials (serial)
`

func validNames(what string, names []string, max int) error {
	if len(names) == 0 || len(names) > max {
		return fmt.Errorf("%d %ss: want 1..%d", len(names), what, max)
	}
	for _, n := range names {
		if err := identity.ValidName(n); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	return nil
}

// TagDevice adds tags to a device (tags it already has are kept). A device
// has at most MaxDeviceTags tags; ErrNotFound if it does not exist.
func (d *DB) TagDevice(ctx context.Context, deviceID string, tags []string) error {
	if err := validNames("tag", tags, MaxDeviceTags); err != nil {
		return err
	}
	return d.tx(ctx, func(tx *sql.Tx) error {
		// The device's row lock orders concurrent taggings (the bound below).
		var id string
		err := tx.QueryRowContext(ctx, d.q(`SELECT id FROM devices WHERE id = ?`+d.forUpdate()), deviceID).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("device %s: %w", deviceID, ErrNotFound)
		}
		if err != nil {
			return fmt.Errorf("reading device: %w", err)
		}
		for _, t := range tags {
			if _, err := tx.ExecContext(ctx, d.q(`INSERT INTO device_tags (device_id, tag) VALUES (?, ?) ON CONFLICT DO NOTHING`), deviceID, t); err != nil {
				return fmt.Errorf("tagging device: %w", err)
			}
		}
		var n int
		if err := tx.QueryRowContext(ctx, d.q(`SELECT COUNT(*) FROM device_tags WHERE device_id = ?`), deviceID).Scan(&n); err != nil {
			return err
		}
		if n > MaxDeviceTags {
			return fmt.Errorf("device %s would have %d tags, at most %d", deviceID, n, MaxDeviceTags)
		}
		return nil
	})
}

// UntagDevice removes tags from a device (tags it lacks are ignored).
func (d *DB) UntagDevice(ctx context.Context, deviceID string, tags []string) error {
	if err := validNames("tag", tags, MaxDeviceTags); err != nil {
		return err
	}
	if _, err := d.GetDevice(ctx, deviceID); err != nil {
		return err
	}
	return d.tx(ctx, func(tx *sql.Tx) error {
		for _, t := range tags {
			if _, err := tx.ExecContext(ctx, d.q(`DELETE FROM device_tags WHERE device_id = ? AND tag = ?`), deviceID, t); err != nil {
				return fmt.Errorf("untagging device: %w", err)
			}
		}
		return nil
	})
}

// DeviceTags returns a device's tags, sorted.
func (d *DB) DeviceTags(ctx context.Context, deviceID string) ([]string, error) {
	return d.strings(ctx, `SELECT tag FROM device_tags WHERE device_id = ? ORDER BY tag`, deviceID)
}

// DevicesWithTag returns at most limit (1..MaxDevicePage) ids of devices
// tagged tag whose id sorts after afterID, in id order.
func (d *DB) DevicesWithTag(ctx context.Context, tag, afterID string, limit int) ([]string, error) {
	if limit <= 0 || limit > MaxDevicePage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", limit, MaxDevicePage)
	}
	return d.strings(ctx, `SELECT device_id FROM device_tags WHERE tag = ? AND device_id > ? ORDER BY device_id LIMIT `+strconv.Itoa(limit), tag, afterID)
}

func (d *DB) strings(ctx context.Context, query string, args ...any) ([]string, error) {
	rows, err := d.db.QueryContext(ctx, d.q(query), args...)
	if err != nil {
		return nil, fmt.Errorf("querying store: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, rows.Err()
}

// CreateGroup records a group: kind tag with Tag, or kind static with 1 to
// MaxStaticSerials Serials. ErrConflict if the name is taken.
func (d *DB) CreateGroup(ctx context.Context, g Group) (Group, error) {
	if err := identity.ValidName(g.Name); err != nil {
		return Group{}, fmt.Errorf("group: %w", err)
	}
	switch g.Kind {
	case GroupTag:
		if err := identity.ValidName(g.Tag); err != nil {
			return Group{}, fmt.Errorf("group %s: tag: %w", g.Name, err)
		}
		if len(g.Serials) > 0 {
			return Group{}, fmt.Errorf("group %s: a tag group lists no serials", g.Name)
		}
	case GroupStatic:
		if g.Tag != "" {
			return Group{}, fmt.Errorf("group %s: a static group has no tag", g.Name)
		}
		slices.Sort(g.Serials)
		g.Serials = slices.Compact(g.Serials)
		if err := validNames("serial", g.Serials, MaxStaticSerials); err != nil {
			return Group{}, fmt.Errorf("group %s: %w", g.Name, err)
		}
	default:
		return Group{}, fmt.Errorf("group %s: kind %q, want %s or %s", g.Name, g.Kind, GroupTag, GroupStatic)
	}
	if len(g.CreatedBy) > 512 {
		return Group{}, errors.New("group: actor too long")
	}
	g.CreatedAt, g.SerialCount = d.now(), len(g.Serials)
	err := d.tx(ctx, func(tx *sql.Tx) error {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM device_groups`).Scan(&n); err != nil {
			return err
		}
		if n >= MaxGroupCount {
			return fmt.Errorf("%d groups exist, at most %d", n, MaxGroupCount)
		}
		_, err := tx.ExecContext(ctx, d.q(`INSERT INTO device_groups (name, kind, tag, created_by, created_at) VALUES (?, ?, ?, ?, ?)`), g.Name, g.Kind, g.Tag, g.CreatedBy, ts(g.CreatedAt))
		if isUnique(err) {
			return fmt.Errorf("group %s: %w", g.Name, ErrConflict)
		}
		if err != nil {
			return fmt.Errorf("creating group: %w", err)
		}
		for rest := g.Serials; len(rest) > 0; {
			batch := rest[:min(len(rest), maxInsertRows)]
			rest = rest[len(batch):]
			args := make([]any, 0, 2*len(batch))
			for _, s := range batch {
				args = append(args, g.Name, s)
			}
			values := strings.Repeat("(?, ?), ", len(batch))
			if _, err := tx.ExecContext(ctx, d.q(`INSERT INTO group_serials (group_name, serial) VALUES `+values[:len(values)-2]), args...); err != nil {
				return fmt.Errorf("recording group serials: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return Group{}, err
	}
	g.Serials = nil
	return g, nil
}

const groupCols = `g.name, g.kind, g.tag, g.created_by, g.created_at, (SELECT COUNT(*) FROM group_serials s WHERE s.group_name = g.name)`

func (d *DB) listGroups(ctx context.Context, where string, args ...any) ([]Group, error) {
	rows, err := d.db.QueryContext(ctx, d.q(`SELECT `+groupCols+` FROM device_groups g `+where+` ORDER BY g.name LIMIT `+strconv.Itoa(MaxGroupCount)), args...)
	if err != nil {
		return nil, fmt.Errorf("listing groups: %w", err)
	}
	defer rows.Close()
	var out []Group
	for rows.Next() {
		var g Group
		var at int64
		if err := rows.Scan(&g.Name, &g.Kind, &g.Tag, &g.CreatedBy, &at, &g.SerialCount); err != nil {
			return nil, err
		}
		g.CreatedAt = fromTS(at)
		out = append(out, g)
	}
	return out, rows.Err()
}

// GetGroup returns a group (without its serials) or ErrNotFound.
func (d *DB) GetGroup(ctx context.Context, name string) (Group, error) {
	gs, err := d.listGroups(ctx, `WHERE g.name = ?`, name)
	if err != nil {
		return Group{}, err
	}
	if len(gs) == 0 {
		return Group{}, fmt.Errorf("group %s: %w", name, ErrNotFound)
	}
	return gs[0], nil
}

// ListGroups returns every group (at most MaxGroupCount), by name.
func (d *DB) ListGroups(ctx context.Context) ([]Group, error) { return d.listGroups(ctx, "") }

// GroupSerials returns at most limit (1..MaxDevicePage) serials of a
// static group that sort after after.
func (d *DB) GroupSerials(ctx context.Context, name, after string, limit int) ([]string, error) {
	if limit <= 0 || limit > MaxDevicePage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", limit, MaxDevicePage)
	}
	return d.strings(ctx, `SELECT serial FROM group_serials WHERE group_name = ? AND serial > ? ORDER BY serial LIMIT `+strconv.Itoa(limit), name, after)
}

// DeleteGroup removes a group and its serials; ErrNotFound if absent.
func (d *DB) DeleteGroup(ctx context.Context, name string) error {
	return d.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, d.q(`DELETE FROM group_serials WHERE group_name = ?`), name); err != nil {
			return fmt.Errorf("deleting group: %w", err)
		}
		res, err := tx.ExecContext(ctx, d.q(`DELETE FROM device_groups WHERE name = ?`), name)
		if err != nil {
			return fmt.Errorf("deleting group: %w", err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("group %s: %w", name, ErrNotFound)
		}
		return nil
	})
}

// DeviceGroups computes the groups (sorted) of at most MaxDevicePage
// devices, by device id: the tag groups of their tags and the static groups
// listing their serials. A device in no group maps to nil; unknown ids too.
func (d *DB) DeviceGroups(ctx context.Context, deviceIDs []string) (map[string][]string, error) {
	if len(deviceIDs) > MaxDevicePage {
		return nil, fmt.Errorf("%d devices, at most %d", len(deviceIDs), MaxDevicePage)
	}
	out := make(map[string][]string, len(deviceIDs))
	if len(deviceIDs) == 0 {
		return out, nil
	}
	bySerial := map[string][]string{}
	ids := make([]any, 0, len(deviceIDs))
	serials := make([]any, 0, len(deviceIDs))
	for _, id := range deviceIDs {
		p, err := identity.ParseURI(id)
		if err != nil || p.Role != identity.RoleDevice {
			return nil, fmt.Errorf("device id %q: not a device URN", id)
		}
		ids = append(ids, id)
		if len(bySerial[p.Serial()]) == 0 {
			serials = append(serials, p.Serial())
		}
		bySerial[p.Serial()] = append(bySerial[p.Serial()], id)
	}
	in := func(n int) string { return strings.TrimSuffix(strings.Repeat("?, ", n), ", ") }
	rows, err := d.db.QueryContext(ctx, d.q(`SELECT t.device_id, g.name FROM device_tags t JOIN device_groups g ON g.kind = 'tag' AND g.tag = t.tag WHERE t.device_id IN (`+in(len(ids))+`)`), ids...)
	if err != nil {
		return nil, fmt.Errorf("reading device groups: %w", err)
	}
	if err := scanPairs(rows, func(id, g string) { out[id] = append(out[id], g) }); err != nil {
		return nil, err
	}
	rows, err = d.db.QueryContext(ctx, d.q(`SELECT serial, group_name FROM group_serials WHERE serial IN (`+in(len(serials))+`)`), serials...)
	if err != nil {
		return nil, fmt.Errorf("reading device groups: %w", err)
	}
	err = scanPairs(rows, func(serial, g string) {
		for _, id := range bySerial[serial] {
			out[id] = append(out[id], g)
		}
	})
	if err != nil {
		return nil, err
	}
	for id, gs := range out {
		slices.Sort(gs)
		out[id] = slices.Compact(gs)
	}
	return out, nil
}

func scanPairs(rows *sql.Rows, fn func(a, b string)) error {
	defer rows.Close()
	for rows.Next() {
		var a, b string
		if err := rows.Scan(&a, &b); err != nil {
			return err
		}
		fn(a, b)
	}
	return rows.Err()
}

// FleetDevice is one device of a model as a rollout's health sees it.
type FleetDevice struct {
	ID              string
	Serial          string
	Status          string
	InstalledTarget string
	// Attested: the device sent an install attestation (any outcome) for
	// the query's target at or after its Since.
	Attested bool
	Groups   []string // sorted; nil: the default group
}

// FleetQuery pages the devices of a model for a rollout.
type FleetQuery struct {
	Model string
	// Target: attestations for this target path count as Attested ("": no
	// device is Attested). Each device is looked up on its own: with many
	// attestations of Target, a whole fleet's walk costs devices x
	// attestations; TargetAttesters reads them once.
	Target  string
	Since   time.Time // ... when received at or after Since
	AfterID string    // page after this device id
	Limit   int       // 1..MaxDevicePage
	// NoGroups skips reading the devices' groups (Groups stays nil): for a
	// caller to whom groups do not matter, like a rollout to every group.
	NoGroups bool
}

// PageFleet returns the next page of q.Model's devices in id order, with
// their groups and whether they attested q.Target.
func (d *DB) PageFleet(ctx context.Context, q FleetQuery) ([]FleetDevice, error) {
	if q.Limit <= 0 || q.Limit > MaxDevicePage {
		return nil, fmt.Errorf("page size %d out of range 1..%d", q.Limit, MaxDevicePage)
	}
	attested := `EXISTS (SELECT 1 FROM attestations a WHERE a.device_id = d.id AND a.target_path = ? AND a.received_at >= ?)`
	args := []any{q.Target, ts(q.Since), q.Model, q.AfterID}
	if q.Target == "" {
		attested, args = `(1 = 0)`, args[2:]
	}
	rows, err := d.db.QueryContext(ctx, d.q(`SELECT d.id, d.serial, d.status, d.installed_target, `+attested+`
		FROM devices d WHERE d.model = ? AND d.id > ? ORDER BY d.id LIMIT `+strconv.Itoa(q.Limit)), args...)
	if err != nil {
		return nil, fmt.Errorf("listing fleet: %w", err)
	}
	var out []FleetDevice
	var ids []string
	func() {
		defer rows.Close()
		for rows.Next() {
			var f FleetDevice
			if err = rows.Scan(&f.ID, &f.Serial, &f.Status, &f.InstalledTarget, &f.Attested); err != nil {
				return
			}
			out = append(out, f)
			ids = append(ids, f.ID)
		}
		err = rows.Err()
	}()
	if err != nil {
		return nil, fmt.Errorf("listing fleet: %w", err)
	}
	if q.NoGroups {
		return out, nil
	}
	groups, err := d.DeviceGroups(ctx, ids)
	if err != nil {
		return nil, err
	}
	for i := range out {
		out[i].Groups = groups[out[i].ID]
	}
	return out, nil
}

// TargetAttesters returns the devices of model that attested target (any
// outcome) at or after since, as a set. One query over the attestations of
// the target (index attestations_target), not one per device: a rollout's
// health walks the model's fleet page by page (PageFleet without Target)
// and looks each device up here. The set holds at most one entry per
// device of the model.
func (d *DB) TargetAttesters(ctx context.Context, target string, since time.Time) (map[string]bool, error) {
	rows, err := d.db.QueryContext(ctx, d.q(`SELECT DISTINCT device_id FROM attestations WHERE target_path = ? AND received_at >= ?`), target, ts(since))
	if err != nil {
		return nil, fmt.Errorf("reading attesters: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("reading attesters: %w", err)
		}
		out[id] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading attesters: %w", err)
	}
	return out, nil
}

// Outcomes counts the install attestations of one target.
type Outcomes struct {
	// Succeeded: devices with a committed install and no failed one.
	Succeeded int
	// Failed: devices with a failed install or a health-check rollback.
	Failed int
	// FailedIndices are transparency-log indices of failing attestations,
	// oldest first (at most the limit asked for; only logged ones).
	FailedIndices []int64
}

// TargetOutcomes counts the attestations of target received at or after
// since, device by device (a device that failed once counts as failed),
// and returns the log indices of at most maxIndices (0..MaxHaltIndices)
// failing ones.
func (d *DB) TargetOutcomes(ctx context.Context, target string, since time.Time, maxIndices int) (Outcomes, error) {
	if maxIndices < 0 || maxIndices > MaxHaltIndices {
		return Outcomes{}, fmt.Errorf("%d indices, at most %d", maxIndices, MaxHaltIndices)
	}
	const failed = `outcome IN ('failed', 'rolled-back')`
	var o Outcomes
	// One pass over the target's attestations, grouped by device (a
	// correlated NOT EXISTS per committed attestation was quadratic in them:
	// the planners search the target's index, not the device's).
	err := d.db.QueryRowContext(ctx, d.q(`SELECT
		COALESCE(SUM(CASE WHEN f > 0 THEN 1 ELSE 0 END), 0),
		COALESCE(SUM(CASE WHEN f = 0 AND c > 0 THEN 1 ELSE 0 END), 0)
		FROM (SELECT device_id,
			SUM(CASE WHEN `+failed+` THEN 1 ELSE 0 END) AS f,
			SUM(CASE WHEN outcome = 'committed' THEN 1 ELSE 0 END) AS c
			FROM attestations WHERE target_path = ? AND received_at >= ? GROUP BY device_id) per_device`),
		target, ts(since)).Scan(&o.Failed, &o.Succeeded)
	if err != nil {
		return Outcomes{}, fmt.Errorf("counting outcomes: %w", err)
	}
	if maxIndices == 0 || o.Failed == 0 {
		return o, nil
	}
	rows, err := d.db.QueryContext(ctx, d.q(`SELECT leaf_index FROM attestations WHERE target_path = ? AND received_at >= ? AND `+failed+` AND leaf_index >= 0 ORDER BY id LIMIT `+strconv.Itoa(maxIndices)), target, ts(since))
	if err != nil {
		return Outcomes{}, fmt.Errorf("reading failing attestations: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var i int64
		if err := rows.Scan(&i); err != nil {
			return Outcomes{}, err
		}
		o.FailedIndices = append(o.FailedIndices, i)
	}
	return o, rows.Err()
}
