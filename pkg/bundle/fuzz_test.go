package bundle_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/bundle"
)

// Seeds: testdata/fuzz/Fuzz*/ holds real bundles and log entries written by
// fosterd (e2e), plus the in-memory ones added here.

var classes = []error{bundle.ErrMalformed, bundle.ErrBadSignature, bundle.ErrUnknownCA, bundle.ErrNotInLog, bundle.ErrCheckpointSignature, bundle.ErrTargetNotSigned}

func classified(err error) bool {
	for _, c := range classes {
		if errors.Is(err, c) {
			return true
		}
	}
	return false
}

// FuzzParseBundle: any input either parses into a bundle whose entry
// re-encodes canonically, or fails with ErrMalformed; verification of
// whatever parses ends in one of the documented classes, never a panic.
func FuzzParseBundle(f *testing.F) {
	w := newWorld(f)
	b, _, _ := w.good(f)
	raw, err := b.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(`{"media_type":"` + bundle.MediaType + `"}`))
	v := w.verifier(f)
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := bundle.Parse(raw)
		if err != nil {
			if !errors.Is(err, bundle.ErrMalformed) {
				t.Fatalf("untyped parse error: %v", err)
			}
			return
		}
		e, err := b.Entry()
		if err != nil {
			t.Fatalf("parsed bundle has no entry: %v", err)
		}
		leaf, err := e.Marshal()
		if err != nil {
			t.Fatalf("entry of a parsed bundle does not encode: %v", err)
		}
		if _, err := bundle.ParseEntry(leaf); err != nil {
			t.Fatalf("canonical entry does not parse: %v", err)
		}
		if _, err := v.Verify(b); err != nil && !classified(err) {
			t.Fatalf("unclassified verification error: %v", err)
		}
	})
}

// FuzzParseEntry: log entries come from the operator's database; only the
// canonical encoding parses, and it round-trips byte for byte.
func FuzzParseEntry(f *testing.F) {
	w := newWorld(f)
	key, chain := w.device(f, model, "SN-0001")
	e := bundle.NewEntry(w.envelope(f, key, w.install("urn:foster:device:edge-gw:SN-0001", 1)), chain, time.Unix(1764000000, 0))
	leaf, err := e.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(leaf)
	f.Add([]byte(fmt.Sprintf(`{"type":%q,"integrated_time":1,"envelope":"e30=","cert_chain":["MA=="]}`, bundle.EntryType)))
	f.Fuzz(func(t *testing.T, leaf []byte) {
		e, err := bundle.ParseEntry(leaf)
		if err != nil {
			if !errors.Is(err, bundle.ErrMalformed) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		again, err := e.Marshal()
		if err != nil || string(again) != string(leaf) {
			t.Fatalf("accepted a non-canonical entry: %v", err)
		}
		if _, err := e.Certificates(); err != nil && !errors.Is(err, bundle.ErrMalformed) {
			t.Fatalf("untyped certificate error: %v", err)
		}
	})
}
