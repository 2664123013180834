package storetest

import (
	"cmp"
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// SeedFleet writes a synthetic fleet into a store with multi-row INSERTs in
// large transactions, for benchmarks and scale tests at fleet size
// (enrolling 100,000 devices through the CA would take hours). The fleet
// is deterministic for a spec and shaped like a real one:
//
//   - devices spread over the store's models (weights 8:4:2:1...), enrolled
//     over the last 400 days by admin token or factory station; 0.5 %
//     revoked, 0.1 % with clone attempts (a third of them re-provisioned
//     since), 2 % that never attested;
//   - the models' releases (created beforehand, through the API: they are
//     signed into the TUF repository) are re-dated as published 15 days
//     apart, the latest 20 days ago; each device's attestations are
//     install attempts at increasing times, each of the newest release
//     published by then (90 % committed, 10 % rolled back), so most
//     devices are on the latest release or one behind and 3 % went silent
//     more than 30 days ago;
//   - every device has the certificates an enrollment and a renewal every
//     60 days issue (older ones revoked as superseded), its refusals, and
//     envelopes of a real attestation's size (1.3 KB; shaped like one, not
//     signed);
//   - attestations are inserted in time order, so their ids interleave
//     devices as a real fleet's do, each batch through spec.Append when set
//     (the transparency log), so leaf indices are real.
//
// The caller creates models and releases first; SeedFleet reads them.
func SeedFleet(ctx context.Context, db *store.DB, spec FleetSpec) (*Fleet, error) {
	if spec.Devices <= 0 || spec.Attestations < 0 {
		return nil, fmt.Errorf("seed: want devices > 0 and attestations >= 0, got %d and %d", spec.Devices, spec.Attestations)
	}
	if spec.Now.IsZero() {
		spec.Now = time.Now().UTC()
	}
	g := &gen{spec: spec, db: db, fleet: &Fleet{Installed: map[string]map[int64]int{}}}
	if err := g.loadReleases(ctx); err != nil {
		return nil, err
	}
	g.plan()
	if err := g.writeDevices(ctx); err != nil {
		return nil, err
	}
	if err := g.writeAttestations(ctx); err != nil {
		return nil, err
	}
	return g.fleet, nil
}

// FleetSpec sizes a synthetic fleet.
type FleetSpec struct {
	Devices      int
	Attestations int // in total; spread over the devices that attest
	// Now is the fleet's present (default time.Now()).
	Now time.Time
	// Append, when set, appends leaves to the transparency log and runs
	// insert in the append's transaction with the first leaf's index
	// (tlog.Log.AppendWith). Without it attestations have leaf index -1.
	Append func(ctx context.Context, leaves [][]byte, insert func(ctx context.Context, tx *sql.Tx, first int64) error) error
}

// Fleet is what SeedFleet wrote: the figures pages are checked against.
type Fleet struct {
	IDs          []string // every device's URN, in seed order
	Active       int
	Revoked      int
	Cloned       []string // devices with clone-attempt refusals, sorted
	Reprovisions int      // certificates issued by a re-provisioning
	Attestations int
	Certificates int
	// Installed counts active devices by model and installed release
	// counter (0: nothing installed yet).
	Installed map[string]map[int64]int
	// Latest is each model's latest release counter.
	Latest map[string]int64
	// LastSeen is each active device's latest sign of life (enrollment or
	// attestation), for orphan counts.
	LastSeen []time.Time
}

// Silent counts the active devices not seen for days or more.
func (f *Fleet) Silent(now time.Time, days int) int {
	before := now.Add(-time.Duration(days) * 24 * time.Hour)
	n := 0
	for _, t := range f.LastSeen {
		if !t.After(before) {
			n++
		}
	}
	return n
}

// Behind counts the active devices not on their model's latest release.
func (f *Fleet) Behind() int {
	n := 0
	for m, byCounter := range f.Installed {
		for c, k := range byCounter {
			if c < f.Latest[m] {
				n += k
			}
		}
	}
	return n
}

const (
	day          = 24 * time.Hour
	certValidity = 90 * day
	renewEvery   = 60 * day
)

type seedRelease struct {
	store.Release
	publishedAt time.Time
}

type seedDevice struct {
	id, serial, model string
	enrolledAt        time.Time
	revokedAt         time.Time
	cloneAttempts     int
	reprovisionedAt   time.Time
	attests           int // how many attestations
	lastAt            time.Time
	via               string
}

type seedEvent struct {
	dev     int32
	seq     int32
	rel     int16 // index into the model's releases
	outcome string
	at      time.Time
}

type gen struct {
	spec     FleetSpec
	db       *store.DB
	fleet    *Fleet
	models   []string
	releases map[string][]seedRelease // ascending counter
	devices  []seedDevice
	events   []seedEvent
	// final state of each device, from its events
	installed []int       // release index, -1 none
	since     []time.Time // when it first committed that release
	lastSeq   []int32
	lastAtt   []time.Time
}

func (g *gen) loadReleases(ctx context.Context) error {
	rels, err := g.db.ListReleases(ctx, "")
	if err != nil {
		return err
	}
	g.releases = map[string][]seedRelease{}
	g.fleet.Latest = map[string]int64{}
	for _, r := range rels {
		g.releases[r.Model] = append(g.releases[r.Model], seedRelease{Release: r})
	}
	for m, rs := range g.releases {
		slices.SortFunc(rs, func(a, b seedRelease) int { return cmp.Compare(a.Counter, b.Counter) })
		n := len(rs)
		for i := range rs {
			rs[i].publishedAt = g.spec.Now.Add(-(20*day + time.Duration(n-1-i)*15*day))
			if _, err := g.db.SQL().ExecContext(ctx, g.db.Rebind(`UPDATE releases SET created_at = ? WHERE id = ?`), rs[i].publishedAt.UnixNano(), rs[i].ID); err != nil {
				return fmt.Errorf("seed: dating release %s: %w", rs[i].TargetPath, err)
			}
		}
		g.models = append(g.models, m)
		g.fleet.Latest[m] = rs[n-1].Counter
	}
	if len(g.models) == 0 {
		return fmt.Errorf("seed: the store has no release; create models and releases first")
	}
	slices.Sort(g.models)
	return nil
}

// plan draws every device and its events.
func (g *gen) plan() {
	n := g.spec.Devices
	rng := rand.New(rand.NewPCG(20261206, uint64(n)))
	weights := make([]int, len(g.models))
	total := 0
	for i := range weights {
		weights[i] = 1 << max(0, 3-i)
		total += weights[i]
	}
	silentAt := func() time.Time { return g.spec.Now.Add(-time.Duration(31+rng.IntN(90)) * day) }
	// Devices that attest, and how often: the total spread evenly.
	attesting := n - n/50
	g.devices = make([]seedDevice, n)
	for i := range n {
		w := rng.IntN(total)
		mi := 0
		for ; w >= weights[mi]; mi++ {
			w -= weights[mi]
		}
		d := seedDevice{serial: fmt.Sprintf("SN-%07d", i), model: g.models[mi], via: "token"}
		if i%10 < 3 {
			d.via = "station:line-1"
		}
		d.id = identity.Device(d.model, d.serial).URI()
		d.enrolledAt = g.spec.Now.Add(-time.Duration(20+rng.IntN(380))*day - time.Duration(rng.IntN(86400))*time.Second)
		if i < attesting {
			d.attests = g.spec.Attestations / attesting
			if i < g.spec.Attestations%attesting {
				d.attests++
			}
		}
		// The last sign of life: 3 % silent for 31-120 days, the rest within 30.
		d.lastAt = g.spec.Now.Add(-time.Duration(rng.IntN(30*86400)) * time.Second)
		if rng.IntN(100) < 3 {
			d.lastAt = silentAt()
		}
		if d.lastAt.Before(d.enrolledAt) {
			d.lastAt = d.enrolledAt
		}
		if d.attests == 0 {
			d.lastAt = d.enrolledAt
		}
		switch {
		case i%200 == 7:
			d.revokedAt = d.lastAt.Add(time.Hour)
		case i%1000 == 11:
			d.cloneAttempts = 1 + rng.IntN(3)
			if i%3000 == 11 {
				d.reprovisionedAt = d.lastAt.Add(-time.Duration(1+rng.IntN(5)) * day)
				if d.reprovisionedAt.Before(d.enrolledAt) {
					d.reprovisionedAt = d.enrolledAt.Add(time.Hour)
				}
			}
		}
		g.devices[i] = d
	}
	// Events: install attempts at increasing times between enrollment and
	// the last sign of life, each of the release current at that time.
	g.installed = make([]int, n)
	g.since = make([]time.Time, n)
	g.lastSeq = make([]int32, n)
	g.lastAtt = make([]time.Time, n)
	g.events = make([]seedEvent, 0, g.spec.Attestations)
	for i := range g.devices {
		d := &g.devices[i]
		rels := g.releases[d.model]
		g.installed[i] = -1
		if d.attests == 0 {
			continue
		}
		span := d.lastAt.Sub(d.enrolledAt)
		times := make([]time.Time, d.attests)
		for k := range times {
			times[k] = d.enrolledAt.Add(time.Duration(rng.Int64N(int64(span) + 1)))
		}
		times[len(times)-1] = d.lastAt
		slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
		for k, at := range times {
			cur := 0
			for r := range rels {
				if !rels[r].publishedAt.After(at) {
					cur = r
				}
			}
			outcome := "committed"
			if cur > g.installed[i] && rng.IntN(10) == 0 {
				outcome = "rolled-back"
			}
			if outcome == "committed" && cur > g.installed[i] {
				g.installed[i], g.since[i] = cur, at
			}
			g.events = append(g.events, seedEvent{dev: int32(i), seq: int32(k + 1), rel: int16(cur), outcome: outcome, at: at})
		}
		g.lastSeq[i] = int32(d.attests)
		g.lastAtt[i] = d.lastAt
	}
	slices.SortStableFunc(g.events, func(a, b seedEvent) int { return a.at.Compare(b.at) })
}

// certificate serials and keys are hashes of the device and a counter.
func hexOf(parts ...any) string {
	h := sha256.Sum256(fmt.Append(nil, parts...))
	return hex.EncodeToString(h[:])
}

// certPEM is a device chain's size (device certificate and intermediate).
var certPEM = "-----BEGIN CERTIFICATE-----\n" + strings.Repeat(strings.Repeat("A", 64)+"\n", 20) + "-----END CERTIFICATE-----\n" +
	"-----BEGIN CERTIFICATE-----\n" + strings.Repeat(strings.Repeat("B", 64)+"\n", 10) + "-----END CERTIFICATE-----\n"

type seedCert struct {
	serial, key, via, reason string
	issued, revoked          time.Time
	code                     int
}

// certs are the certificates issued to device i, oldest first: its
// enrollment, a renewal every 60 days (each superseding the one before)
// and a re-provisioning (superseding all before it, with a new key).
func (g *gen) certs(i int) []seedCert {
	d := g.devices[i]
	type issuance struct {
		at  time.Time
		via string
	}
	is := []issuance{{d.enrolledAt, d.via}}
	end := g.spec.Now
	if !d.revokedAt.IsZero() {
		end = d.revokedAt
	}
	for at := d.enrolledAt.Add(renewEvery); at.Before(end); at = at.Add(renewEvery) {
		via := "renew"
		if len(is)%7 == 3 {
			via = "renew-expired"
		}
		is = append(is, issuance{at, via})
	}
	if !d.reprovisionedAt.IsZero() {
		is = append(is, issuance{d.reprovisionedAt, "reprovision:token"})
		slices.SortStableFunc(is, func(a, b issuance) int { return a.at.Compare(b.at) })
	}
	key := hexOf("key", d.id)
	var out []seedCert
	for _, x := range is {
		reason := "superseded by renewal"
		if strings.HasPrefix(x.via, "reprovision:") {
			reason, key = "superseded by re-provisioning", hexOf("key", d.id, "reprovisioned")
		}
		for k := range out {
			if out[k].revoked.IsZero() {
				out[k].revoked, out[k].code, out[k].reason = x.at, store.ReasonSuperseded, reason
			}
		}
		out = append(out, seedCert{serial: hexOf("cert", d.id, len(out))[:32], key: key, via: x.via, issued: x.at})
	}
	if !d.revokedAt.IsZero() {
		for k := range out {
			if out[k].revoked.IsZero() {
				out[k].revoked, out[k].code, out[k].reason = d.revokedAt, 1, "keyCompromise"
			}
		}
	}
	return out
}

// bulk inserts rows of cols into table, as many per statement as fit.
func (g *gen) bulk(ctx context.Context, tx *sql.Tx, table string, cols []string, rows [][]any) error {
	per := max(1, 30000/len(cols))
	for len(rows) > 0 {
		n := min(per, len(rows))
		var q strings.Builder
		q.WriteString("INSERT INTO " + table + " (" + strings.Join(cols, ", ") + ") VALUES ")
		row := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
		args := make([]any, 0, n*len(cols))
		for k := range n {
			if k > 0 {
				q.WriteString(", ")
			}
			q.WriteString(row)
			args = append(args, rows[k]...)
		}
		if _, err := tx.ExecContext(ctx, g.db.Rebind(q.String()), args...); err != nil {
			return fmt.Errorf("seed: inserting into %s: %w", table, err)
		}
		rows = rows[n:]
	}
	return nil
}

func ts(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

var deviceSeedCols = []string{"id", "serial", "model", "status", "cert_serial", "cert_not_after", "cert_pem", "enrolled_at",
	"installed_version", "installed_target", "installed_counter", "last_attestation_at", "last_sequence",
	"key_sha256", "reprovision_at", "reprovision_by", "revoked_at", "revoke_reason", "replaced_cert_serial", "hardware_id", "installed_at", "seen_day"}

var certSeedCols = []string{"serial", "subject", "key_sha256", "not_before", "not_after", "issued_at", "issued_via", "issued_by",
	"revoked_at", "revoke_reason_code", "revoke_reason"}

var refusalSeedCols = []string{"device_id", "reason", "key_sha256", "via", "at"}

// writeDevices writes devices, their certificates and refusals, 2,000
// devices a transaction.
func (g *gen) writeDevices(ctx context.Context) error {
	const per = 2000
	f := g.fleet
	for start := 0; start < len(g.devices); start += per {
		var devs, certs, refusals [][]any
		for i := start; i < min(start+per, len(g.devices)); i++ {
			d := g.devices[i]
			f.IDs = append(f.IDs, d.id)
			cs := g.certs(i)
			cur := cs[len(cs)-1]
			for _, c := range cs {
				certs = append(certs, []any{c.serial, d.id, c.key, ts(c.issued), ts(c.issued.Add(certValidity)), ts(c.issued), c.via, "", ts(c.revoked), c.code, c.reason})
				if strings.HasPrefix(c.via, "reprovision:") {
					f.Reprovisions++
				}
			}
			f.Certificates += len(cs)
			status, version, target, counter := store.DeviceActive, "", "", int64(0)
			if r := g.installed[i]; r >= 0 {
				rel := g.releases[d.model][r]
				version, target, counter = rel.Version, rel.TargetPath, rel.Counter
			}
			if !d.revokedAt.IsZero() {
				status = store.DeviceRevoked
				f.Revoked++
			} else {
				f.Active++
				if f.Installed[d.model] == nil {
					f.Installed[d.model] = map[int64]int{}
				}
				f.Installed[d.model][counter]++
				seen := d.enrolledAt
				if g.lastAtt[i].After(seen) {
					seen = g.lastAtt[i]
				}
				f.LastSeen = append(f.LastSeen, seen)
			}
			reason := ""
			if status == store.DeviceRevoked {
				reason = "keyCompromise"
			}
			devs = append(devs, []any{d.id, d.serial, d.model, status, cur.serial, ts(cur.issued.Add(certValidity)), certPEM, ts(d.enrolledAt),
				version, target, counter, ts(g.lastAtt[i]), int64(g.lastSeq[i]),
				cur.key, int64(0), "", ts(d.revokedAt), reason, "", "", ts(g.since[i]), ts(maxTime(d.enrolledAt, g.lastAtt[i])) / int64(day)})
			for k := range d.cloneAttempts {
				at := d.enrolledAt.Add(time.Duration(k+1) * 7 * day)
				refusals = append(refusals, []any{d.id, "clone: enrollment with a different key", hexOf("clone", d.id, k), "station:line-1", ts(at)})
			}
			if d.cloneAttempts > 0 {
				f.Cloned = append(f.Cloned, d.id)
			}
			if status == store.DeviceRevoked && i%2 == 1 {
				refusals = append(refusals, []any{d.id, "enrollment of a revoked device", hexOf("again", d.id), "token", ts(d.revokedAt.Add(day))})
			}
		}
		err := g.tx(ctx, func(tx *sql.Tx) error {
			if err := g.bulk(ctx, tx, "devices", deviceSeedCols, devs); err != nil {
				return err
			}
			if err := g.bulk(ctx, tx, "certificates", certSeedCols, certs); err != nil {
				return err
			}
			return g.bulk(ctx, tx, "device_refusals", refusalSeedCols, refusals)
		})
		if err != nil {
			return err
		}
	}
	slices.Sort(f.Cloned)
	return nil
}

func (g *gen) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := g.db.SQL().BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

var attestationSeedCols = []string{"device_id", "sequence", "outcome", "target_path", "sha256", "version", "counter", "envelope", "received_at", "leaf_index", "cert_serial"}

// envelope is shaped and sized like a device's DSSE envelope (not signed).
func (g *gen) envelope(e seedEvent, rel seedRelease) string {
	d := g.devices[e.dev]
	payload := fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v1","subject":[{"name":%q,"digest":{"sha256":%q}}],"predicateType":"https://foster-ota.dev/attestation/install/v1","predicate":{"device":%q,"new":{"name":%q,"sha256":%q,"length":%d,"version":%q,"release_counter":%d},"targets_version":%d,"snapshot_version":%d,"outcome":%q,"boot_counter":%d,"sequence":%d,"time":%q}}`,
		rel.TargetPath, rel.SHA256, d.id, rel.TargetPath, rel.SHA256, rel.Length, rel.Version, rel.Counter, rel.Counter+3, rel.Counter+9, e.outcome, e.seq, e.seq, e.at.Format(time.RFC3339Nano))
	sig := base64.StdEncoding.EncodeToString([]byte(hexOf("sig", d.id, e.seq)[:54]))
	return fmt.Sprintf(`{"payloadType":"application/vnd.in-toto+json","payload":%q,"signatures":[{"keyid":%q,"sig":%q}]}`,
		base64.StdEncoding.EncodeToString([]byte(payload)), hexOf("keyid", d.id), sig)
}

// writeAttestations writes the events in time order, 1,000 a transaction
// (the log's most per append).
func (g *gen) writeAttestations(ctx context.Context) error {
	const per = 1000
	for start := 0; start < len(g.events); start += per {
		batch := g.events[start:min(start+per, len(g.events))]
		rows := make([][]any, len(batch))
		leaves := make([][]byte, len(batch))
		for k, e := range batch {
			d := g.devices[e.dev]
			rel := g.releases[d.model][e.rel]
			env := g.envelope(e, rel)
			h := sha256.Sum256([]byte(env))
			leaves[k] = fmt.Appendf(nil, "foster seed leaf %s %d %x", d.id, e.seq, h)
			rows[k] = []any{d.id, int64(e.seq), e.outcome, rel.TargetPath, rel.SHA256, rel.Version, rel.Counter, env, ts(e.at), int64(-1), hexOf("cert", d.id, 0)[:32]}
		}
		insert := func(ctx context.Context, tx *sql.Tx, first int64) error {
			if first >= 0 {
				for k := range rows {
					rows[k][9] = first + int64(k)
				}
			}
			return g.bulk(ctx, tx, "attestations", attestationSeedCols, rows)
		}
		var err error
		if g.spec.Append != nil {
			err = g.spec.Append(ctx, leaves, insert)
		} else {
			err = g.tx(ctx, func(tx *sql.Tx) error { return insert(ctx, tx, -1) })
		}
		if err != nil {
			return fmt.Errorf("seed: attestations %d..%d: %w", start, start+len(batch), err)
		}
		g.fleet.Attestations += len(batch)
	}
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
