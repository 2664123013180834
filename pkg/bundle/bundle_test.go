package bundle_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/bundle"
)

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func TestVerifyAcceptsARealBundle(t *testing.T) {
	w := newWorld(t)
	b, _, chain := w.good(t)
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	res, err := w.verifier(t).VerifyBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	if res.Device.URI() != "urn:foster:device:edge-gw:SN-0001" || res.Statement.New != w.fw || res.LeafIndex != 5 ||
		res.Checkpoint.Size != 7 || res.TargetsVersion != 1 || res.RootVersion != 1 || !res.Certificate.Equal(chain[0]) {
		t.Fatalf("result %+v", res)
	}
	if res.IntegratedTime.Unix() != b.IntegratedTime {
		t.Fatalf("integrated time %v", res.IntegratedTime)
	}
}

// TestVerifyRefusesEachAttack changes one thing in a valid bundle and
// requires the failure class an auditor's exit code depends on.
func TestVerifyRefusesEachAttack(t *testing.T) {
	w := newWorld(t)
	devKey, devChain := w.device(t, model, "SN-0001")
	me := "urn:foster:device:" + model + ":SN-0001"
	otherKey, otherChain := w.device(t, model, "SN-0002")
	other := newWorld(t) // another Foster: its CA, TUF keys and log key
	goodEnv := w.envelope(t, devKey, w.install(me, 1))

	tests := map[string]struct {
		bundle func(t *testing.T) *bundle.Bundle
		want   error
	}{
		"tampered envelope": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			var env map[string]any
			json.Unmarshal(b.Envelope, &env)
			payload, _ := base64.StdEncoding.DecodeString(env["payload"].(string))
			env["payload"] = b64(bytes.Replace(payload, []byte(`"outcome":"committed"`), []byte(`"outcome":"rolled-back"`), 1))
			b.Envelope, _ = json.Marshal(env)
			return b
		}, bundle.ErrBadSignature},
		"wrong device key": {func(t *testing.T) *bundle.Bundle {
			return w.log(t, w.envelope(t, otherKey, w.install(me, 1)), devChain, time.Now())
		}, bundle.ErrBadSignature},
		"statement names another device": {func(t *testing.T) *bundle.Bundle {
			return w.log(t, w.envelope(t, otherKey, w.install(me, 1)), otherChain, time.Now())
		}, bundle.ErrBadSignature},
		"chain from another CA": {func(t *testing.T) *bundle.Bundle {
			k, c := other.device(t, model, "SN-0001")
			return w.log(t, w.envelope(t, k, w.install(me, 1)), c, time.Now())
		}, bundle.ErrUnknownCA},
		"certificate expired when logged": {func(t *testing.T) *bundle.Bundle {
			k, c := w.issue(t, me, "SN-0001", time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
			return w.log(t, w.envelope(t, k, w.install(me, 1)), c, time.Now())
		}, bundle.ErrUnknownCA},
		"admin certificate": {func(t *testing.T) *bundle.Bundle {
			k, c := w.issue(t, "urn:foster:admin:mallory", "mallory", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
			return w.log(t, w.envelope(t, k, w.install(me, 1)), c, time.Now())
		}, bundle.ErrUnknownCA},
		"digest of an unsigned target": {func(t *testing.T) *bundle.Bundle {
			in := w.install(me, 1)
			in.New.SHA256 = strings.Repeat("00", 32)
			return w.log(t, w.envelope(t, devKey, in), devChain, time.Now())
		}, bundle.ErrTargetNotSigned},
		"target never published": {func(t *testing.T) *bundle.Bundle {
			in := w.install(me, 1)
			in.New.Name = model + "/9.9.9/fw.bin"
			return w.log(t, w.envelope(t, devKey, in), devChain, time.Now())
		}, bundle.ErrTargetNotSigned},
		"target of another model": {func(t *testing.T) *bundle.Bundle {
			in := w.install(me, 1)
			in.New = attest.Target{Name: "other-model/2.0.0/x.bin", SHA256: w.fw.SHA256, Length: 14}
			return w.log(t, w.envelope(t, devKey, in), devChain, time.Now())
		}, bundle.ErrTargetNotSigned},
		"claims another release counter": {func(t *testing.T) *bundle.Bundle {
			in := w.install(me, 1)
			in.New.ReleaseCounter = 7
			return w.log(t, w.envelope(t, devKey, in), devChain, time.Now())
		}, bundle.ErrTargetNotSigned},
		"targets signed by another key": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			b.TUF.Targets = other.targetsJSON
			return b
		}, bundle.ErrTargetNotSigned},
		"root rotation not signed by the trusted root": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			_, evil, _ := ed25519.GenerateKey(rand.Reader)
			b.TUF.Roots = append(b.TUF.Roots, w.signRoot(t, 2, evil, evil, evil))
			b.TUF.Targets = w.signTargets(t, 2, evil, map[string]targetSpec{w.fw.Name: {w.fw, model}})
			return b
		}, bundle.ErrTargetNotSigned},
		"forged checkpoint": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			b.Log.Checkpoint = string(signNote(t, other.logSigner, strings.SplitAfterN(b.Log.Checkpoint, "\n", 4)[0]+"7\n"+b64(w.tree.Hash())+"\n"))
			return b
		}, bundle.ErrCheckpointSignature},
		"edited checkpoint": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			lines := strings.SplitN(b.Log.Checkpoint, "\n", 3)
			b.Log.Checkpoint = lines[0] + "\n" + lines[1] + "0\n" + lines[2]
			return b
		}, bundle.ErrCheckpointSignature},
		"proof for a different leaf": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			p, _ := w.tree.InclusionProof(0, w.tree.Size())
			b.Log.LeafIndex, b.Log.InclusionProof = 0, p
			return b
		}, bundle.ErrNotInLog},
		"never logged": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			b.Envelope = w.envelope(t, devKey, w.install(me, 2)) // valid, but a different entry
			return b
		}, bundle.ErrNotInLog},
		"integrated time moved": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			b.IntegratedTime += 60
			return b
		}, bundle.ErrNotInLog},
		"proof against another tree size": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			b.Log.TreeSize++
			return b
		}, bundle.ErrNotInLog},
		"split view: checkpoint of another tree of the same size": {func(t *testing.T) *bundle.Bundle {
			b := w.log(t, goodEnv, devChain, time.Now())
			b.Log.Checkpoint = string(w.checkpoint(t, uint64(b.Log.TreeSize), make([]byte, 32)))
			return b
		}, bundle.ErrNotInLog},
	}
	v := w.verifier(t)
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			b := tt.bundle(t)
			raw, err := json.Marshal(b)
			if err != nil {
				t.Fatal(err)
			}
			_, err = v.VerifyBytes(raw)
			t.Log(err)
			if !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			for _, class := range []error{bundle.ErrMalformed, bundle.ErrBadSignature, bundle.ErrUnknownCA, bundle.ErrNotInLog, bundle.ErrCheckpointSignature, bundle.ErrTargetNotSigned} {
				if class != tt.want && errors.Is(err, class) {
					t.Fatalf("error %v is in two classes (%v and %v)", err, tt.want, class)
				}
			}
		})
	}
}

func TestVerifyFollowsRootRotation(t *testing.T) {
	w := newWorld(t)
	b, _, _ := w.good(t)
	_, newRoot, _ := ed25519.GenerateKey(rand.Reader)
	_, newTargets, _ := ed25519.GenerateKey(rand.Reader)
	b.TUF.Roots = []json.RawMessage{w.signRoot(t, 2, newRoot, newTargets, w.rootKey, newRoot)}
	b.TUF.Targets = w.signTargets(t, 2, newTargets, map[string]targetSpec{w.fw.Name: {w.fw, model}})
	res, err := w.verifier(t).Verify(b)
	if err != nil {
		t.Fatal(err)
	}
	if res.RootVersion != 2 || res.TargetsVersion != 2 {
		t.Fatalf("root v%d targets v%d", res.RootVersion, res.TargetsVersion)
	}
	// A root that skips a version is refused.
	b.TUF.Roots = []json.RawMessage{w.signRoot(t, 3, newRoot, newTargets, w.rootKey, newRoot)}
	if _, err := w.verifier(t).Verify(b); !errors.Is(err, bundle.ErrTargetNotSigned) {
		t.Fatalf("root version gap: %v", err)
	}
}

func TestParseRefusesMalformedBundles(t *testing.T) {
	w := newWorld(t)
	b, _, _ := w.good(t)
	good, _ := json.Marshal(b)
	mutate := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		out, _ := json.Marshal(m)
		return out
	}
	tests := map[string][]byte{
		"not JSON":         []byte("{"),
		"trailing data":    append(append([]byte{}, good...), []byte(" {}")...),
		"unknown field":    mutate(func(m map[string]any) { m["admin"] = true }),
		"wrong media type": mutate(func(m map[string]any) { m["media_type"] = "application/json" }),
		"no envelope":      mutate(func(m map[string]any) { delete(m, "envelope") }),
		"no chain":         mutate(func(m map[string]any) { m["cert_chain"] = "" }),
		"not a certificate": mutate(func(m map[string]any) {
			m["cert_chain"] = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
		}),
		"garbage after chain": mutate(func(m map[string]any) { m["cert_chain"] = m["cert_chain"].(string) + "junk" }),
		"negative index":      mutate(func(m map[string]any) { m["log"].(map[string]any)["leaf_index"] = -1 }),
		"index beyond tree":   mutate(func(m map[string]any) { m["log"].(map[string]any)["leaf_index"] = 99 }),
		"no checkpoint":       mutate(func(m map[string]any) { m["log"].(map[string]any)["checkpoint"] = "" }),
		"no targets":          mutate(func(m map[string]any) { delete(m["tuf"].(map[string]any), "targets") }),
		"no integrated time":  mutate(func(m map[string]any) { m["integrated_time"] = 0 }),
		"oversized":           bytes.Repeat([]byte(" "), bundle.MaxSize+1),
	}
	v := w.verifier(t)
	for name, raw := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := bundle.Parse(raw); !errors.Is(err, bundle.ErrMalformed) {
				t.Fatalf("Parse: %v, want ErrMalformed", err)
			}
			if _, err := v.VerifyBytes(raw); !errors.Is(err, bundle.ErrMalformed) {
				t.Fatalf("Verify: %v, want ErrMalformed", err)
			}
		})
	}
}

func TestEntryHasOneEncoding(t *testing.T) {
	w := newWorld(t)
	key, chain := w.device(t, model, "SN-0001")
	e := bundle.NewEntry(w.envelope(t, key, w.install("urn:foster:device:edge-gw:SN-0001", 1)), chain, time.Unix(1764000000, 0))
	leaf, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := bundle.ParseEntry(leaf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Envelope, e.Envelope) || len(got.CertChain) != 2 || got.IntegratedTime != 1764000000 {
		t.Fatalf("round trip: %+v", got)
	}
	if !strings.HasPrefix(string(leaf), `{"type":"`+bundle.EntryType+`","integrated_time":1764000000,"envelope":"`) {
		t.Fatalf("leaf encoding changed: %.120s", leaf)
	}
	for name, alt := range map[string][]byte{
		"indented":       indent(leaf),
		"reordered":      []byte(strings.Replace(string(leaf), `{"type":"`+bundle.EntryType+`","integrated_time":1764000000,`, `{"integrated_time":1764000000,"type":"`+bundle.EntryType+`",`, 1)),
		"duplicate time": []byte(strings.Replace(string(leaf), `"integrated_time":1764000000,`, `"integrated_time":1,"integrated_time":1764000000,`, 1)),
	} {
		if _, err := bundle.ParseEntry(alt); !errors.Is(err, bundle.ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

func indent(b []byte) []byte {
	var buf bytes.Buffer
	json.Indent(&buf, b, "", " ")
	return buf.Bytes()
}

func TestParseLogKey(t *testing.T) {
	_, vkey, _ := note.GenerateKey(rand.Reader, logOrigin)
	v, err := bundle.ParseLogKey([]byte("\n" + vkey + "\n"))
	if err != nil || v.Name() != logOrigin {
		t.Fatalf("%v %v", v, err)
	}
	if _, err := bundle.ParseLogKey([]byte("nope")); err == nil {
		t.Fatal("garbage log key accepted")
	}
}

// TestVerifyDelegatedTargets: the installed target is signed by a model's
// delegated role, or by a hashed bin under it; a role signing outside the
// paths delegated to it is refused.
func TestVerifyDelegatedTargets(t *testing.T) {
	w := newWorld(t)
	b, _, _ := w.good(t)
	_, modelKey, _ := ed25519.GenerateKey(rand.Reader)
	_, binKey, _ := ed25519.GenerateKey(rand.Reader)
	_, otherModelKey, _ := ed25519.GenerateKey(rand.Reader)
	top := w.signDelegating(t, 2, w.targetsKey, delegation(t, "models/"+model, modelKey, []string{model + "/*/*"}, 0), nil)
	listing := map[string]targetSpec{w.fw.Name: {w.fw, model}}
	v := w.verifier(t)

	tests := map[string]struct {
		top  []byte
		dels []bundle.DelegatedRole
		want error
	}{
		"model role lists the target": {top, []bundle.DelegatedRole{{"models/" + model, w.signTargets(t, 1, modelKey, listing)}}, nil},
		"hashed bin under the model role": {top, []bundle.DelegatedRole{
			{"models/" + model, w.signDelegating(t, 1, modelKey, delegation(t, "models/"+model+"/bins", binKey, nil, 1), nil)},
			{binName(t, "models/"+model+"/bins", w.fw.Name), w.signTargets(t, 1, binKey, listing)},
		}, nil},
		"model role signed by another key": {top, []bundle.DelegatedRole{{"models/" + model, w.signTargets(t, 1, otherModelKey, listing)}}, bundle.ErrTargetNotSigned},
		"role not delegated this path": {
			w.signDelegating(t, 2, w.targetsKey, delegation(t, "models/other", modelKey, []string{"other/*/*"}, 0), nil),
			[]bundle.DelegatedRole{{"models/other", w.signTargets(t, 1, modelKey, listing)}}, bundle.ErrTargetNotSigned},
		"wrong bin": {top, []bundle.DelegatedRole{
			{"models/" + model, w.signDelegating(t, 1, modelKey, delegation(t, "models/"+model+"/bins", binKey, nil, 1), nil)},
			{otherBin(t, "models/"+model+"/bins", w.fw.Name), w.signTargets(t, 1, binKey, listing)},
		}, bundle.ErrTargetNotSigned},
		"target not in the chain's last role": {top, []bundle.DelegatedRole{{"models/" + model, w.signTargets(t, 1, modelKey, nil)}}, bundle.ErrTargetNotSigned},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			c := *b
			c.TUF.Targets, c.TUF.Delegations = tt.top, tt.dels
			res, err := v.Verify(&c)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			if err == nil && (res.TargetsVersion != 2 || res.TargetsRole != tt.dels[len(tt.dels)-1].Name) {
				t.Fatalf("result %+v", res)
			}
		})
	}
}

func binName(t *testing.T, prefix, path string) string {
	r := (&metadata.SuccinctRoles{BitLength: 1, NamePrefix: prefix}).GetRolesForTarget(path)
	return r[0].Name
}

func otherBin(t *testing.T, prefix, path string) string {
	if binName(t, prefix, path) == prefix+"-0" {
		return prefix + "-1"
	}
	return prefix + "-0"
}
