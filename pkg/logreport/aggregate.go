package logreport

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/store"
)

// Report is the fleet report rebuilt from evidence. Its embedded
// store.FleetReport has the database report's fields and meanings, except
// where Differences says otherwise; the rest is what only this report has.
type Report struct {
	store.FleetReport
	// UnsignedReleases are releases devices attested committing that the
	// current signed metadata does not list (revoked or removed since, or
	// listed with another digest).
	UnsignedReleases []UnsignedRelease `json:"unsigned_releases"`
	// Unknown lists the expected devices (Options.Expected) with no log
	// entry: their state is unknown, not patched. UnknownCount counts them.
	Unknown      []string `json:"unknown"`
	UnknownCount int      `json:"unknown_count"`
	// Evidence is what the report was verified from.
	Evidence Evidence `json:"evidence"`
	// Differences states how this report differs from the database's.
	Differences []string `json:"differences"`
}

// UnsignedRelease is a release attested but not (or not so) signed now.
type UnsignedRelease struct {
	store.ReleaseStatus
	Reason string `json:"reason"`
}

// Evidence names what a report was verified from.
type Evidence struct {
	Source    string `json:"source"`
	LogOrigin string `json:"log_origin"`
	// TreeSize and RootHash (hex) are the verified checkpoint's; Checkpoint
	// is the signed note itself.
	TreeSize   int64  `json:"tree_size"`
	RootHash   string `json:"root_hash"`
	Checkpoint string `json:"checkpoint"`
	// Extends is the kept checkpoint the log was proven to extend.
	Extends         *KeptCheckpoint `json:"extends,omitempty"`
	EntriesVerified int64           `json:"entries_verified"`
	DevicesSeen     int             `json:"devices_seen"`
	TUF             TUFVersions     `json:"tuf"`
}

// KeptCheckpoint is a checkpoint verified before, which the log extends.
type KeptCheckpoint struct {
	Size     int64  `json:"tree_size"`
	RootHash string `json:"root_hash"`
}

// TUFVersions are the versions of the verified TUF metadata and the time
// their expiry was judged at.
type TUFVersions struct {
	Root      int64     `json:"root_version"`
	Timestamp int64     `json:"timestamp_version"`
	Snapshot  int64     `json:"snapshot_version"`
	Targets   int64     `json:"targets_version"`
	CheckedAt time.Time `json:"checked_at"`
}

// Differences from the database report, stated in every report.
var Differences = []string{
	"devices that never attested are not in the log: they are absent from every list and count (unknown, never patched); give the devices you expect (--devices) to list them as unknown",
	"revocations are not in the log: revoked devices are counted like the others (revoked is null, not empty)",
	"enrollment is not in the log: orphan candidates are devices whose last log entry is older than the stale days, whatever their enrollment date (enrolled_at is not known)",
	"releases are those the current signed TUF metadata lists: a revoked release is no longer signed and appears under unsigned_releases if devices committed it",
	"time to patch runs from the signed publication time (published_at in the target's custom metadata, whole seconds) to the device's first committed entry's integrated time (whole seconds); releases signed without published_at have none",
	"active counts the devices that have at least one entry (of the model)",
}

// aggregate folds verified entries, in log order, into per-device state.
// Memory: one devState per device seen (of every model: the sequence
// rule holds for all).
type aggregate struct {
	devices  map[string]*devState
	strs     map[string]string // interned model names, versions, targets
	unsigned map[relKey]*unsignedInfo
}

type relKey struct {
	model   string
	counter int64
}

type unsignedInfo struct {
	version, target, reason string
}

type devState struct {
	model, serial string
	lastSeq       int64
	lastAt        int64
	// The last committed install (counter 0: none seen).
	counter         int64
	version, target string
	// firsts: the first committed entry of each release counter.
	firsts []firstCommit
}

type firstCommit struct{ counter, at int64 }

func newAggregate(opt Options, _ *TUFView) *aggregate {
	return &aggregate{devices: map[string]*devState{}, strs: map[string]string{}, unsigned: map[relKey]*unsignedInfo{}}
}

func (a *aggregate) intern(s string) string {
	if v, ok := a.strs[s]; ok {
		return v
	}
	if len(a.strs) < 1<<16 {
		a.strs[s] = s
	}
	return s
}

// add folds entry idx in (entries come in index order).
func (a *aggregate) add(idx int64, it *item) error {
	d := a.devices[it.device]
	if d == nil {
		d = &devState{model: a.intern(it.model), serial: it.serial}
		a.devices[it.device] = d
	}
	if it.sequence <= d.lastSeq {
		return fmt.Errorf("%w: entry %d is attestation %d of %s, after its attestation %d: fosterd accepts only increasing sequence numbers", ErrReplay, idx, it.sequence, it.device, d.lastSeq)
	}
	d.lastSeq, d.lastAt = it.sequence, it.at
	if it.outcome != attest.OutcomeCommitted {
		return nil
	}
	if !it.signed {
		k := relKey{d.model, it.counter}
		if _, ok := a.unsigned[k]; !ok {
			reason := "not in the current signed metadata (revoked or removed)"
			if it.target != "" {
				reason = fmt.Sprintf("%s is not in the current signed metadata for %s (revoked or removed), or is signed with another digest", it.target, d.model)
			}
			a.unsigned[k] = &unsignedInfo{version: it.version, target: it.target, reason: reason}
		}
	}
	d.counter, d.version, d.target = it.counter, a.intern(it.version), a.intern(it.target)
	for _, f := range d.firsts {
		if f.counter == it.counter {
			return nil
		}
	}
	d.firsts = append(d.firsts, firstCommit{it.counter, it.at})
	return nil
}

// report computes the report, as store.DB.FleetReport does from its tables.
func (a *aggregate) report(opt Options, view *TUFView) *Report {
	now := opt.Now.UTC()
	rep := &Report{
		FleetReport: store.FleetReport{GeneratedAt: now, Model: opt.Model, StaleDays: opt.StaleDays,
			Releases: []store.ReleaseStatus{}, Behind: []store.DeviceStatus{}, Stale: []store.DeviceStatus{}, Coverage: []store.CoveragePoint{}},
		UnsignedReleases: []UnsignedRelease{}, Unknown: []string{}, Differences: Differences,
	}
	byKey := map[relKey]*store.ReleaseStatus{}
	latest := map[string]*store.ReleaseStatus{}
	counters := map[string][]int64{}
	var models []string
	for m := range view.Releases {
		if opt.Model == "" || m == opt.Model {
			models = append(models, m)
		}
	}
	slices.Sort(models)
	for _, m := range models {
		for _, r := range view.Releases[m] {
			rep.Releases = append(rep.Releases, store.ReleaseStatus{Model: r.Model, Version: r.Version, Counter: r.Counter, Target: r.Target, PublishedAt: r.PublishedAt, Devices: []string{}})
			counters[m] = append(counters[m], r.Counter)
		}
	}
	for i := range rep.Releases {
		rs := &rep.Releases[i]
		byKey[relKey{rs.Model, rs.Counter}] = rs
		latest[rs.Model] = rs // ascending: the last one wins
	}
	for _, rs := range latest {
		rs.Latest = true
	}
	unsignedAt := map[relKey]int{}
	unsignedStatus := func(k relKey) *store.ReleaseStatus {
		i, ok := unsignedAt[k]
		if !ok {
			u := a.unsigned[k]
			if u == nil {
				u = &unsignedInfo{reason: "not in the current signed metadata (revoked or removed)"}
			}
			rep.UnsignedReleases = append(rep.UnsignedReleases, UnsignedRelease{
				ReleaseStatus: store.ReleaseStatus{Model: k.model, Version: u.version, Counter: k.counter, Target: u.target, Devices: []string{}},
				Reason:        u.reason})
			i = len(rep.UnsignedReleases) - 1
			unsignedAt[k] = i
		}
		return &rep.UnsignedReleases[i].ReleaseStatus
	}

	ids := make([]string, 0, len(a.devices))
	for id, d := range a.devices {
		if opt.Model == "" || d.model == opt.Model {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, func(x, y string) int {
		dx, dy := a.devices[x], a.devices[y]
		return cmp.Or(strings.Compare(dx.model, dy.model), strings.Compare(dx.serial, dy.serial))
	})
	staleBefore := now.Add(-time.Duration(opt.StaleDays) * 24 * time.Hour)
	ttp := map[*store.ReleaseStatus][]float64{}
	var patchedAt []time.Time
	for _, id := range ids {
		d := a.devices[id]
		rep.Active++
		ds := store.DeviceStatus{ID: id, Model: d.model, Serial: d.serial, InstalledVersion: d.version, InstalledCounter: d.counter,
			LastAttestationAt: time.Unix(d.lastAt, 0).UTC()}
		if d.counter != 0 {
			rs := byKey[relKey{d.model, d.counter}]
			if rs == nil {
				rs = unsignedStatus(relKey{d.model, d.counter})
			}
			rs.Installed++
			if len(rs.Devices) < store.MaxReportDevices {
				rs.Devices = append(rs.Devices, id)
			} else {
				rep.Truncated = true
			}
		}
		if l := latest[d.model]; l != nil && d.counter < l.Counter {
			ds.LatestVersion, ds.LatestCounter = l.Version, l.Counter
			for _, c := range counters[d.model] {
				if c > d.counter {
					ds.ReleasesBehind++
				}
			}
			rep.Truncated = appendBounded(&rep.Behind, ds) || rep.Truncated
		}
		if !ds.LastAttestationAt.After(staleBefore) {
			rep.Truncated = appendBounded(&rep.Stale, ds) || rep.Truncated
		}
		for _, f := range d.firsts {
			k := relKey{d.model, f.counter}
			rs := byKey[k]
			if rs == nil {
				unsignedStatus(k).Committed++
				continue
			}
			rs.Committed++
			at := time.Unix(f.at, 0).UTC()
			if !rs.PublishedAt.IsZero() {
				ttp[rs] = append(ttp[rs], math.Max(0, at.Sub(rs.PublishedAt).Seconds()))
			}
			if rs.Latest {
				patchedAt = append(patchedAt, at)
			}
		}
	}
	for rs, v := range ttp {
		rs.TimeToPatch = store.PercentilesOf(v)
	}
	rep.Coverage = store.CoverageOf(now, patchedAt)
	slices.SortFunc(rep.UnsignedReleases, func(x, y UnsignedRelease) int {
		return cmp.Or(strings.Compare(x.Model, y.Model), cmp.Compare(x.Counter, y.Counter))
	})

	for _, urn := range opt.Expected {
		if _, ok := a.devices[urn]; ok {
			continue
		}
		if opt.Model != "" && !strings.HasPrefix(urn, "urn:foster:device:"+opt.Model+":") {
			continue
		}
		rep.UnknownCount++
		if len(rep.Unknown) < store.MaxReportDevices {
			rep.Unknown = append(rep.Unknown, urn)
		} else {
			rep.Truncated = true
		}
	}
	return rep
}

func appendBounded(list *[]store.DeviceStatus, ds store.DeviceStatus) (truncated bool) {
	if len(*list) >= store.MaxReportDevices {
		return true
	}
	*list = append(*list, ds)
	return false
}
