package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

var testSeed = strings.Repeat("ab", SeedBytes)

// TestBucketIsTheDocumentedFormula recomputes the bucket from its definition
// (docs/ROLLOUTS.md), so an auditor's or a test's outside check agrees with
// the device's.
func TestBucketIsTheDocumentedFormula(t *testing.T) {
	seed, _ := hex.DecodeString(testSeed)
	for i := range 50 {
		urn := fmt.Sprintf("urn:foster:device:gw:SN%04d", i)
		sum := sha256.Sum256(append(append([]byte{}, seed...), urn...))
		want := int(binary.BigEndian.Uint64(sum[:8]) % 10000)
		if got := Bucket(seed, urn); got != want {
			t.Fatalf("Bucket(%s) = %d, want %d", urn, got, want)
		}
	}
}

// TestShareSelectsAboutThatFractionAndWideningKeepsEveryone: buckets are
// spread, and a device offered at share s stays offered at every s' > s.
func TestShareSelectsAboutThatFractionAndWideningKeepsEveryone(t *testing.T) {
	const n = 20000
	terms := Terms{ID: "r1", Seed: testSeed}
	prev := map[string]bool{}
	for _, share := range []int{100, 1000, 5000, 10000} {
		terms.Share = share
		in := 0
		for i := range n {
			urn := fmt.Sprintf("urn:foster:device:gw:SN%05d", i)
			ok := terms.Decide(urn, nil).Eligible
			if prev[urn] && !ok {
				t.Fatalf("widening to %d dropped %s", share, urn)
			}
			if ok {
				in++
				prev[urn] = true
			}
		}
		want := n * share / Scale
		if diff := in - want; diff < -want/10-50 || diff > want/10+50 {
			t.Fatalf("share %d selected %d of %d devices, want about %d", share, in, n, want)
		}
	}
}

func TestGroupsRestrictTheRollout(t *testing.T) {
	terms := Terms{ID: "r1", Seed: testSeed, Share: Scale, Groups: []string{"canary"}}
	urn := "urn:foster:device:gw:SN1"
	if d := terms.Decide(urn, nil); d.Eligible {
		t.Fatal("a device in the default group was offered a rollout for group canary")
	}
	if d := terms.Decide(urn, []string{"lab", "canary"}); !d.Eligible {
		t.Fatalf("a canary device was refused: %s", d.Reason)
	}
	terms.Groups = []string{DefaultGroup}
	if d := terms.Decide(urn, nil); !d.Eligible {
		t.Fatalf("a device with no membership is not in the default group: %s", d.Reason)
	}
}

func TestZeroShareOffersNothing(t *testing.T) {
	terms := Terms{Seed: testSeed, Share: 0, State: "held"}
	for i := range 1000 {
		if terms.Decide(fmt.Sprintf("urn:foster:device:gw:%d", i), nil).Eligible {
			t.Fatal("a held release (share 0) was offered")
		}
	}
}

// TestMalformedTermsOfferNothing: signed but malformed terms (a bug or a
// hostile model key holder) must not fail open.
func TestMalformedTermsOfferNothing(t *testing.T) {
	bad := []Terms{
		{Seed: "zz", Share: Scale},
		{Seed: testSeed[:10], Share: Scale},
		{Seed: testSeed, Share: Scale + 1},
		{Seed: testSeed, Share: -1},
		{ID: "../x", Seed: testSeed, Share: Scale},
		{Seed: testSeed, Share: Scale, Groups: []string{"a b"}},
	}
	for _, terms := range bad {
		if d := terms.Decide("urn:foster:device:gw:1", nil); d.Eligible || d.Reason == "" {
			t.Fatalf("malformed terms %+v decided %+v", terms, d)
		}
	}
}

func TestCustomRoundTripKeepsOtherMembers(t *testing.T) {
	custom := []byte(`{"model":"gw","version":"1.2.0","release_counter":7,"hardware_ids":[]}`)
	if _, ok, err := FromCustom(custom); ok || err != nil {
		t.Fatalf("custom without terms: ok=%v err=%v", ok, err)
	}
	terms := &Terms{ID: "r1", Seed: testSeed, Share: 2500, Groups: []string{"canary"}, State: "running"}
	withTerms, err := WithTerms(custom, terms)
	if err != nil {
		t.Fatal(err)
	}
	got, ok, err := FromCustom(withTerms)
	if err != nil || !ok || got.Share != 2500 || got.ID != "r1" || got.Groups[0] != "canary" {
		t.Fatalf("FromCustom = %+v %v %v", got, ok, err)
	}
	var m map[string]any
	if err := json.Unmarshal(withTerms, &m); err != nil || m["version"] != "1.2.0" || m["release_counter"] != float64(7) {
		t.Fatalf("other members changed: %s", withTerms)
	}
	cleared, err := WithTerms(withTerms, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := FromCustom(cleared); ok {
		t.Fatalf("terms not removed: %s", cleared)
	}
	if _, err := WithTerms(custom, &Terms{Seed: "x"}); err == nil {
		t.Fatal("invalid terms were written")
	}
	if _, _, err := FromCustom([]byte(`{"rollout":{"seed":"x","share":1}}`)); err == nil {
		t.Fatal("invalid signed terms were accepted")
	}
}

func TestMembershipPath(t *testing.T) {
	p := MembershipPath("gw", "SN1")
	if p != "gw/_groups/SN1" || !IsMembershipPath(p) {
		t.Fatalf("MembershipPath = %q", p)
	}
	for _, s := range []string{"gw/1.0.0/fw.bin", "gw", "gw/_groups"} {
		if IsMembershipPath(s) {
			t.Fatalf("%q taken for a membership path", s)
		}
	}
	m, err := ParseMembership([]byte(`{"groups":["canary","lab"]}`))
	if err != nil || len(m.Groups) != 2 {
		t.Fatalf("ParseMembership = %+v %v", m, err)
	}
	if _, err := ParseMembership([]byte(`{"groups":["a/b"]}`)); err == nil {
		t.Fatal("invalid group name accepted")
	}
}

func FuzzFromCustom(f *testing.F) {
	f.Add([]byte(`{"rollout":{"id":"r1","seed":"` + testSeed + `","share":5000,"groups":["canary"]}}`))
	f.Add([]byte(`{"model":"gw"}`))
	f.Fuzz(func(t *testing.T, custom []byte) {
		terms, ok, err := FromCustom(custom)
		if err != nil || !ok {
			return
		}
		if terms.Validate() != nil {
			t.Fatalf("FromCustom returned invalid terms %+v", terms)
		}
		_ = terms.Decide("urn:foster:device:gw:1", nil)
	})
}
