package bundle

import (
	"bytes"
	"fmt"
	"testing"
)

// FuzzParseEntryFastPath: the fast parser of canonical leaves accepts only
// what the slow path (decode, re-encode, compare) accepts, with the same
// result; what it declines, the slow path decides.
func FuzzParseEntryFastPath(f *testing.F) {
	f.Add([]byte(fmt.Sprintf(`{"type":%q,"integrated_time":1,"envelope":"e30=","cert_chain":["MA=="]}`, EntryType)))
	f.Add([]byte(fmt.Sprintf(`{"type":%q,"integrated_time":1795614104,"envelope":"e30=","cert_chain":["MA==","MQ=="]}`, EntryType)))
	f.Add([]byte(fmt.Sprintf(`{"type":%q,"integrated_time":01,"envelope":"e30=","cert_chain":["MA=="]}`, EntryType)))
	f.Add([]byte(fmt.Sprintf(`{"type":%q,"integrated_time":1,"envelope":"e30\n=","cert_chain":["MA=="]}`, EntryType)))
	f.Add([]byte(fmt.Sprintf(`{"type":%q,"integrated_time":1,"envelope":"e31=","cert_chain":["MA=="]}`, EntryType)))
	f.Fuzz(func(t *testing.T, leaf []byte) {
		fast, ok := parseCanonical(leaf)
		slow, err := parseEntrySlow(leaf)
		if !ok {
			return
		}
		if err != nil {
			t.Fatalf("fast path accepted what the slow path refuses (%v): %q", err, leaf)
		}
		if fast.Type != slow.Type || fast.IntegratedTime != slow.IntegratedTime || !bytes.Equal(fast.Envelope, slow.Envelope) || len(fast.CertChain) != len(slow.CertChain) {
			t.Fatalf("fast %+v, slow %+v", fast, slow)
		}
		for i := range fast.CertChain {
			if !bytes.Equal(fast.CertChain[i], slow.CertChain[i]) {
				t.Fatalf("certificate %d differs", i)
			}
		}
	})
}

// TestParseEntryFastPathTakesRealLeaves: the fast path is taken for what
// Marshal writes (else it would only cost time).
func TestParseEntryFastPathTakesRealLeaves(t *testing.T) {
	e := Entry{Type: EntryType, IntegratedTime: 1795614104, Envelope: []byte(`{"payload":"x"}`), CertChain: [][]byte{{1, 2, 3}, {4, 5}}}
	leaf, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, ok := parseCanonical(leaf)
	if !ok || got.IntegratedTime != e.IntegratedTime || !bytes.Equal(got.Envelope, e.Envelope) || len(got.CertChain) != 2 {
		t.Fatalf("fast path declined a canonical leaf: %v %+v", ok, got)
	}
}
