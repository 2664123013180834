package store

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/foster-ota/foster/pkg/identity"
)

// The fleet at a glance (the console's fleet page), at any fleet size: each
// figure is an aggregate answered from an index and each device list a
// keyset page, so a view costs about the same with 100 or 100,000 devices
// (docs/BENCHMARKS.md). FleetReport, the auditor's full report, still walks
// every device.
//
// Schema migration 3 (migrateFleetViews) adds what this needs: each device's
// installed_at (when it first committed the release it runs, kept by
// AddAttestationTx) and partial indexes over active and revoked devices and
// over refusals by reason; and each rollout's stored health (rollouts.go).

// Fleet device lists (FleetListQuery.List).
const (
	ListBehind  = "behind"  // active devices below their model's latest release, most behind first
	ListSilent  = "silent"  // active devices silent for the stale days, silent longest first (by day)
	ListRevoked = "revoked" // revoked devices, most recently revoked first
	ListCloned  = "cloned"  // devices with clone-attempt refusals, by URN
)

// FleetLists are the lists PageFleetList serves.
var FleetLists = []string{ListBehind, ListSilent, ListRevoked, ListCloned}

// MaxFleetListPage bounds one page of PageFleetList.
const MaxFleetListPage = 1000

// refusalClone is the reason a clone attempt is recorded with.
const refusalClone = "clone: enrollment with a different key"

// ErrBadCursor: a fleet list's "after" cursor is not one PageFleetList made.
var ErrBadCursor = errors.New("malformed page cursor")

// FleetSummary is the fleet page: exact counts, patch coverage, and the
// first page of each device list with the cursor of the next.
type FleetSummary struct {
	GeneratedAt time.Time      `json:"generated_at"`
	Model       string         `json:"model,omitempty"`
	StaleDays   int            `json:"stale_days"`
	Active      int            `json:"active"`
	OnLatest    int            `json:"on_latest"`
	Behind      int            `json:"behind"`
	Silent      int            `json:"silent"`
	Revoked     int            `json:"revoked"`
	Cloned      int            `json:"cloned"`
	Models      []ModelSummary `json:"models"`
	// Coverage is patch coverage over the last CoverageDays days, one point
	// a day, oldest first: how many of today's active devices had committed
	// their model's latest release by the end of that day (the release they
	// run now: a device counts from when it first committed it).
	Coverage []CoveragePoint `json:"coverage"`
	// Lists holds the first page of each of FleetLists.
	Lists map[string]FleetPage `json:"lists"`
}

// ModelSummary is one model's active devices by installed release.
type ModelSummary struct {
	Model    string `json:"model"`
	Active   int    `json:"active"`
	OnLatest int    `json:"on_latest"`
	// Latest is the model's latest release (zero without releases).
	LatestVersion string `json:"latest_version,omitempty"`
	LatestCounter int64  `json:"latest_release_counter,omitempty"`
	// Versions are the releases devices run (and the latest), newest
	// first; Counter 0 is "nothing installed yet". At most
	// MaxSummaryVersions; OtherVersions counts the devices on the rest.
	Versions      []VersionCount `json:"versions"`
	OtherVersions int            `json:"other_versions,omitempty"`
}

// VersionCount is how many active devices run one release.
type VersionCount struct {
	Version string `json:"version"`
	Counter int64  `json:"release_counter"`
	Devices int    `json:"devices"`
	Latest  bool   `json:"latest,omitempty"`
}

// MaxSummaryVersions bounds ModelSummary.Versions.
const MaxSummaryVersions = 50

// FleetPage is one page of a fleet list; Next is the cursor of the next
// page ("" after the last).
type FleetPage struct {
	Devices []DeviceStatus `json:"devices"`
	Next    string         `json:"next,omitempty"`
}

// FleetListQuery selects a page of a fleet list.
type FleetListQuery struct {
	List      string
	Model     string // "" for every model
	StaleDays int    // ListSilent: silence in days
	After     string // "" for the first page, else a Next
	Limit     int    // 1..MaxFleetListPage
}

// FleetSummary computes the fleet page for model ("" for all), with the
// orphan candidates silent for staleDays or more and the first listN
// (1..MaxFleetListPage) devices of each list.
func (d *DB) FleetSummary(ctx context.Context, model string, staleDays, listN int) (*FleetSummary, error) {
	if staleDays < 0 {
		return nil, fmt.Errorf("stale days must not be negative")
	}
	if listN < 1 || listN > MaxFleetListPage {
		return nil, fmt.Errorf("list size %d out of range 1..%d", listN, MaxFleetListPage)
	}
	now := d.now()
	s := &FleetSummary{GeneratedAt: now, Model: model, StaleDays: staleDays, Models: []ModelSummary{}, Lists: map[string]FleetPage{}}
	latest, err := d.latestReleases(ctx, model)
	if err != nil {
		return nil, err
	}
	// The figures are independent reads: a few at once, so a view costs
	// about its largest one (the counts by release), not their sum. Each
	// writes its own fields.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(summaryReads)
	count := func(n *int, doing, query string, args []any) {
		g.Go(func() error {
			if err := d.db.QueryRowContext(gctx, d.q(query), args...).Scan(n); err != nil {
				return fmt.Errorf("%s: %w", doing, err)
			}
			return nil
		})
	}
	g.Go(func() error { return d.summarizeInstalled(gctx, s, latest) })
	g.Go(func() (err error) {
		s.Coverage, err = d.coverageSince(gctx, now, latest)
		return err
	})
	where, args := silentFilter(staleBefore(now, staleDays))
	where, args = d.modelFilter(where, model, args...)
	count(&s.Silent, "counting silent devices", `SELECT COUNT(*) FROM devices WHERE `+where, args)
	where, args = d.modelFilter(`status = 'revoked'`, model)
	count(&s.Revoked, "counting revoked devices", `SELECT COUNT(*) FROM devices WHERE `+where, args)
	where, args = refusalFilter(model)
	count(&s.Cloned, "counting cloned devices", `SELECT COUNT(DISTINCT device_id) FROM device_refusals WHERE `+where, args)
	pages := make([]FleetPage, len(FleetLists))
	for i, l := range FleetLists {
		g.Go(func() (err error) {
			pages[i], err = d.pageFleetList(gctx, FleetListQuery{List: l, Model: model, StaleDays: staleDays, Limit: listN}, now, latest)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	for i, l := range FleetLists {
		s.Lists[l] = pages[i]
	}
	return s, nil
}

// summaryReads bounds the store reads one FleetSummary runs at once (SQLite
// has 4 connections, PostgreSQL 16).
const summaryReads = 3

func staleBefore(now time.Time, days int) time.Time {
	return now.Add(-time.Duration(days) * 24 * time.Hour)
}

const dayNS = int64(24 * time.Hour)

// dayOf is the day (since the epoch, UTC) of t, as seen_day keeps it.
func dayOf(t time.Time) int64 { return ts(t) / dayNS }

// silentFilter selects active devices with no sign of life (enrollment or
// attestation) after before: from the index on seen_day, the day of the
// last one, checking the exact times only on before's own day.
func silentFilter(before time.Time) (string, []any) {
	d := dayOf(before)
	return `status = 'active' AND seen_day <= ? AND (seen_day < ? OR (last_attestation_at <= ? AND enrolled_at <= ?))`,
		[]any{d, d, ts(before), ts(before)}
}

// modelFilter appends "AND model = ?" to where when model is set.
func (d *DB) modelFilter(where, model string, args ...any) (string, []any) {
	if model == "" {
		return where, args
	}
	return where + ` AND model = ?`, append(args, model)
}

// refusalFilter selects clone refusals, of model's devices when set: a
// device URN starts with its model's prefix, so a range of device_id.
func refusalFilter(model string) (string, []any) {
	where, args := `reason = ?`, []any{refusalClone}
	if model != "" {
		prefix := strings.TrimSuffix(identity.Device(model, "x").URI(), "x")
		where, args = where+` AND device_id > ? AND device_id < ?`, append(args, prefix, prefix[:len(prefix)-1]+";")
	}
	return where, args
}

// latestReleases is each model's latest release (of model, when set).
func (d *DB) latestReleases(ctx context.Context, model string) (map[string]Release, error) {
	where, args := ``, []any(nil)
	if model != "" {
		where, args = `WHERE r.model = ?`, []any{model}
	}
	rs, err := queryAll(ctx, d.db, "reading latest releases", d.q(`SELECT r.id, r.model, r.version, r.counter, r.target_path, r.sha256, r.length, r.created_by, r.created_at
		FROM releases r JOIN (SELECT model, MAX(counter) AS counter FROM releases GROUP BY model) l ON l.model = r.model AND l.counter = r.counter `+where), scanRelease, args...)
	if err != nil {
		return nil, err
	}
	out := map[string]Release{}
	for _, r := range rs {
		out[r.Model] = r
	}
	return out, nil
}

// summarizeInstalled counts active devices by model and installed release.
func (d *DB) summarizeInstalled(ctx context.Context, s *FleetSummary, latest map[string]Release) error {
	where, args := d.modelFilter(`status = 'active'`, s.Model)
	type group struct {
		model   string
		counter int64
		n       int
		version sql.NullString
	}
	groups, err := queryAll(ctx, d.db, "counting devices by release", d.q(`SELECT g.model, g.counter, g.n, r.version
		FROM (SELECT model, installed_counter AS counter, COUNT(*) AS n FROM devices WHERE `+where+` GROUP BY model, installed_counter) g
		LEFT JOIN releases r ON r.model = g.model AND r.counter = g.counter ORDER BY g.model, g.counter DESC`),
		func(sc scanner) (group, error) {
			var g group
			err := sc.Scan(&g.model, &g.counter, &g.n, &g.version)
			return g, err
		}, args...)
	if err != nil {
		return err
	}
	byModel := map[string]*ModelSummary{}
	summary := func(m string) *ModelSummary {
		if ms := byModel[m]; ms != nil {
			return ms
		}
		ms := &ModelSummary{Model: m, Versions: []VersionCount{}}
		if l, ok := latest[m]; ok {
			ms.LatestVersion, ms.LatestCounter = l.Version, l.Counter
		}
		byModel[m] = ms
		return ms
	}
	for _, g := range groups {
		ms := summary(g.model)
		ms.Active += g.n
		s.Active += g.n
		l, hasLatest := latest[g.model]
		switch {
		case hasLatest && g.counter == l.Counter:
			ms.OnLatest += g.n
			s.OnLatest += g.n
		case hasLatest && g.counter < l.Counter:
			s.Behind += g.n
		}
		if len(ms.Versions) < MaxSummaryVersions {
			ms.Versions = append(ms.Versions, VersionCount{Version: g.version.String, Counter: g.counter, Devices: g.n, Latest: hasLatest && g.counter == l.Counter})
		} else {
			ms.OtherVersions += g.n
		}
	}
	// The latest release is listed even when no device runs it yet.
	for m, l := range latest {
		ms := summary(m)
		if !slices.ContainsFunc(ms.Versions, func(v VersionCount) bool { return v.Latest }) {
			ms.Versions = slices.Insert(ms.Versions, 0, VersionCount{Version: l.Version, Counter: l.Counter, Latest: true})
		}
	}
	for _, ms := range byModel {
		s.Models = append(s.Models, *ms)
	}
	slices.SortFunc(s.Models, func(a, b ModelSummary) int { return strings.Compare(a.Model, b.Model) })
	return nil
}

// coverageSince is FleetSummary.Coverage: per model, the active devices on
// its latest release by the day they first committed it.
func (d *DB) coverageSince(ctx context.Context, now time.Time, latest map[string]Release) ([]CoveragePoint, error) {
	byDay := map[int64]int{} // day number since the epoch (UTC) -> devices
	for m, l := range latest {
		err := func() error {
			rows, err := d.db.QueryContext(ctx, d.q(`SELECT installed_at / `+strconv.FormatInt(dayNS, 10)+` AS day, COUNT(*) FROM devices
				WHERE status = 'active' AND model = ? AND installed_counter = ? GROUP BY installed_at / `+strconv.FormatInt(dayNS, 10)), m, l.Counter)
			if err != nil {
				return err
			}
			defer rows.Close()
			for rows.Next() {
				var day int64
				var n int
				if err := rows.Scan(&day, &n); err != nil {
					return err
				}
				byDay[day] += n
			}
			return rows.Err()
		}()
		if err != nil {
			return nil, fmt.Errorf("reading patch coverage: %w", err)
		}
	}
	days := make([]int64, 0, len(byDay))
	for day := range byDay {
		days = append(days, day)
	}
	slices.Sort(days)
	today := now.UTC().Truncate(24 * time.Hour)
	pts := make([]CoveragePoint, 0, CoverageDays)
	n, k := 0, 0
	for i := CoverageDays - 1; i >= 0; i-- {
		end := today.Add(-time.Duration(i-1) * 24 * time.Hour).Add(-time.Nanosecond)
		if i == 0 {
			end = now
		}
		last := end.UnixNano() / dayNS // the day this point ends in
		for k < len(days) && days[k] <= last {
			n += byDay[days[k]]
			k++
		}
		pts = append(pts, CoveragePoint{Day: end, Patched: n})
	}
	return pts, nil
}

// PageFleetList returns a page of one fleet list (q.List one of FleetLists).
func (d *DB) PageFleetList(ctx context.Context, q FleetListQuery) (FleetPage, error) {
	if !slices.Contains(FleetLists, q.List) {
		return FleetPage{}, fmt.Errorf("no fleet list %q (want one of %s)", q.List, strings.Join(FleetLists, ", "))
	}
	if q.Limit < 1 || q.Limit > MaxFleetListPage {
		return FleetPage{}, fmt.Errorf("page size %d out of range 1..%d", q.Limit, MaxFleetListPage)
	}
	if q.StaleDays < 0 {
		return FleetPage{}, fmt.Errorf("stale days must not be negative")
	}
	var latest map[string]Release
	if q.List == ListBehind {
		var err error
		if latest, err = d.latestReleases(ctx, q.Model); err != nil {
			return FleetPage{}, err
		}
	}
	return d.pageFleetList(ctx, q, d.now(), latest)
}

// cursor is a fleet list's keyset position, opaque to callers.
type cursor struct {
	Model   string `json:"m,omitempty"`
	Counter int64  `json:"c,omitempty"`
	T1      int64  `json:"t,omitempty"`
	T2      int64  `json:"u,omitempty"`
	ID      string `json:"id"`
}

// maxCursor bounds a cursor's text.
const maxCursor = 1024

func (c cursor) String() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func parseCursor(s string) (cursor, error) {
	var c cursor
	if len(s) > maxCursor {
		return c, fmt.Errorf("%w: longer than %d bytes", ErrBadCursor, maxCursor)
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil || c.ID == "" {
		return cursor{}, ErrBadCursor
	}
	return c, nil
}

const statusCols = `id, serial, model, status, installed_version, installed_counter, installed_at, last_attestation_at, enrolled_at, revoked_at, revoke_reason, seen_day`

func scanStatus(s scanner) (DeviceStatus, error) {
	var ds DeviceStatus
	var inst, last, enrolled, revoked int64
	err := s.Scan(&ds.ID, &ds.Serial, &ds.Model, &ds.Status, &ds.InstalledVersion, &ds.InstalledCounter, &inst, &last, &enrolled, &revoked, &ds.RevokeReason, &ds.seenDay)
	ds.InstalledAt, ds.LastAttestationAt, ds.EnrolledAt, ds.RevokedAt = fromTS(inst), fromTS(last), fromTS(enrolled), fromTS(revoked)
	return ds, err
}

func (d *DB) pageFleetList(ctx context.Context, q FleetListQuery, now time.Time, latest map[string]Release) (FleetPage, error) {
	var after *cursor
	if q.After != "" {
		c, err := parseCursor(q.After)
		if err != nil {
			return FleetPage{}, err
		}
		after = &c
	}
	limit := " LIMIT " + strconv.Itoa(q.Limit)
	var out []DeviceStatus
	var err error
	switch q.List {
	case ListBehind:
		out, err = d.pageBehind(ctx, q, after, latest)
	case ListSilent:
		where, args := silentFilter(staleBefore(now, q.StaleDays))
		if after != nil {
			where, args = where+` AND (seen_day, id) > (?, ?)`, append(args, after.T1, after.ID)
		}
		where, args = d.modelFilter(where, q.Model, args...)
		out, err = queryAll(ctx, d.db, "listing silent devices", d.q(`SELECT `+statusCols+` FROM devices WHERE `+where+` ORDER BY seen_day, id`+limit), scanStatus, args...)
	case ListRevoked:
		where, args := `status = 'revoked'`, []any(nil)
		if after != nil {
			where, args = where+` AND (revoked_at, id) < (?, ?)`, append(args, after.T1, after.ID)
		}
		where, args = d.modelFilter(where, q.Model, args...)
		out, err = queryAll(ctx, d.db, "listing revoked devices", d.q(`SELECT `+statusCols+` FROM devices WHERE `+where+` ORDER BY revoked_at DESC, id DESC`+limit), scanStatus, args...)
	case ListCloned:
		out, err = d.pageCloned(ctx, q, after)
	}
	if err != nil {
		return FleetPage{}, err
	}
	p := FleetPage{Devices: out}
	if p.Devices == nil {
		p.Devices = []DeviceStatus{}
	}
	if len(out) == q.Limit {
		last := out[len(out)-1]
		c := cursor{ID: last.ID}
		switch q.List {
		case ListBehind:
			c.Model, c.Counter, c.T1 = last.Model, last.InstalledCounter, ts(last.InstalledAt)
		case ListSilent:
			c.T1 = last.seenDay
		case ListRevoked:
			c.T1 = ts(last.RevokedAt)
		}
		p.Next = c.String()
	}
	return p, nil
}

// pageBehind walks the models in order; within one, devices by installed
// release (oldest first), how long they have run it, and URN: an index
// range per model.
func (d *DB) pageBehind(ctx context.Context, q FleetListQuery, after *cursor, latest map[string]Release) ([]DeviceStatus, error) {
	models := make([]string, 0, len(latest))
	for m := range latest {
		if after == nil || m >= after.Model {
			models = append(models, m)
		}
	}
	slices.Sort(models)
	var out []DeviceStatus
	for _, m := range models {
		l := latest[m]
		where, args := `status = 'active' AND model = ? AND installed_counter < ?`, []any{m, l.Counter}
		if after != nil && m == after.Model {
			where, args = where+` AND (installed_counter, installed_at, id) > (?, ?, ?)`, append(args, after.Counter, after.T1, after.ID)
		}
		page, err := queryAll(ctx, d.db, "listing devices behind", d.q(`SELECT `+statusCols+` FROM devices WHERE `+where+
			` ORDER BY installed_counter, installed_at, id LIMIT `+strconv.Itoa(q.Limit-len(out))), scanStatus, args...)
		if err != nil {
			return nil, err
		}
		if len(page) > 0 {
			// Releases between each one's and the latest (a few counters a page).
			behind := map[int64]int{}
			for i := range page {
				c := page[i].InstalledCounter
				if _, ok := behind[c]; !ok {
					var n int
					if err := d.db.QueryRowContext(ctx, d.q(`SELECT COUNT(*) FROM releases WHERE model = ? AND counter > ?`), m, c).Scan(&n); err != nil {
						return nil, fmt.Errorf("counting releases: %w", err)
					}
					behind[c] = n
				}
				page[i].LatestVersion, page[i].LatestCounter, page[i].ReleasesBehind = l.Version, l.Counter, behind[c]
			}
		}
		out = append(out, page...)
		if len(out) == q.Limit {
			break
		}
	}
	return out, nil
}

// pageCloned lists devices with clone-attempt refusals by URN, with how
// many attempts and the last one's time.
func (d *DB) pageCloned(ctx context.Context, q FleetListQuery, after *cursor) ([]DeviceStatus, error) {
	where, args := refusalFilter(q.Model)
	if after != nil {
		where, args = where+` AND device_id > ?`, append(args, after.ID)
	}
	type clone struct {
		id   string
		n    int
		last int64
	}
	cs, err := queryAll(ctx, d.db, "listing cloned devices", d.q(`SELECT device_id, COUNT(*), MAX(at) FROM device_refusals WHERE `+where+
		` GROUP BY device_id ORDER BY device_id LIMIT `+strconv.Itoa(q.Limit)), func(s scanner) (clone, error) {
		var c clone
		err := s.Scan(&c.id, &c.n, &c.last)
		return c, err
	}, args...)
	if err != nil || len(cs) == 0 {
		return nil, err
	}
	ids := make([]any, len(cs))
	for i, c := range cs {
		ids[i] = c.id
	}
	devs, err := queryAll(ctx, d.db, "listing cloned devices", d.q(`SELECT `+statusCols+` FROM devices WHERE id IN (?`+strings.Repeat(", ?", len(ids)-1)+`)`), scanStatus, ids...)
	if err != nil {
		return nil, err
	}
	byID := map[string]DeviceStatus{}
	for _, ds := range devs {
		byID[ds.ID] = ds
	}
	out := make([]DeviceStatus, 0, len(cs))
	for _, c := range cs {
		ds, ok := byID[c.id]
		if !ok { // no device row (deleted by hand?): what the URN says
			ds = DeviceStatus{ID: c.id}
			if p, err := identity.ParseURI(c.id); err == nil {
				ds.Model, ds.Serial = p.Model, p.Serial()
			}
		}
		ds.CloneAttempts, ds.LastCloneAttempt = c.n, fromTS(c.last)
		out = append(out, ds)
	}
	return out, nil
}

// migrateFleetViews is schema migration 3.
func (d *DB) migrateFleetViews(ctx context.Context) error {
	for _, c := range [][3]string{
		{"devices", "installed_at", "BIGINT NOT NULL DEFAULT 0"},
		// The day (since the epoch, UTC) of the device's last enrollment or
		// attestation: the silent list's index key. last_attestation_at
		// changes with every attestation and an index on it would make
		// every ingest update a non-HOT one on PostgreSQL.
		{"devices", "seen_day", "BIGINT NOT NULL DEFAULT 0"},
		// A rollout's last computed health (SetRolloutHealth).
		{"rollouts", "health", "TEXT NOT NULL DEFAULT ''"},
		{"rollouts", "health_revision", "BIGINT NOT NULL DEFAULT 0"},
	} {
		if err := d.addColumn(ctx, c[0], c[1], c[2]); err != nil {
			return err
		}
	}
	for _, stmt := range []string{
		// When each device first committed the release it runs, from its
		// attestations, and the day it was last seen (AddAttestationTx and
		// EnrollDevice keep both from now on); one pass over the rows.
		`UPDATE devices SET installed_at = CASE WHEN installed_counter = 0 THEN 0 ELSE COALESCE((SELECT MIN(a.received_at) FROM attestations a
			WHERE a.device_id = devices.id AND a.outcome = 'committed' AND a.counter = devices.installed_counter), 0) END,
			seen_day = (CASE WHEN last_attestation_at > enrolled_at THEN last_attestation_at ELSE enrolled_at END) / ` + strconv.FormatInt(dayNS, 10),
		// Counts by model and release, the behind list and coverage.
		`CREATE INDEX IF NOT EXISTS devices_active_release ON devices (model, installed_counter, installed_at, id) WHERE status = 'active'`,
		// Orphan candidates: silent since, longest first.
		`CREATE INDEX IF NOT EXISTS devices_active_seen ON devices (seen_day, id) WHERE status = 'active'`,
		`CREATE INDEX IF NOT EXISTS devices_revoked ON devices (revoked_at, id) WHERE status = 'revoked'`,
		// Clone attempts by device.
		`CREATE INDEX IF NOT EXISTS device_refusals_reason ON device_refusals (reason, device_id, at)`,
		// A rollout's outcomes and attesters, grouped by device, from the
		// index alone (TargetOutcomes, TargetAttesters: every read of an
		// active rollout); it replaces (target_path, received_at).
		`CREATE INDEX IF NOT EXISTS attestations_target_device ON attestations (target_path, device_id, outcome, received_at)`,
		`DROP INDEX IF EXISTS attestations_target`,
		// Every admin request counts its subject's unrevoked certificates
		// (sqlCredentialAccess). With statistics (ANALYZE), SQLite took
		// (revoked_at) for it, two rows per value on average, but every
		// device's live certificate has revoked_at 0: 100,000 entries read
		// per request. Subject, revoked_at and issued_at answer it exactly;
		// the index replaces (subject).
		`CREATE INDEX IF NOT EXISTS certificates_subject_live ON certificates (subject, revoked_at, issued_at)`,
		`DROP INDEX IF EXISTS certificates_subject`,
		// A rollout's health walks its model's devices (PageFleet) every
		// tick: from this index alone instead of every device row (53,000
		// devices: 250-330 -> 65-140 ms on SQLite). It replaces (model, id).
		`CREATE INDEX IF NOT EXISTS devices_fleet ON devices (model, id, serial, status, installed_target)`,
		`DROP INDEX IF EXISTS devices_model_id`,
	} {
		if _, err := d.db.ExecContext(ctx, stmt); err != nil {
			return fmt.Errorf("migrating store schema (fleet views): %w", err)
		}
	}
	if d.dialect == postgres {
		// The backfill rewrote every device row: until (auto)vacuum marks
		// the pages all-visible again, PostgreSQL reads the whole table
		// for the fleet page's counts instead of the indexes above.
		if _, err := d.db.ExecContext(ctx, `VACUUM (ANALYZE) devices`); err != nil {
			return fmt.Errorf("migrating store schema (fleet views): %w", err)
		}
	}
	return nil
}
