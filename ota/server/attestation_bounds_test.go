package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store"
)

// TestAttestationClaimsCannotExhaustTheSequenceOrInventSnapshots: a device
// (or a thief of its key) sending sequence 2^62 would have left no room for
// any later attestation of that device; a claimed snapshot version of 2^62
// was accepted. Both are refused with 400 and store nothing, and the device
// attests normally afterwards.
func TestAttestationClaimsCannotExhaustTheSequenceOrInventSnapshots(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	dev, key := f.enrolled("SN-1")
	rel := f.release("1.0.0", []byte("firmware one"))
	me := identity.Device("edge-gw", "SN-1").URI()
	signer, err := signing.FromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	claim := func(seq, snapshot int64) []byte {
		env, err := attest.Sign(signer, attest.Install{
			Device: me, New: attest.Target{Name: rel.TargetPath, SHA256: rel.SHA256, Length: rel.Length, Version: rel.Version, ReleaseCounter: rel.Counter},
			Outcome: attest.OutcomeCommitted, Sequence: seq, SnapshotVersion: snapshot, Time: time.Now(),
		})
		if err != nil {
			t.Fatal(err)
		}
		return env
	}
	stored := func() int {
		as, err := f.in.Store.ListAttestations(context.Background(), "")
		if err != nil {
			t.Fatal(err)
		}
		return len(as)
	}
	refuse := func(name string, env []byte) {
		t.Helper()
		before := stored()
		if r := f.do(dev, "POST", "/v1/attestations", env); r.status != 400 || r.code() != "bad_request" {
			t.Fatalf("%s: got %d %s, want 400 bad_request", name, r.status, r.body)
		}
		if stored() != before {
			t.Fatalf("%s: refused attestation stored", name)
		}
	}
	refuse("sequence 2^62", claim(1<<62, 0))
	refuse("snapshot version 2^62", claim(1, 1<<62))
	if r := f.do(dev, "POST", "/v1/attestations", claim(1, 0)); r.status != 201 {
		t.Fatalf("honest attestation after the refusals: %d %s", r.status, r.body)
	}
	refuse("sequence one past the step", claim(1+store.MaxSequenceStep+1, 0))
	if r := f.do(dev, "POST", "/v1/attestations", claim(1+store.MaxSequenceStep, 0)); r.status != 201 {
		t.Fatalf("sequence exactly one step above the last: %d %s", r.status, r.body)
	}
}
