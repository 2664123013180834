// Package loggen generates a Foster transparency log export directly, for
// tests and benchmarks of `foster audit report --from-log`: a throwaway CA
// (minica), a TUF repository (root, targets delegating one role per model,
// snapshot, timestamp, all signed), a fleet of devices with their own
// P-256 keys and certificates, and a log of install attestations each
// signed by its device, as fosterd would have logged them, with a
// checkpoint signed by a fresh log key. A million entries take a few
// minutes on two cores instead of a million round trips through fosterd.
//
// Everything is real cryptography; nothing is trusted by being generated
// here. The auditor's anchors are written next to the export.
package loggen

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"go.step.sm/crypto/minica"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/bundle"
	"github.com/foster-ota/foster/pkg/logreport"
	"github.com/foster-ota/foster/pkg/signing"
)

// Origin is the generated log's origin (its checkpoints' first line).
const Origin = "foster.test/loggen/attestations"

// Config describes the log to generate.
type Config struct {
	// Out is the output directory (created; must not hold an export).
	Out string
	// Entries is the log's size; Devices how many devices attest (entry k
	// is device k mod Devices's attestation number k/Devices + 1).
	Entries, Devices int
	// Models (default 1) and Releases per model (default 10).
	Models, Releases int
	// Unlisted is how many of the newest releases the TUF metadata does
	// not list (revoked after devices installed them).
	Unlisted int
	// Silent devices are in the roster (devices.txt) but never attest.
	Silent int
	// Workers sign in parallel (default GOMAXPROCS).
	Workers int
	// Progress, if set, is told the entries written so far.
	Progress func(done, total int64)
}

// Result is a generated log: an export and the auditor's anchors.
type Result struct {
	// Export is the log export directory (logreport.DirSource).
	Export string
	// CARoot, TUFRoot, LogPub and Roster are the anchors' files and the
	// device list (one URN a line, silent devices included).
	CARoot, TUFRoot, LogPub, Roster string
	// CARootCert is the CA root; TUFRootJSON the trusted TUF root.
	CARootCert  *x509.Certificate
	TUFRootJSON []byte
	// LogSigner signs checkpoints with the log key (to forge rewritten
	// histories in tests); LogVerifier is log.pub.
	LogSigner   note.Signer
	LogVerifier note.Verifier
	// Start is the integrated time of entry 0; entries follow every Step.
	Start time.Time
	Step  time.Duration
	// Published is each release's signed publication time, by model, then
	// counter - 1.
	Published map[string][]time.Time
}

// Generate writes the log described by cfg.
func Generate(cfg Config) (*Result, error) {
	if cfg.Entries < 0 || cfg.Devices <= 0 && cfg.Entries > 0 {
		return nil, errors.New("loggen: need devices for the entries")
	}
	if cfg.Models <= 0 {
		cfg.Models = 1
	}
	if cfg.Releases <= 0 {
		cfg.Releases = 10
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	exp := filepath.Join(cfg.Out, "export")
	if err := os.MkdirAll(filepath.Join(exp, logreport.TUFDir), 0o755); err != nil {
		return nil, err
	}

	ca, err := minica.New(minica.WithName("Foster loggen"))
	if err != nil {
		return nil, err
	}
	// minica's certificates are valid for 24 hours from now: the log's
	// entries are integrated inside that window.
	now := time.Now().UTC().Truncate(time.Second)
	span := 12 * time.Hour
	res := &Result{Export: exp, CARootCert: ca.Root, Start: now.Add(time.Minute), Published: map[string][]time.Time{},
		CARoot: filepath.Join(cfg.Out, "ca.pem"), TUFRoot: filepath.Join(cfg.Out, "root.json"),
		LogPub: filepath.Join(cfg.Out, "log.pub"), Roster: filepath.Join(cfg.Out, "devices.txt")}
	if cfg.Entries > 0 {
		res.Step = span / time.Duration(cfg.Entries)
	}

	perDevice := 1
	if cfg.Devices > 0 {
		perDevice = max(1, (cfg.Entries+cfg.Devices-1)/cfg.Devices)
	}
	models := make([]string, cfg.Models)
	for m := range models {
		models[m] = fmt.Sprintf("model-%d", m)
		if cfg.Models == 1 {
			models[m] = "edge-gw"
		}
		// Release r (counter r+1) is published a little before devices
		// start installing it.
		for r := range cfg.Releases {
			at := res.Start.Add(time.Duration(r)*span/time.Duration(perDevice) - 30*time.Second).Truncate(time.Second)
			res.Published[models[m]] = append(res.Published[models[m]], at)
		}
	}
	if res.TUFRootJSON, err = writeTUF(exp, models, cfg.Releases-cfg.Unlisted, res.Published); err != nil {
		return nil, err
	}

	skey, vkey, err := note.GenerateKey(rand.Reader, Origin)
	if err != nil {
		return nil, err
	}
	if res.LogSigner, err = note.NewSigner(skey); err != nil {
		return nil, err
	}
	if res.LogVerifier, err = note.NewVerifier(vkey); err != nil {
		return nil, err
	}

	devs, err := makeDevices(ca, models, cfg.Devices, cfg.Workers, now)
	if err != nil {
		return nil, err
	}
	size, root, err := writeEntries(filepath.Join(exp, logreport.EntriesFile), cfg, devs, res, perDevice)
	if err != nil {
		return nil, err
	}
	cp, err := SignCheckpoint(res.LogSigner, size, root)
	if err != nil {
		return nil, err
	}
	var roster strings.Builder
	for _, d := range devs {
		roster.WriteString(d.urn + "\n")
	}
	for i := range cfg.Silent {
		fmt.Fprintf(&roster, "urn:foster:device:%s:SILENT-%07d\n", models[i%len(models)], i)
	}
	for _, f := range []struct {
		path string
		data []byte
	}{
		{filepath.Join(exp, logreport.CheckpointFile), cp},
		{res.CARoot, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw})},
		{res.TUFRoot, res.TUFRootJSON},
		{res.LogPub, []byte(vkey + "\n")},
		{res.Roster, []byte(roster.String())},
	} {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// SignCheckpoint signs a C2SP checkpoint of the generated log.
func SignCheckpoint(s note.Signer, size int64, root []byte) ([]byte, error) {
	return note.Sign(&note.Note{Text: fmt.Sprintf("%s\n%d\n%s\n", Origin, size, base64.StdEncoding.EncodeToString(root))}, s)
}

// Root computes the RFC 6962 root of leaves (for tests that rewrite a log).
func Root(leaves [][]byte) []byte {
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)
	for _, l := range leaves {
		rng.Append(rfc6962.DefaultHasher.HashLeaf(l), nil)
	}
	if rng.End() == 0 {
		return rfc6962.DefaultHasher.EmptyRoot()
	}
	root, _ := rng.GetRootHash(nil)
	return root
}

// Target is release counter of model (1-based).
func Target(model string, counter int) attest.Target {
	v := fmt.Sprintf("1.0.%d", counter)
	sum := sha256.Sum256([]byte("firmware " + model + " " + v))
	return attest.Target{Name: model + "/" + v + "/fw.bin", SHA256: hex.EncodeToString(sum[:]), Length: 1 << 20, Version: v, ReleaseCounter: int64(counter)}
}

// writeTUF writes a consistent-snapshot repository (version 1 of every
// role) into exp/tuf and returns the root.
func writeTUF(exp string, models []string, releases int, published map[string][]time.Time) ([]byte, error) {
	expires := time.Now().Add(365 * 24 * time.Hour)
	keys := map[string]ed25519.PrivateKey{}
	for _, r := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP, "models"} {
		_, k, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		keys[r] = k
	}
	pub := func(r string) (*metadata.Key, string, error) {
		k, err := metadata.KeyFromPublicKey(keys[r].Public())
		if err != nil {
			return nil, "", err
		}
		id, err := k.ID()
		return k, id, err
	}
	sign := func(r string) (signature.Signer, error) { return signing.FromPrivateKey(keys[r]) }

	root := metadata.Root(expires)
	root.Signed.ConsistentSnapshot = true
	for _, r := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		k, _, err := pub(r)
		if err != nil {
			return nil, err
		}
		if err := root.Signed.AddKey(k, r); err != nil {
			return nil, err
		}
	}
	files := map[string]any{}
	rs, err := sign(metadata.ROOT)
	if err != nil {
		return nil, err
	}
	if _, err := root.Sign(rs); err != nil {
		return nil, err
	}
	rootJSON, err := root.ToBytes(false)
	if err != nil {
		return nil, err
	}

	mk, mid, err := pub("models")
	if err != nil {
		return nil, err
	}
	top := metadata.Targets(expires)
	top.Signed.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{mid: mk}}
	snap := metadata.Snapshot(expires)
	ms, err := sign("models")
	if err != nil {
		return nil, err
	}
	for _, m := range models {
		role := "models/" + m
		top.Signed.Delegations.Roles = append(top.Signed.Delegations.Roles, metadata.DelegatedRole{
			Name: role, KeyIDs: []string{mid}, Threshold: 1, Terminating: true, Paths: []string{m + "/*/*"}})
		md := metadata.Targets(expires)
		for r := 1; r <= releases; r++ {
			t := Target(m, r)
			h, _ := hex.DecodeString(t.SHA256)
			custom, _ := json.Marshal(map[string]any{"model": m, "version": t.Version, "release_counter": r, "hardware_ids": []string{},
				"published_at": published[m][r-1].Format(time.RFC3339)})
			raw := json.RawMessage(custom)
			md.Signed.Targets[t.Name] = &metadata.TargetFiles{Path: t.Name, Length: t.Length, Hashes: metadata.Hashes{"sha256": h}, Custom: &raw}
		}
		if _, err := md.Sign(ms); err != nil {
			return nil, err
		}
		files["1."+url.PathEscape(role)+".json"] = md
		snap.Signed.Meta[role+".json"] = metadata.MetaFile(1)
	}
	ts, err := sign(metadata.TARGETS)
	if err != nil {
		return nil, err
	}
	if _, err := top.Sign(ts); err != nil {
		return nil, err
	}
	files["1.targets.json"] = top
	ss, err := sign(metadata.SNAPSHOT)
	if err != nil {
		return nil, err
	}
	if _, err := snap.Sign(ss); err != nil {
		return nil, err
	}
	files["1.snapshot.json"] = snap
	stamp := metadata.Timestamp(expires)
	tss, err := sign(metadata.TIMESTAMP)
	if err != nil {
		return nil, err
	}
	if _, err := stamp.Sign(tss); err != nil {
		return nil, err
	}
	files["timestamp.json"] = stamp
	files["1.root.json"] = root

	for name, md := range files {
		var b []byte
		switch md := md.(type) {
		case *metadata.Metadata[metadata.RootType]:
			b, err = md.ToBytes(false)
		case *metadata.Metadata[metadata.TargetsType]:
			b, err = md.ToBytes(false)
		case *metadata.Metadata[metadata.SnapshotType]:
			b, err = md.ToBytes(false)
		case *metadata.Metadata[metadata.TimestampType]:
			b, err = md.ToBytes(false)
		}
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(exp, logreport.TUFDir, name), b, 0o644); err != nil {
			return nil, err
		}
	}
	return rootJSON, nil
}

type device struct {
	urn, model string
	signer     signature.Signer
	chain      [][]byte
}

// makeDevices issues each device a key and a certificate valid from
// notBefore for 23 hours.
func makeDevices(ca *minica.CA, models []string, n, workers int, notBefore time.Time) ([]device, error) {
	devs := make([]device, n)
	var mu sync.Mutex
	var first error
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				d, err := makeDevice(ca, models[i%len(models)], fmt.Sprintf("SN-%07d", i), notBefore)
				if err != nil {
					mu.Lock()
					first = cmpErr(first, err)
					mu.Unlock()
					continue
				}
				devs[i] = d
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return devs, first
}

func cmpErr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

func makeDevice(ca *minica.CA, model, serial string, notBefore time.Time) (device, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return device{}, err
	}
	urn := "urn:foster:device:" + model + ":" + serial
	u, _ := url.Parse(urn)
	sn, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return device{}, err
	}
	cert, err := ca.Sign(&x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u},
		NotBefore: notBefore, NotAfter: notBefore.Add(23 * time.Hour), PublicKey: key.Public(),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return device{}, err
	}
	s, err := signing.FromPrivateKey(crypto.PrivateKey(key))
	if err != nil {
		return device{}, err
	}
	return device{urn: urn, model: model, signer: s, chain: [][]byte{cert.Raw, ca.Intermediate.Raw}}, nil
}

// chunk is a run of entries signed by one worker.
type chunk struct {
	start, n int
	leaves   [][]byte
	err      error
	done     chan struct{}
}

const chunkSize = 512

// writeEntries signs and writes the entries in index order and returns
// the tree's size and root.
func writeEntries(path string, cfg Config, devs []device, res *Result, perDevice int) (int64, []byte, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, nil, err
	}
	defer f.Close()
	w := bufio.NewWriterSize(f, 1<<20)
	rng := (&compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}).NewEmptyRange(0)

	work := make(chan *chunk, cfg.Workers*2)
	ordered := make(chan *chunk, cfg.Workers*2)
	for range cfg.Workers {
		go func() {
			for c := range work {
				c.leaves = make([][]byte, c.n)
				for i := range c.n {
					if c.leaves[i], c.err = entry(c.start+i, cfg, devs, res, perDevice); c.err != nil {
						break
					}
				}
				close(c.done)
			}
		}()
	}
	go func() {
		for s := 0; s < cfg.Entries; s += chunkSize {
			c := &chunk{start: s, n: min(chunkSize, cfg.Entries-s), done: make(chan struct{})}
			work <- c
			ordered <- c
		}
		close(work)
		close(ordered)
	}()
	var firstErr error
	for c := range ordered {
		<-c.done
		if firstErr != nil {
			continue
		}
		if c.err != nil {
			firstErr = c.err
			continue
		}
		for _, l := range c.leaves {
			rng.Append(rfc6962.DefaultHasher.HashLeaf(l), nil)
			w.Write(l)
			w.WriteByte('\n')
		}
		if cfg.Progress != nil {
			cfg.Progress(int64(c.start+c.n), int64(cfg.Entries))
		}
	}
	if firstErr != nil {
		return 0, nil, firstErr
	}
	if err := w.Flush(); err != nil {
		return 0, nil, err
	}
	if err := f.Close(); err != nil {
		return 0, nil, err
	}
	root := rfc6962.DefaultHasher.EmptyRoot()
	if rng.End() > 0 {
		if root, err = rng.GetRootHash(nil); err != nil {
			return 0, nil, err
		}
	}
	return int64(rng.End()), root, nil
}

// entry is leaf k: device k mod Devices installs its next release
// (committed; one in 50 rolled back, which the next attestation retries).
func entry(k int, cfg Config, devs []device, res *Result, perDevice int) ([]byte, error) {
	d := devs[k%len(devs)]
	j := k / len(devs) // this device's j-th attestation (0-based)
	counter := min(j+1, cfg.Releases)
	at := res.Start.Add(time.Duration(k) * res.Step)
	in := attest.Install{
		Device: d.urn, New: Target(d.model, counter), TargetsVersion: 1, SnapshotVersion: 1,
		Outcome: attest.OutcomeCommitted, Sequence: int64(j + 1), Time: at,
	}
	if j > 0 {
		p := Target(d.model, min(j, cfg.Releases))
		in.Previous = &p
	}
	if RolledBack(k) {
		in.Outcome, in.Reason = attest.OutcomeRolledBack, "health check failed"
	}
	env, err := attest.Sign(d.signer, in)
	if err != nil {
		return nil, err
	}
	e := bundle.Entry{Type: bundle.EntryType, IntegratedTime: at.Unix(), Envelope: env, CertChain: d.chain}
	return e.Marshal()
}

// RolledBack says whether entry k is a rolled-back install.
func RolledBack(k int) bool { return k%50 == 49 }
