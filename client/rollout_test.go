package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/client"
	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Staged rollouts, end to end between fosterd's TUF repository
// (ota/tufrepo: model role, hashed bins, signed terms and memberships) and
// the agent. The fake server serves the repository's metadata and blobs as
// fosterd does; hooks tamper with what it serves.

type rolloutEnv struct {
	t    *testing.T
	srv  *clienttest.Server
	repo *tufrepo.Repo
	fs   *blob.FS
	root []byte
}

func newRolloutEnv(t *testing.T) *rolloutEnv {
	t.Helper()
	ctx := t.Context()
	fs, err := blob.NewFS(filepath.Join(t.TempDir(), "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	gen := func() signature.Signer {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		s, err := signing.FromPrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	keys := tufrepo.Keys{Root: gen(), Targets: gen(), Snapshot: gen(), Timestamp: gen()}
	// Small roles and bins, so memberships and older releases are in bins.
	opts := tufrepo.Options{RecentTargets: 4, TargetsPerBin: 2}
	root, err := tufrepo.Init(ctx, fs, keys, opts)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := tufrepo.Open(ctx, fs, keys, opts)
	if err != nil {
		t.Fatal(err)
	}
	e := &rolloutEnv{t: t, srv: clienttest.NewServer(t, clienttest.NewRepo(t, "")), repo: repo, fs: fs, root: root}
	e.srv.Lock(func() { e.srv.MetaHook = e.serveMeta(nil) })
	return e
}

// serveMeta serves the repository's metadata, passing each file through
// tamper (nil: as stored).
func (e *rolloutEnv) serveMeta(tamper func(file string, b []byte) []byte) func(http.ResponseWriter, *http.Request, string, []byte) bool {
	return func(w http.ResponseWriter, r *http.Request, file string, _ []byte) bool {
		rc, _, err := e.fs.Open(r.Context(), "tuf/"+file)
		if err != nil {
			http.NotFound(w, r)
			return true
		}
		b, _ := io.ReadAll(rc)
		rc.Close()
		if tamper != nil {
			b = tamper(file, b)
		}
		w.Write(b)
		return true
	}
}

// publish releases version of model (offered to all when terms is nil) and
// makes its blob downloadable.
func (e *rolloutEnv) publish(version string, counter int64, terms *rollout.Terms) string {
	e.t.Helper()
	p := model + "/" + version + "/firmware.bin"
	body := []byte("firmware " + version)
	custom := []byte(fmt.Sprintf(`{"model":%q,"version":%q,"release_counter":%d,"hardware_ids":[]}`, model, version, counter))
	if terms != nil {
		var err error
		if custom, err = rollout.WithTerms(custom, terms); err != nil {
			e.t.Fatal(err)
		}
	}
	tg, err := e.repo.AddTarget(e.t.Context(), p, bytes.NewReader(body), int64(len(body)), custom)
	if err != nil {
		e.t.Fatal(err)
	}
	dir, base := path.Split(p)
	e.srv.Lock(func() { e.srv.Repo.Blobs[dir+tg.SHA256+"."+base] = body })
	return p
}

func (e *rolloutEnv) setTerms(p string, terms *rollout.Terms) {
	e.t.Helper()
	if _, err := e.repo.SetTerms(e.t.Context(), p, terms); err != nil {
		e.t.Fatal(err)
	}
}

// device enrolls sn, trusting the repository's root.
func (e *rolloutEnv) device(sn string) *device {
	t := e.t
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	tok := "tok-" + sn
	e.srv.AddToken(tok, sn, model)
	cfg := enrollConfig(t, e.srv, dir, tok)
	cfg.Serial = sn
	cfg.TUFRootPath = clienttest.WriteFile(t, t.TempDir(), "root.json", e.root)
	if _, err := client.Enroll(context.Background(), cfg); err != nil {
		t.Fatalf("enroll: %v", err)
	}
	target := filepath.Join(t.TempDir(), "firmware.bin")
	if err := os.WriteFile(target, []byte("old firmware"), 0o644); err != nil {
		t.Fatal(err)
	}
	return &device{t: t, dir: dir, target: target, srv: e.srv, logs: &bytes.Buffer{}}
}

// urn is the identity the device places itself with: its certificate's URN.
func (d *device) urn() string {
	d.t.Helper()
	st, err := client.ReadStatus(d.dir, time.Now())
	if err != nil {
		d.t.Fatal(err)
	}
	return st.Device
}

// bucketOf is the documented formula (docs/ROLLOUTS.md), computed here from
// its definition rather than by pkg/rollout.
func bucketOf(seedHex, urn string) int {
	seed, _ := hex.DecodeString(seedHex)
	sum := sha256.Sum256(append(seed, urn...))
	return int(binary.BigEndian.Uint64(sum[:8]) % 10000)
}

func seedN(i int) string { return strings.Repeat(fmt.Sprintf("%02x", i%256), rollout.SeedBytes) }

// TestDeviceOutsideSignedWaveDoesNotInstallEvenIfToldTo: the signed terms
// leave the device out of the wave. The server offers the image anyway
// (its blob is served), re-serves the model role with the share raised to
// the whole fleet (signature left as it was), and then with the signatures
// stripped: the device installs nothing and says why. Once the signed
// terms are widened past its bucket, it installs.
func TestDeviceOutsideSignedWaveDoesNotInstallEvenIfToldTo(t *testing.T) {
	e := newRolloutEnv(t)
	d := e.device("SN-OUT")
	// A seed that puts the device in a four-digit bucket, so the tampered
	// share below keeps the role's length.
	seed, b := "", 0
	for i := 1; ; i++ {
		if seed, b = seedN(i), bucketOf(seedN(i), d.urn()); b >= 1000 && b <= 9998 {
			break
		}
	}
	terms := &rollout.Terms{ID: "r-7", Seed: seed, Share: b, State: "running"} // buckets below b
	p := e.publish("1.3.0", 1, terms)

	rep, err := d.runOnce()
	if err != nil {
		t.Fatal(err)
	}
	assertNothingInstalled(t, d)
	want := fmt.Sprintf("1.3.0 not offered: rollout r-7 offers buckets below %d, device is in bucket %d", b, b)
	if !rep.UpToDate || len(rep.NotOffered) != 1 || rep.NotOffered[0] != want {
		t.Fatalf("report %+v, want up to date with %q", rep, want)
	}
	if st, _ := client.ReadStatus(d.dir, time.Now()); len(st.NotOffered) != 1 || st.NotOffered[0] != want {
		t.Fatalf("status says %v", st.NotOffered)
	}
	if !strings.Contains(d.logs.String(), "newer release not offered") {
		t.Fatalf("no log line says why: %s", d.logs)
	}
	e.srv.Lock(func() {
		if len(e.srv.TargetRequests) != 0 {
			t.Fatalf("the device requested %v", e.srv.TargetRequests)
		}
	})

	// The server claims the device is in the wave.
	round := 0
	for name, tamper := range map[string]func(file string, b []byte) []byte{
		"share raised, signature kept": func(file string, raw []byte) []byte {
			return bytes.Replace(raw, fmt.Appendf(nil, `"share":%d`, b), []byte(`"share":9999`), 1)
		},
		"share raised, signatures stripped": func(file string, raw []byte) []byte {
			raw = bytes.Replace(raw, fmt.Appendf(nil, `"share":%d`, b), []byte(`"share":9999`), 1)
			i := bytes.Index(raw, []byte(`"signatures":[`))
			j := bytes.Index(raw[i:], []byte(`]`))
			return append(append(raw[:i:i], `"signatures":[`...), raw[i+j:]...)
		},
	} {
		e.srv.Lock(func() {
			e.srv.MetaHook = e.serveMeta(func(file string, raw []byte) []byte {
				if strings.HasSuffix(file, ".models/"+model+".json") {
					return tamper(file, raw)
				}
				return raw
			})
		})
		round++
		e.setTerms(p, &rollout.Terms{ID: "r-7", Seed: seed, Share: b, State: fmt.Sprint("paused-", round)}) // a new role version to fetch
		_, err := d.runOnce()
		if err == nil {
			t.Fatalf("%s: the device accepted the tampered role", name)
		}
		t.Logf("%s: refused: %v", name, err)
		assertNothingInstalled(t, d)
	}

	e.srv.Lock(func() { e.srv.MetaHook = e.serveMeta(nil) })
	e.setTerms(p, &rollout.Terms{ID: "r-7", Seed: seed, Share: b + 1, State: "running"})
	rep, err = d.runOnce()
	if err != nil || rep.Installed == nil || rep.Installed.Version != "1.3.0" || len(rep.NotOffered) != 0 {
		t.Fatalf("widened past the device's bucket: %+v, %v", rep, err)
	}
}

// TestStagedRolloutOffersExactlyTheSignedWave: 12 devices. A held release
// (share 0) is offered to none: each takes the previous release, offered to
// all. At 50 % exactly the devices whose bucket (the formula, computed here)
// is below 5000 take it. Halted again, devices on it stay (no downgrade)
// and the rest stay where they are.
func TestStagedRolloutOffersExactlyTheSignedWave(t *testing.T) {
	e := newRolloutEnv(t)
	var devs []*device
	for i := range 12 {
		devs = append(devs, e.device(fmt.Sprintf("SN-%02d", i)))
	}
	// A seed that splits the 12 (all on one side would prove little).
	var seed string
	in := map[*device]bool{}
	for i := 1; ; i++ {
		seed = seedN(i)
		n := 0
		for _, d := range devs {
			in[d] = bucketOf(seed, d.urn()) < 5000
			if in[d] {
				n++
			}
		}
		if n > 0 && n < len(devs) {
			break
		}
	}
	e.publish("1.0.1", 1, nil)
	p := e.publish("1.0.2", 2, &rollout.Terms{ID: "r-1", Seed: seed, Share: 0, State: "held"})
	check := func(stage string, want func(d *device) string) {
		t.Helper()
		for _, d := range devs {
			if _, err := d.runOnce(); err != nil {
				t.Fatalf("%s: %v", stage, err)
			}
			if got, w := d.targetContent(), want(d); got != w {
				t.Fatalf("%s: device %s (bucket %d) runs %q, want %q", stage, d.urn(), bucketOf(seed, d.urn()), got, w)
			}
		}
	}
	check("held", func(*device) string { return "firmware 1.0.1" })
	for _, d := range devs {
		if st := d.state(); len(st.NotOffered) != 1 || !strings.HasPrefix(st.NotOffered[0], "1.0.2 not offered: rollout r-1 offers buckets below 0") {
			t.Fatalf("held: status says %v", st.NotOffered)
		}
	}
	e.setTerms(p, &rollout.Terms{ID: "r-1", Seed: seed, Share: 5000, State: "running"})
	wave := func(d *device) string {
		if in[d] {
			return "firmware 1.0.2"
		}
		return "firmware 1.0.1"
	}
	check("50%", wave)
	e.setTerms(p, &rollout.Terms{ID: "r-1", Seed: seed, Share: 0, State: "halted"})
	check("halted", wave)
	if n := len(e.srv.Received()); n != 12+countIn(in) {
		t.Fatalf("%d attestations, want one per install (%d)", n, 12+countIn(in))
	}
}

func countIn(in map[*device]bool) int {
	n := 0
	for _, ok := range in {
		if ok {
			n++
		}
	}
	return n
}

// TestRolloutGroupsComeFromSignedMembership: terms for group canary reach
// the device whose signed membership says canary, not one in lab nor one
// with no record. Terms for the default group reach a device without a
// record; a device whose record says lab is refused them even when its bin
// is tampered with (served modified, or another bin's validly signed bytes
// served in its place): a membership it cannot verify offers no staged
// release, never the default group.
func TestRolloutGroupsComeFromSignedMembership(t *testing.T) {
	e := newRolloutEnv(t)
	canary, lab, none := e.device("SN-CANARY"), e.device("SN-LAB"), e.device("SN-NONE")
	e.publish("1.0.0", 1, nil)
	members := map[string][]string{"SN-CANARY": {"canary"}, "SN-LAB": {"lab"}}
	for i := range 12 { // more records: more bins
		members[fmt.Sprint("SN-OTHER-", i)] = []string{"field"}
	}
	if err := e.repo.SetMemberships(t.Context(), model, members); err != nil {
		t.Fatal(err)
	}
	full := rollout.Scale
	e.publish("2.0.0", 2, &rollout.Terms{ID: "r-c", Seed: seedN(1), Share: full, Groups: []string{"canary"}})
	for d, want := range map[*device]string{canary: "firmware 2.0.0", lab: "firmware 1.0.0", none: "firmware 1.0.0"} {
		if _, err := d.runOnce(); err != nil {
			t.Fatal(err)
		}
		if got := d.targetContent(); got != want {
			t.Fatalf("%s runs %q, want %q", d.urn(), got, want)
		}
	}
	if st := lab.state(); len(st.NotOffered) != 1 || !strings.Contains(st.NotOffered[0], "is for groups [canary], device is in [lab]") {
		t.Fatalf("lab device says %v", st.NotOffered)
	}

	p := e.publish("3.0.0", 3, &rollout.Terms{ID: "r-d", Seed: seedN(2), Share: full, Groups: []string{rollout.DefaultGroup}})
	_, labBin, _ := e.repo.Lookup(rollout.MembershipPath(model, "SN-LAB"))
	_, canaryBin, _ := e.repo.Lookup(rollout.MembershipPath(model, "SN-CANARY"))
	if labBin == canaryBin {
		t.Fatalf("both records in %s: the test needs two bins", labBin)
	}
	var canaryBinBytes []byte
	for name, tamper := range map[string]func(raw []byte) []byte{
		"record rewritten": func(raw []byte) []byte {
			out := bytes.Replace(raw, []byte(`{"groups":["lab"]}`), []byte(`{"groups":["xyz"]}`), 1)
			if bytes.Equal(out, raw) {
				t.Fatalf("no record to rewrite in %s", raw)
			}
			return out
		},
		"another bin served": func([]byte) []byte { return canaryBinBytes },
	} {
		e.srv.Lock(func() {
			e.srv.MetaHook = e.serveMeta(func(file string, raw []byte) []byte {
				if strings.HasSuffix(file, "."+labBin+".json") {
					return tamper(raw)
				}
				return raw
			})
		})
		cr, _, err := e.fs.Open(t.Context(), fmt.Sprintf("tuf/%d.%s.json", roleVersion(e.repo, canaryBin), canaryBin))
		if err != nil {
			t.Fatal(err)
		}
		canaryBinBytes, _ = io.ReadAll(cr)
		cr.Close()
		os.RemoveAll(filepath.Join(lab.dir, "tuf", strings.ReplaceAll(labBin, "/", "%2F")+".json")) // not cached
		if _, err := lab.runOnce(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := lab.targetContent(); got != "firmware 1.0.0" {
			t.Fatalf("%s: the lab device installed %q through a tampered membership", name, got)
		}
		if st := lab.state(); len(st.NotOffered) == 0 || !strings.Contains(st.NotOffered[0], "signed groups are unusable") {
			t.Fatalf("%s: lab device says %v", name, st.NotOffered)
		}
	}
	e.srv.Lock(func() { e.srv.MetaHook = e.serveMeta(nil) })
	if _, err := none.runOnce(); err != nil || none.targetContent() != "firmware 3.0.0" {
		t.Fatalf("a device without a record (default group) was not offered %s: %v", p, err)
	}
	if _, err := lab.runOnce(); err != nil || lab.targetContent() != "firmware 1.0.0" {
		t.Fatalf("the lab device took the default group's release: %v", err)
	}
}

func roleVersion(r *tufrepo.Repo, name string) int64 {
	for _, ri := range r.Roles() {
		if ri.Name == name {
			return ri.Version
		}
	}
	return 0
}
