package bundle_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/bundle"
)

// TestVerifyEntryRemembersChainsOnlyWhileValid: a chain verified for one
// entry is remembered, but an entry of the same chain logged after the
// device certificate expired (or before it was issued) is refused, as a
// full verification at that time would refuse it.
func TestVerifyEntryRemembersChainsOnlyWhileValid(t *testing.T) {
	w := newWorld(t)
	now := time.Now()
	key, chain := w.issue(t, "urn:foster:device:"+model+":SN-0009", "SN-0009", now.Add(-time.Hour), now.Add(24*time.Hour))
	v := w.verifier(t)
	urn := "urn:foster:device:" + model + ":SN-0009"
	entry := func(seq int64, at time.Time) bundle.Entry {
		return bundle.NewEntry(w.envelope(t, key, w.install(urn, seq)), chain, at)
	}
	for i, at := range []time.Time{now, now.Add(time.Hour)} {
		r, err := v.VerifyEntry(entry(int64(i+1), at))
		if err != nil {
			t.Fatalf("entry at %s: %v", at, err)
		}
		if r.Device.URI() != urn || r.Statement.Sequence != int64(i+1) || !r.IntegratedTime.Equal(at.Truncate(time.Second)) {
			t.Fatalf("result: %+v", r)
		}
	}
	for _, at := range []time.Time{now.Add(48 * time.Hour), now.Add(-48 * time.Hour)} {
		if _, err := v.VerifyEntry(entry(3, at)); !errors.Is(err, bundle.ErrUnknownCA) {
			t.Fatalf("entry logged at %s, outside the certificate's validity: %v, want unknown CA", at, err)
		}
	}
}

// TestVerifyEntryRefusesAnotherDevicesSignature: an entry whose envelope
// is signed by another device's key than the certificate logged with it,
// or whose statement names another device, is refused even when the chain
// was verified (and remembered) before.
func TestVerifyEntryRefusesAnotherDevicesSignature(t *testing.T) {
	w := newWorld(t)
	key1, chain1 := w.device(t, model, "SN-0001")
	key2, _ := w.device(t, model, "SN-0002")
	v := w.verifier(t)
	urn1 := "urn:foster:device:" + model + ":SN-0001"
	if _, err := v.VerifyEntry(bundle.NewEntry(w.envelope(t, key1, w.install(urn1, 1)), chain1, time.Now())); err != nil {
		t.Fatal(err)
	}
	_, err := v.VerifyEntry(bundle.NewEntry(w.envelope(t, key2, w.install(urn1, 2)), chain1, time.Now()))
	if !errors.Is(err, bundle.ErrBadSignature) {
		t.Fatalf("signed by another key: %v", err)
	}
	_, err = v.VerifyEntry(bundle.NewEntry(w.envelope(t, key1, w.install("urn:foster:device:"+model+":SN-0002", 3)), chain1, time.Now()))
	if !errors.Is(err, bundle.ErrBadSignature) || !strings.Contains(err.Error(), "names") {
		t.Fatalf("names another device: %v", err)
	}
}
