package e2e

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/foster-ota/foster/pkg/logreport"
	"github.com/foster-ota/foster/pkg/store"
)

// TestAuditReportFromLogAgreesWithTheDatabase: devices enroll, install two
// releases and attest through a real fosterd; the auditor's report rebuilt
// from the log alone (online with an auditor credential, then offline from
// an export with fosterd stopped) agrees with the database's report,
// except where docs/ATTESTATIONS.md says it must differ: a device that
// never attested is unknown rather than behind, and a revoked device still
// counts.
func TestAuditReportFromLogAgreesWithTheDatabase(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	fw1, _ := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw1)
	devs := map[string]*Device{}
	run := func(serials ...string) {
		t.Helper()
		for _, sn := range serials {
			d := devs[sn]
			if d == nil {
				d = env.NewDevice(sn, "edge-gw")
				d.Enroll(env.Token(sn, "edge-gw"))
				devs[sn] = d
			}
			if r := d.RunOnce(); r.Code != 0 {
				t.Fatalf("agent %s: exit %d\n%s", sn, r.Code, r.Stderr)
			}
		}
	}
	run("SN-0001", "SN-0002", "SN-0003", "SN-0004")
	fw2, _ := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.1", fw2)
	run("SN-0001", "SN-0002", "SN-0004")
	// Enrolled, never attested: behind in the database, invisible in the log.
	silent := env.NewDevice("SN-0005", "edge-gw")
	silent.Enroll(env.Token("SN-0005", "edge-gw"))
	// Revoked after attesting: left out by the database, not by the log.
	env.Admin("device", "revoke", "SN-0004", "--reason", "keyCompromise")

	work := t.TempDir()
	auditor := filepath.Join(work, "alice.cred")
	env.Admin("admin", "create", "alice", "--role", "auditor", "--out", auditor)
	anchors := env.anchors()
	roster := filepath.Join(work, "devices.txt")
	var urns []string
	for _, sn := range []string{"SN-0001", "SN-0002", "SN-0003", "SN-0004", "SN-0005"} {
		urns = append(urns, "urn:foster:device:edge-gw:"+sn)
	}
	os.WriteFile(roster, []byte(strings.Join(urns, "\n")+"\n"), 0o644)
	state := filepath.Join(work, "kept.json")

	var db store.FleetReport
	if err := json.Unmarshal([]byte(env.Admin("audit", "report", "--json", "--stale-days", "0").Stdout), &db); err != nil {
		t.Fatal(err)
	}
	fromLog := func(conn []string, args ...string) logreport.Report {
		t.Helper()
		args = append(append(append(conn, "audit", "report", "--from-log", "--json", "--stale-days", "0", "--devices", roster, "--state", state), args...), anchors...)
		r := env.MustRun("foster", args...)
		var rep logreport.Report
		if err := json.Unmarshal([]byte(r.Stdout), &rep); err != nil {
			t.Fatalf("%v\n%s", err, r.Stdout)
		}
		return rep
	}
	online := fromLog([]string{"--cred", auditor})
	if online.Evidence.TreeSize != 7 || online.Evidence.EntriesVerified != 7 || online.Evidence.Extends != nil {
		t.Fatalf("online evidence: %+v", online.Evidence)
	}
	compareWithDatabase(t, &db, &online)

	// Offline: an export, fosterd stopped; the state kept from the online
	// run proves the export extends what the auditor saw.
	export := filepath.Join(work, "export")
	r := env.MustRun("foster", append([]string{"--cred", auditor, "audit", "export-log", "--out", export}, anchors[2:]...)...)
	if !strings.Contains(r.Stdout, "exported 7 entries") {
		t.Fatalf("export-log: %s", r.Stdout)
	}
	env.MustFail("not empty", "foster", append([]string{"--cred", auditor, "audit", "export-log", "--out", export}, anchors[2:]...)...)
	env.stopDaemon()
	offline := fromLog(nil, "--log-dir", export)
	if offline.Evidence.Extends == nil || offline.Evidence.Extends.Size != 7 || offline.Evidence.RootHash != online.Evidence.RootHash {
		t.Fatalf("offline evidence: %+v", offline.Evidence)
	}
	compareWithDatabase(t, &db, &offline)

	// The table names what it could not know.
	table := env.MustRun("foster", append([]string{"audit", "report", "--from-log", "--log-dir", export, "--devices", roster}, anchors...)...).Stdout
	for _, want := range []string{"FROM THE LOG", "7 entries verified", "UNKNOWN (1)", "urn:foster:device:edge-gw:SN-0005", "HOW THIS REPORT DIFFERS", "revocations are not in the log"} {
		if !strings.Contains(table, want) {
			t.Fatalf("table lacks %q:\n%s", want, table)
		}
	}
	// An export missing an entry is refused with the documented code.
	entries := filepath.Join(export, logreport.EntriesFile)
	b, _ := os.ReadFile(entries)
	lines := strings.SplitAfter(string(b), "\n")
	os.WriteFile(entries, []byte(strings.Join(lines[:len(lines)-2], "")), 0o644)
	r = env.Run("foster", append([]string{"audit", "report", "--from-log", "--log-dir", export}, anchors...)...)
	if r.Code != 5 || !strings.Contains(r.Stderr, "not in log") {
		t.Fatalf("edited export: exit %d\n%s", r.Code, r.Stderr)
	}
}

// compareWithDatabase checks the log report against the database report,
// allowing only the documented differences of this scenario: SN-0005
// never attested (unknown in the log, behind in the database) and SN-0004
// is revoked (counted by the log, not by the database).
func compareWithDatabase(t *testing.T, db *store.FleetReport, lg *logreport.Report) {
	t.Helper()
	const revoked, silent = "urn:foster:device:edge-gw:SN-0004", "urn:foster:device:edge-gw:SN-0005"
	if lg.UnknownCount != 1 || lg.Unknown[0] != silent || lg.Revoked != nil || len(lg.UnsignedReleases) != 0 {
		t.Fatalf("unknown %v, revoked %v, unsigned %v", lg.Unknown, lg.Revoked, lg.UnsignedReleases)
	}
	if db.Active != 4 || lg.Active != 4 { // db: 1,2,3,5; log: 1,2,3,4
		t.Fatalf("active: database %d, log %d", db.Active, lg.Active)
	}
	if len(db.Releases) != len(lg.Releases) {
		t.Fatalf("releases: database %d, log %d", len(db.Releases), len(lg.Releases))
	}
	for i, d := range db.Releases {
		l := lg.Releases[i]
		if d.Model != l.Model || d.Version != l.Version || d.Counter != l.Counter || d.Target != l.Target || d.Latest != l.Latest {
			t.Fatalf("release %d: database %+v, log %+v", i, d, l)
		}
		if math.Abs(d.PublishedAt.Sub(l.PublishedAt).Seconds()) >= 1 {
			t.Fatalf("release %s published: database %s, signed %s", d.Version, d.PublishedAt, l.PublishedAt)
		}
		// The revoked device is on the latest release.
		wantInstalled, wantDevices := d.Installed, d.Devices
		if l.Latest {
			wantInstalled, wantDevices = d.Installed+1, append(slices.Clone(d.Devices), revoked)
			slices.Sort(wantDevices)
		}
		if l.Installed != wantInstalled || !slices.Equal(l.Devices, wantDevices) || l.Committed != d.Committed {
			t.Fatalf("release %s: database installed %d %v committed %d; log installed %d %v committed %d",
				d.Version, d.Installed, d.Devices, d.Committed, l.Installed, l.Devices, l.Committed)
		}
		if d.TimeToPatch == nil || l.TimeToPatch == nil {
			t.Fatalf("release %s: time to patch database %v, log %v", d.Version, d.TimeToPatch, l.TimeToPatch)
		}
		// Whole seconds in the log (integrated time, signed publication).
		for _, p := range [][2]float64{{d.TimeToPatch.P50, l.TimeToPatch.P50}, {d.TimeToPatch.Max, l.TimeToPatch.Max}} {
			if math.Abs(p[0]-p[1]) > 2 {
				t.Fatalf("release %s time to patch: database %+v, log %+v", d.Version, d.TimeToPatch, l.TimeToPatch)
			}
		}
	}
	ids := func(ds []store.DeviceStatus) []string {
		var out []string
		for _, d := range ds {
			out = append(out, d.ID)
		}
		return out
	}
	if got, want := ids(lg.Behind), slices.DeleteFunc(ids(db.Behind), func(s string) bool { return s == silent }); !slices.Equal(got, want) {
		t.Fatalf("behind: database %v (less the silent device), log %v", want, got)
	}
	wantStale := append(slices.DeleteFunc(ids(db.Stale), func(s string) bool { return s == silent }), revoked)
	slices.Sort(wantStale)
	if got := ids(lg.Stale); !slices.Equal(got, wantStale) {
		t.Fatalf("stale: database %v (less the silent, plus the revoked device), log %v", wantStale, got)
	}
	for _, b := range lg.Behind {
		if b.ID == "urn:foster:device:edge-gw:SN-0003" && (b.InstalledVersion != "1.0.0" || b.ReleasesBehind != 1) {
			t.Fatalf("behind: %+v", b)
		}
	}
}
