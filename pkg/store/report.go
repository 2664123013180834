package store

import (
	"context"
	"fmt"
	"math"
	"slices"
	"time"
)

// MaxReportDevices bounds each device list in a FleetReport; longer lists
// are cut and the report marked Truncated (counts stay exact).
const MaxReportDevices = 10000

// FleetReport is the auditor's view of patch status (`foster audit report`).
// Revoked devices are left out.
type FleetReport struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Model limits the report to one model ("" for all).
	Model string `json:"model,omitempty"`
	// StaleDays is the silence after which a device is an orphan candidate.
	StaleDays int             `json:"stale_days"`
	Releases  []ReleaseStatus `json:"releases"`
	// Behind lists active devices not on their model's latest release.
	Behind []DeviceStatus `json:"behind"`
	// Stale lists active devices with no attestation (and no enrollment) for StaleDays.
	Stale []DeviceStatus `json:"stale"`
	// Revoked lists revoked devices; RevokedCount counts them all.
	Revoked      []DeviceStatus `json:"revoked"`
	RevokedCount int            `json:"revoked_count"`
	// Active counts the active devices the report covers.
	Active int `json:"active"`
	// Coverage is patch coverage over the last CoverageDays days, one point
	// a day, oldest first: how many of today's active devices had committed
	// their model's latest release by the end of that day.
	Coverage []CoveragePoint `json:"coverage"`
	// Truncated says a device list hit MaxReportDevices.
	Truncated bool `json:"truncated,omitempty"`
}

// CoverageDays is the span of FleetReport.Coverage.
const CoverageDays = 30

// CoveragePoint is one day of FleetReport.Coverage.
type CoveragePoint struct {
	Day     time.Time `json:"day"` // end of the day (UTC), or the report's time for today
	Patched int       `json:"patched"`
}

// ReleaseStatus is one release and the devices on it.
type ReleaseStatus struct {
	Model       string    `json:"model"`
	Version     string    `json:"version"`
	Counter     int64     `json:"release_counter"`
	Target      string    `json:"target"`
	PublishedAt time.Time `json:"published_at"`
	Latest      bool      `json:"latest"`
	// Installed counts the active devices whose last committed install is this release.
	Installed int      `json:"installed"`
	Devices   []string `json:"devices"`
	// Committed counts devices that ever attested a committed install of it.
	Committed int `json:"committed"`
	// TimeToPatch is the distribution, over those devices, of the time from
	// publication to their first committed attestation (as logged by fosterd).
	TimeToPatch *Percentiles `json:"time_to_patch,omitempty"`
}

// Percentiles of a duration distribution, in seconds (nearest rank).
type Percentiles struct {
	P50 float64 `json:"p50_seconds"`
	P90 float64 `json:"p90_seconds"`
	P99 float64 `json:"p99_seconds"`
	Max float64 `json:"max_seconds"`
}

// DeviceStatus is one device in a report list.
type DeviceStatus struct {
	ID                string    `json:"id"`
	Model             string    `json:"model"`
	Serial            string    `json:"serial"`
	InstalledVersion  string    `json:"installed_version,omitempty"`
	InstalledCounter  int64     `json:"installed_release_counter"`
	LatestVersion     string    `json:"latest_version,omitempty"`
	LatestCounter     int64     `json:"latest_release_counter"`
	ReleasesBehind    int       `json:"releases_behind"`
	EnrolledAt        time.Time `json:"enrolled_at,omitzero"` // zero: unknown (a report from the log)
	LastAttestationAt time.Time `json:"last_attestation_at,omitzero"`
	// The fleet lists (FleetSummary, PageFleetList) also fill these.
	Status string `json:"status,omitempty"`
	// InstalledAt is when the device first committed the release it runs.
	InstalledAt  time.Time `json:"installed_at,omitzero"`
	RevokedAt    time.Time `json:"revoked_at,omitzero"`
	RevokeReason string    `json:"revoke_reason,omitempty"`
	// CloneAttempts counts the refused enrollments of the serial with
	// another key; LastCloneAttempt is the latest one's time.
	CloneAttempts    int       `json:"clone_attempts,omitempty"`
	LastCloneAttempt time.Time `json:"last_clone_attempt,omitzero"`
	seenDay          int64     // the silent list's cursor
}

// FleetReport computes the report for model ("" for all) with orphan
// candidates silent for staleDays or more.
func (d *DB) FleetReport(ctx context.Context, model string, staleDays int) (*FleetReport, error) {
	if staleDays < 0 {
		return nil, fmt.Errorf("stale days must not be negative")
	}
	now := d.now()
	rep := &FleetReport{GeneratedAt: now, Model: model, StaleDays: staleDays, Releases: []ReleaseStatus{}, Behind: []DeviceStatus{}, Stale: []DeviceStatus{}, Revoked: []DeviceStatus{}, Coverage: []CoveragePoint{}}
	rels, err := d.ListReleases(ctx, model)
	if err != nil {
		return nil, err
	}
	type key struct {
		model   string
		counter int64
	}
	byKey := map[key]*ReleaseStatus{}
	latest := map[string]*ReleaseStatus{}
	counters := map[string][]int64{} // ascending, per model
	slices.SortFunc(rels, func(a, b Release) int {
		if a.Model != b.Model {
			if a.Model < b.Model {
				return -1
			}
			return 1
		}
		return int(a.Counter - b.Counter)
	})
	rep.Releases = make([]ReleaseStatus, len(rels))
	for i, r := range rels {
		rep.Releases[i] = ReleaseStatus{Model: r.Model, Version: r.Version, Counter: r.Counter, Target: r.TargetPath, PublishedAt: r.CreatedAt, Devices: []string{}}
		rs := &rep.Releases[i]
		byKey[key{r.Model, r.Counter}] = rs
		latest[r.Model] = rs // ascending: the last one wins
		counters[r.Model] = append(counters[r.Model], r.Counter)
	}
	for _, rs := range latest {
		rs.Latest = true
	}

	where, args := `WHERE status = ?`, []any{DeviceActive}
	if model != "" {
		where, args = where+` AND model = ?`, append(args, model)
	}
	rows, err := d.db.QueryContext(ctx, d.q(`SELECT id, serial, model, installed_version, installed_counter, last_attestation_at, enrolled_at FROM devices `+where+` ORDER BY model, serial`), args...)
	if err != nil {
		return nil, fmt.Errorf("reading devices: %w", err)
	}
	defer rows.Close()
	staleBefore := now.Add(-time.Duration(staleDays) * 24 * time.Hour)
	for rows.Next() {
		var ds DeviceStatus
		var last, enrolled int64
		if err := rows.Scan(&ds.ID, &ds.Serial, &ds.Model, &ds.InstalledVersion, &ds.InstalledCounter, &last, &enrolled); err != nil {
			return nil, fmt.Errorf("reading devices: %w", err)
		}
		ds.LastAttestationAt, ds.EnrolledAt = fromTS(last), fromTS(enrolled)
		rep.Active++
		if rs := byKey[key{ds.Model, ds.InstalledCounter}]; rs != nil {
			rs.Installed++
			if len(rs.Devices) < MaxReportDevices {
				rs.Devices = append(rs.Devices, ds.ID)
			} else {
				rep.Truncated = true
			}
		}
		if l := latest[ds.Model]; l != nil && ds.InstalledCounter < l.Counter {
			ds.LatestVersion, ds.LatestCounter = l.Version, l.Counter
			for _, c := range counters[ds.Model] {
				if c > ds.InstalledCounter {
					ds.ReleasesBehind++
				}
			}
			rep.Truncated = appendBounded(&rep.Behind, ds) || rep.Truncated
		}
		seen := ds.EnrolledAt
		if ds.LastAttestationAt.After(seen) {
			seen = ds.LastAttestationAt
		}
		if !seen.After(staleBefore) {
			rep.Truncated = appendBounded(&rep.Stale, ds) || rep.Truncated
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading devices: %w", err)
	}
	rows.Close()
	if err := d.reportRevoked(ctx, rep); err != nil {
		return nil, err
	}

	// Time to patch: first committed attestation of each device per release.
	where, args = `WHERE a.outcome = ?`, []any{"committed"}
	if model != "" {
		where, args = where+` AND d.model = ?`, append(args, model)
	}
	trows, err := d.db.QueryContext(ctx, d.q(`SELECT d.model, d.status, a.counter, MIN(a.received_at) FROM attestations a JOIN devices d ON d.id = a.device_id `+where+` GROUP BY a.device_id, d.model, d.status, a.counter`), args...)
	if err != nil {
		return nil, fmt.Errorf("reading attestations: %w", err)
	}
	defer trows.Close()
	ttp := map[*ReleaseStatus][]float64{}
	var patchedAt []time.Time // active devices' first commit of their model's latest release
	for trows.Next() {
		var k key
		var status string
		var first int64
		if err := trows.Scan(&k.model, &status, &k.counter, &first); err != nil {
			return nil, fmt.Errorf("reading attestations: %w", err)
		}
		rs := byKey[k]
		if rs == nil {
			continue
		}
		rs.Committed++
		ttp[rs] = append(ttp[rs], math.Max(0, fromTS(first).Sub(rs.PublishedAt).Seconds()))
		if rs.Latest && status == DeviceActive {
			patchedAt = append(patchedAt, fromTS(first))
		}
	}
	if err := trows.Err(); err != nil {
		return nil, fmt.Errorf("reading attestations: %w", err)
	}
	for rs, ds := range ttp {
		rs.TimeToPatch = percentiles(ds)
	}
	rep.Coverage = coverage(now, patchedAt)
	return rep, nil
}

// coverage counts, for each of the last CoverageDays days, the times at
// or before that day's end (today: now).
func coverage(now time.Time, at []time.Time) []CoveragePoint {
	slices.SortFunc(at, func(a, b time.Time) int { return a.Compare(b) })
	today := now.UTC().Truncate(24 * time.Hour)
	pts := make([]CoveragePoint, 0, CoverageDays)
	n := 0
	for i := CoverageDays - 1; i >= 0; i-- {
		end := today.Add(-time.Duration(i-1) * 24 * time.Hour).Add(-time.Nanosecond)
		if i == 0 {
			end = now
		}
		for n < len(at) && !at[n].After(end) {
			n++
		}
		pts = append(pts, CoveragePoint{Day: end, Patched: n})
	}
	return pts
}

// CoverageOf is FleetReport.Coverage for the given first commits of the
// latest releases: how many happened by the end of each of the last
// CoverageDays days (for a report computed elsewhere, pkg/logreport).
func CoverageOf(now time.Time, at []time.Time) []CoveragePoint { return coverage(now, at) }

// PercentilesOf is the report's nearest-rank percentiles of v (seconds);
// nil for none. It sorts v.
func PercentilesOf(v []float64) *Percentiles { return percentiles(v) }

// reportRevoked fills the report's revoked devices.
func (d *DB) reportRevoked(ctx context.Context, rep *FleetReport) error {
	where, args := `WHERE status = ?`, []any{DeviceRevoked}
	if rep.Model != "" {
		where, args = where+` AND model = ?`, append(args, rep.Model)
	}
	rows, err := d.db.QueryContext(ctx, d.q(`SELECT id, serial, model, installed_version, installed_counter, last_attestation_at, enrolled_at FROM devices `+where+` ORDER BY model, serial`), args...)
	if err != nil {
		return fmt.Errorf("reading revoked devices: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var ds DeviceStatus
		var last, enrolled int64
		if err := rows.Scan(&ds.ID, &ds.Serial, &ds.Model, &ds.InstalledVersion, &ds.InstalledCounter, &last, &enrolled); err != nil {
			return fmt.Errorf("reading revoked devices: %w", err)
		}
		ds.LastAttestationAt, ds.EnrolledAt = fromTS(last), fromTS(enrolled)
		rep.RevokedCount++
		rep.Truncated = appendBounded(&rep.Revoked, ds) || rep.Truncated
	}
	return rows.Err()
}

func appendBounded(list *[]DeviceStatus, ds DeviceStatus) (truncated bool) {
	if len(*list) >= MaxReportDevices {
		return true
	}
	*list = append(*list, ds)
	return false
}

// percentiles uses the nearest-rank method.
func percentiles(v []float64) *Percentiles {
	if len(v) == 0 {
		return nil
	}
	slices.Sort(v)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p/100*float64(len(v)))) - 1
		return v[min(max(i, 0), len(v)-1)]
	}
	return &Percentiles{P50: rank(50), P90: rank(90), P99: rank(99), Max: v[len(v)-1]}
}
