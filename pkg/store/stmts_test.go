package store_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
)

// TestHotPathsRunOnlyStatementsPreparedAtOpen: enrollment (token and
// station, first and repeated, refused for quota), its early check,
// attestation ingest and the per-request checks run no query that Open did
// not prepare.
func TestHotPathsRunOnlyStatementsPreparedAtOpen(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		var mu sync.Mutex
		var missed []string
		store.OnUnprepared(d, func(q string) {
			mu.Lock()
			defer mu.Unlock()
			missed = append(missed, q)
		})
		ctx := setup(t, d)
		newStation(t, d, "line-1", 2)
		if err := d.CreateToken(ctx, store.Token{Hash: "h1", Serial: "SN-0001", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour), CreatedBy: "admin"}); err != nil {
			t.Fatal(err)
		}
		byToken := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "k1", TokenHash: "h1"}
		if err := d.CheckEnroll(ctx, byToken); err != nil {
			t.Fatal(err)
		}
		dev, err := d.EnrollDevice(ctx, byToken, issuer("k1"))
		if err != nil {
			t.Fatal(err)
		}
		byStation := store.EnrollRequest{Serial: "SN-0002", Model: "edge-gw", KeySHA256: "k2", Station: "line-1", JTI: "j1"}
		if err := d.CheckEnroll(ctx, byStation); err != nil {
			t.Fatal(err)
		}
		if _, err := d.EnrollDevice(ctx, byStation, issuer("k2")); err != nil {
			t.Fatal(err)
		}
		byStation.JTI = "j2" // the same device and key again: re-enrollment
		if _, err := d.EnrollDevice(ctx, byStation, issuer("k2")); err != nil {
			t.Fatal(err)
		}
		over := store.EnrollRequest{Serial: "SN-0003", Model: "edge-gw", KeySHA256: "k3", Station: "line-1", JTI: "j3"}
		if _, err := d.EnrollDevice(ctx, over, issuer("k3")); !errors.Is(err, store.ErrStationQuota) {
			t.Fatalf("over quota: %v", err)
		}
		a := store.Attestation{DeviceID: dev.ID, Sequence: 1, Outcome: "committed", TargetPath: "edge-gw/1.0.1/fw.bin", SHA256: "aa", Version: "1.0.1", Counter: 1, Envelope: []byte("{}")}
		if _, err := d.AddAttestation(ctx, a); err != nil {
			t.Fatal(err)
		}
		a.Sequence, a.Outcome = 2, "rolled-back"
		if _, err := d.AddAttestation(ctx, a); err != nil {
			t.Fatal(err)
		}
		if _, err := d.GetModel(ctx, "edge-gw"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.GetDevice(ctx, dev.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := d.IsRevoked(ctx, dev.CertSerial); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CheckDeviceAccess(ctx, dev.ID, dev.CertSerial); err != nil {
			t.Fatal(err)
		}
		if _, err := d.CheckCredentialAccess(ctx, "st-line-1"); err != nil {
			t.Fatal(err)
		}
		if _, _, err := d.PublishedTUF(ctx); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, q := range missed {
			t.Errorf("run without a statement prepared at Open: %s", q)
		}
	})
}
