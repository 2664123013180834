package logreport_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/minica"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/logreport"
	"github.com/foster-ota/foster/pkg/logreport/loggen"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

// fixture is a generated log: 2 models, 5 releases each, 24 devices
// attesting 120 times in all (one install in 50 rolled back), and 3
// devices that never attested.
type fixture struct {
	*loggen.Result
	dir string
}

func newFixture(t testing.TB) *fixture {
	t.Helper()
	dir := t.TempDir()
	res, err := loggen.Generate(loggen.Config{Out: dir, Entries: 120, Devices: 24, Models: 2, Releases: 5, Silent: 3})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{Result: res, dir: dir}
}

func (f *fixture) opts(t testing.TB) logreport.Options {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(f.CARootCert)
	roster, err := os.ReadFile(f.Roster)
	if err != nil {
		t.Fatal(err)
	}
	return logreport.Options{CARoots: pool, TUFRoot: f.TUFRootJSON, LogKey: f.LogVerifier, StaleDays: 30,
		Expected: strings.Fields(string(roster))}
}

func (f *fixture) build(t testing.TB, opt logreport.Options) (*logreport.Report, error) {
	t.Helper()
	return logreport.Build(context.Background(), &logreport.DirSource{Dir: f.Export}, opt)
}

// lines and setLines read and rewrite the export's entries.
func (f *fixture) lines(t testing.TB) [][]byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.Export, logreport.EntriesFile))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func (f *fixture) setLines(t testing.TB, lines [][]byte) {
	t.Helper()
	out := append(bytes.Join(lines, []byte("\n")), '\n')
	if err := os.WriteFile(filepath.Join(f.Export, logreport.EntriesFile), out, 0o644); err != nil {
		t.Fatal(err)
	}
}

// setCheckpoint replaces the export's checkpoint; resign replaces it with
// one the log key signs over lines (the operator rewriting history).
func (f *fixture) setCheckpoint(t testing.TB, cp []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.Export, logreport.CheckpointFile), cp, 0o644); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) resign(t testing.TB, lines [][]byte) {
	t.Helper()
	cp, err := loggen.SignCheckpoint(f.LogSigner, int64(len(lines)), loggen.Root(lines))
	if err != nil {
		t.Fatal(err)
	}
	f.setCheckpoint(t, cp)
}

func TestReportFromAGeneratedLog(t *testing.T) {
	f := newFixture(t)
	opt := f.opts(t)
	var progress int64
	opt.Progress = func(done, total int64) { progress = done }
	rep, err := f.build(t, opt)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Evidence.TreeSize != 120 || rep.Evidence.EntriesVerified != 120 || rep.Evidence.DevicesSeen != 24 || rep.Active != 24 || progress != 120 {
		t.Fatalf("evidence: %+v, active %d, progress %d", rep.Evidence, rep.Active, progress)
	}
	if len(rep.Releases) != 10 {
		t.Fatalf("releases: %d, want 10", len(rep.Releases))
	}
	// Each device attested 5 times: releases 1..5, committed, except the
	// rolled-back entries 49 (device 1's 3rd install, retried by its 4th)
	// and 99 (device 3's 5th, so it stays on release 4).
	installed := map[string]int{}
	for _, r := range rep.Releases {
		installed[r.Target] = r.Installed
		if r.Counter == 5 != r.Latest {
			t.Fatalf("release %s latest=%v", r.Target, r.Latest)
		}
		if r.Committed == 0 || r.TimeToPatch == nil || r.PublishedAt.IsZero() {
			t.Fatalf("release %s: committed %d, ttp %v, published %s", r.Target, r.Committed, r.TimeToPatch, r.PublishedAt)
		}
	}
	if installed["model-1/1.0.5/fw.bin"] != 11 || installed["model-1/1.0.4/fw.bin"] != 1 || installed["model-0/1.0.5/fw.bin"] != 12 {
		t.Fatalf("installed: %v", installed)
	}
	if len(rep.Behind) != 1 || rep.Behind[0].ID != "urn:foster:device:model-1:SN-0000003" || rep.Behind[0].ReleasesBehind != 1 {
		t.Fatalf("behind: %+v", rep.Behind)
	}
	if rep.UnknownCount != 3 || len(rep.Unknown) != 3 || len(rep.Stale) != 0 || len(rep.UnsignedReleases) != 0 || rep.Revoked != nil {
		t.Fatalf("unknown %v (%d), stale %d, unsigned %v, revoked %v", rep.Unknown, rep.UnknownCount, len(rep.Stale), rep.UnsignedReleases, rep.Revoked)
	}

	// Forty days on, every device is an orphan candidate; one model only.
	opt.Now, opt.TUFTime, opt.Model = time.Now().Add(40*24*time.Hour), time.Now(), "model-0"
	rep, err = f.build(t, opt)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Stale) != 12 || rep.Active != 12 || len(rep.Releases) != 5 || rep.UnknownCount != 2 {
		t.Fatalf("model-0 forty days on: stale %d, active %d, releases %d, unknown %d", len(rep.Stale), rep.Active, len(rep.Releases), rep.UnknownCount)
	}
}

// editEntry rewrites one leaf through its fields (canonical encoding kept).
func editEntry(t testing.TB, leaf []byte, edit func(e *bundle.Entry)) []byte {
	t.Helper()
	e, err := bundle.ParseEntry(leaf)
	if err != nil {
		t.Fatal(err)
	}
	edit(&e)
	out, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func wantErr(t *testing.T, err, class error, words string) {
	t.Helper()
	if !errors.Is(err, class) || !strings.Contains(err.Error(), words) {
		t.Fatalf("got %v, want %v mentioning %q", err, class, words)
	}
}

func TestReportRefusesAnAlteredAttestation(t *testing.T) {
	f := newFixture(t)
	lines := f.lines(t)
	lines[7] = editEntry(t, lines[7], func(e *bundle.Entry) {
		e.Envelope = bytes.Replace(e.Envelope, []byte(`"payload":"`), []byte(`"payload":"eyJ9`), 1)
	})
	f.setLines(t, lines)
	_, err := f.build(t, f.opts(t))
	wantErr(t, err, bundle.ErrBadSignature, "entry 7")
}

func TestReportRefusesAnEntryWithAlteredIntegratedTime(t *testing.T) {
	f := newFixture(t)
	lines := f.lines(t)
	// The device did not sign the integrated time: only the tree catches it.
	lines[60] = editEntry(t, lines[60], func(e *bundle.Entry) { e.IntegratedTime -= 3600 })
	f.setLines(t, lines)
	_, err := f.build(t, f.opts(t))
	wantErr(t, err, tlogverify.ErrNotInLog, "signed checkpoint says")
}

func TestReportRefusesALogWithARemovedEntry(t *testing.T) {
	f := newFixture(t)
	lines := f.lines(t)
	f.setLines(t, append(lines[:50:50], lines[51:]...))
	_, err := f.build(t, f.opts(t))
	wantErr(t, err, tlogverify.ErrNotInLog, "holds 119 entries, the checkpoint commits to 120")
}

func TestReportRefusesACheckpointWhoseRootDoesNotMatchTheEntries(t *testing.T) {
	f := newFixture(t)
	lines := f.lines(t)
	other := append([][]byte{}, lines...)
	other[0], other[1] = other[1], other[0]
	cp, err := loggen.SignCheckpoint(f.LogSigner, int64(len(lines)), loggen.Root(other))
	if err != nil {
		t.Fatal(err)
	}
	f.setCheckpoint(t, cp)
	_, err = f.build(t, f.opts(t))
	wantErr(t, err, tlogverify.ErrNotInLog, "signed checkpoint says")
}

func TestReportRefusesAForgedCheckpoint(t *testing.T) {
	f := newFixture(t)
	skey, _, err := note.GenerateKey(rand.Reader, loggen.Origin)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := note.NewSigner(skey)
	lines := f.lines(t)
	cp, _ := loggen.SignCheckpoint(s, int64(len(lines)), loggen.Root(lines))
	f.setCheckpoint(t, cp)
	_, err = f.build(t, f.opts(t))
	wantErr(t, err, tlogverify.ErrBadCheckpointSignature, "checkpoint from")
}

// TestReportRefusesHistoryRewrittenSinceAKeptCheckpoint: the operator drops
// an attestation and re-signs the shorter history with the log key; on its
// own the rewritten log is self-consistent, but not with the checkpoint the
// auditor kept from before.
func TestReportRefusesHistoryRewrittenSinceAKeptCheckpoint(t *testing.T) {
	f := newFixture(t)
	lines := f.lines(t)
	keptPrefix, _ := loggen.SignCheckpoint(f.LogSigner, 100, loggen.Root(lines[:100]))
	opt := f.opts(t)

	// Honest growth from a kept checkpoint of 100 entries: accepted.
	opt.Kept = keptPrefix
	rep, err := f.build(t, opt)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Evidence.Extends == nil || rep.Evidence.Extends.Size != 100 {
		t.Fatalf("extends: %+v", rep.Evidence.Extends)
	}

	tests := []struct {
		name  string
		lines [][]byte
		words string
	}{
		{"entry removed, log grown past the kept size", append(append([][]byte{}, lines[:10]...), lines[11:]...), "history was rewritten"},
		{"rolled back below the kept size", lines[:90], "rollback"},
		{"same size, another tree (split view)", append(append([][]byte{}, lines[1:100]...), lines[0]), "history was rewritten"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.setLines(t, tt.lines)
			f.resign(t, tt.lines)
			if _, err := f.build(t, f.opts(t)); err != nil && tt.words != "rollback" {
				// Without the kept checkpoint the rewritten log verifies
				// (except a reordered device history: that is a replay).
				if !errors.Is(err, logreport.ErrReplay) {
					t.Fatalf("rewritten log on its own: %v", err)
				}
			}
			_, err := f.build(t, opt)
			wantErr(t, err, tlogverify.ErrInconsistent, tt.words)
		})
	}
}

func TestReportRefusesAReplayedAttestation(t *testing.T) {
	f := newFixture(t)
	lines := f.lines(t)
	lines = append(lines, lines[30])
	f.setLines(t, lines)
	f.resign(t, lines)
	_, err := f.build(t, f.opts(t))
	wantErr(t, err, logreport.ErrReplay, "entry 120")
}

func TestReportRefusesEntriesNoCheckpointCovers(t *testing.T) {
	f := newFixture(t)
	lines := f.lines(t)
	f.setLines(t, append(lines, lines[0]))
	_, err := f.build(t, f.opts(t))
	wantErr(t, err, logreport.ErrExtraEntries, "more than the 120 entries")
}

func TestReportRefusesDevicesOfAnotherCA(t *testing.T) {
	f := newFixture(t)
	other, err := minica.New()
	if err != nil {
		t.Fatal(err)
	}
	opt := f.opts(t)
	opt.CARoots = x509.NewCertPool()
	opt.CARoots.AddCert(other.Root)
	_, err = f.build(t, opt)
	wantErr(t, err, bundle.ErrUnknownCA, "entry 0")
}

func TestReportRefusesTUFMetadataNotFromTheTrustedRoot(t *testing.T) {
	f := newFixture(t)
	g := newFixture(t)
	opt := f.opts(t)
	opt.TUFRoot = g.TUFRootJSON
	_, err := f.build(t, opt)
	wantErr(t, err, logreport.ErrTUF, "arbitrary software")

	// A model role edited after signing (a release's counter raised).
	p := filepath.Join(f.Export, logreport.TUFDir, "1.models%2Fmodel-0.json")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p, bytes.Replace(b, []byte(`"release_counter":5`), []byte(`"release_counter":9`), 1), 0o644)
	_, err = f.build(t, f.opts(t))
	wantErr(t, err, logreport.ErrTUF, "models/model-0")

	// Expired metadata is a freeze, unless judged at the export's time.
	opt = g.opts(t)
	opt.TUFTime = time.Now().Add(2 * 365 * 24 * time.Hour)
	_, err = g.build(t, opt)
	wantErr(t, err, logreport.ErrTUF, "freeze")
}

// TestReportListsReleasesNoLongerSigned: devices committed a release that
// the repository no longer signs (revoked): it is reported apart, and not
// taken as the latest.
func TestReportListsReleasesNoLongerSigned(t *testing.T) {
	dir := t.TempDir()
	res, err := loggen.Generate(loggen.Config{Out: dir, Entries: 40, Devices: 10, Releases: 4, Unlisted: 1})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{Result: res, dir: dir}
	rep, err := f.build(t, f.opts(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Releases) != 3 || !rep.Releases[2].Latest || len(rep.UnsignedReleases) != 1 {
		t.Fatalf("releases %+v, unsigned %+v", rep.Releases, rep.UnsignedReleases)
	}
	u := rep.UnsignedReleases[0]
	if u.Counter != 4 || u.Installed != 10 || u.Committed != 10 || u.TimeToPatch != nil || !strings.Contains(u.Reason, "not in the current signed metadata") {
		t.Fatalf("unsigned release: %+v", u)
	}
	if len(rep.Behind) != 0 {
		t.Fatalf("devices on an unsigned newer release counted behind: %+v", rep.Behind)
	}
}
