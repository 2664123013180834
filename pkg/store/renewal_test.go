package store_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// renewFixture enrolls SN-0001 with keyA and renews it once (online): cert
// A is replaced by cert B, both for keyA, and B is not used yet.
func renewFixture(t *testing.T, d *store.DB) (ctx context.Context, a, b store.Device) {
	t.Helper()
	ctx = setup(t, d)
	d.CreateToken(ctx, store.Token{Hash: "t", Serial: "SN-0001", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
	a, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "keyA", TokenHash: "t"}, issuer("keyA"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := d.RenewDevice(ctx, store.RenewRequest{DeviceID: a.ID, PresentedSerial: a.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA"}, issuer("keyA"))
	if err != nil {
		t.Fatal(err)
	}
	return ctx, a, res.Device
}

// A thief holding an older certificate of the device (and its key) asks
// to renew under the thief's own key: before this rule the device's
// recorded key moved to the thief's, and every later clone check believed
// the thief. Online and after expiry, it is refused, recorded, and changes
// nothing.
func TestRenewalWithStolenOldCertCannotTakeOverKey(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx, a, b := renewFixture(t, d)
		for i, r := range []store.RenewRequest{
			{DeviceID: a.ID, PresentedSerial: a.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "thief"},
			{DeviceID: a.ID, PresentedSerial: b.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "thief"},
			{DeviceID: a.ID, PresentedSerial: a.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "thief", Expired: true, JTI: "x1", JTIExpiresAt: time.Now().Add(time.Minute)},
		} {
			issued := false
			_, err := d.RenewDevice(ctx, r, func() (store.Issued, error) { issued = true; return issuer("thief")() })
			if !errors.Is(err, store.ErrKeyMismatch) || issued {
				t.Fatalf("attempt %d: got %v (issued %v), want ErrKeyMismatch and nothing issued", i, err, issued)
			}
		}
		dev, err := d.GetDevice(ctx, a.ID)
		if err != nil || dev.KeySHA256 != "keyA" || dev.CertSerial != b.CertSerial || dev.ReplacedCertSerial != a.CertSerial {
			t.Fatalf("device changed: %+v %v", dev, err)
		}
		refusals, _ := d.ListRefusals(ctx, a.ID)
		if len(refusals) != 3 || refusals[0].KeySHA256 != "thief" || !strings.HasPrefix(refusals[0].Reason, "key_mismatch") || refusals[2].Via != "renew-expired" {
			t.Fatalf("refusals: %+v", refusals)
		}
		if certs, _ := d.ListCertificates(ctx, a.ID); len(certs) != 2 {
			t.Fatalf("certificates: %+v", certs)
		}
		// The refused renew-expired did not spend its token id either.
		if _, err := d.RenewDevice(ctx, store.RenewRequest{DeviceID: a.ID, PresentedSerial: b.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA",
			Expired: true, JTI: "x1", JTIExpiresAt: time.Now().Add(time.Minute)}, issuer("keyA")); err != nil {
			t.Fatal(err)
		}
	})
}

// Once the device has used its new certificate, the replaced one neither
// authenticates nor renews, and it is revoked as superseded (CRL reason 4).
func TestOldCertAfterNewOneUsedIsSuperseded(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx, a, b := renewFixture(t, d)
		acc, err := d.CheckDeviceAccess(ctx, a.ID, a.CertSerial)
		if err != nil || !acc.CertReplaced || acc.CertCurrent || acc.CertRevoked {
			t.Fatalf("replaced certificate before the new one is used: %+v %v", acc, err)
		}
		acc, err = d.CheckDeviceAccess(ctx, b.ID, b.CertSerial)
		if err != nil || !acc.CertCurrent || !acc.Pending {
			t.Fatalf("new certificate: %+v %v", acc, err)
		}
		// First use of B: A is superseded, once.
		if n, err := d.SupersedeReplaced(ctx, b.ID, b.CertSerial); n != 1 || err != nil {
			t.Fatalf("supersede: %d %v", n, err)
		}
		if n, err := d.SupersedeReplaced(ctx, b.ID, b.CertSerial); n != 0 || err != nil {
			t.Fatalf("second supersede: %d %v", n, err)
		}
		acc, err = d.CheckDeviceAccess(ctx, a.ID, a.CertSerial)
		if err != nil || !acc.CertRevoked || acc.CertReplaced {
			t.Fatalf("old certificate after the new one was used: %+v %v", acc, err)
		}
		c, _ := d.GetCertificate(ctx, a.CertSerial)
		if c.RevokeReasonCode != store.ReasonSuperseded {
			t.Fatalf("old certificate: %+v", c)
		}
		if _, err := d.RenewDevice(ctx, store.RenewRequest{DeviceID: a.ID, PresentedSerial: a.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA"}, issuer("keyA")); !errors.Is(err, store.ErrSuperseded) {
			t.Fatalf("renewal with the superseded certificate: %v", err)
		}
		if acc, _ := d.CheckDeviceAccess(ctx, b.ID, b.CertSerial); !acc.CertCurrent || acc.Pending || acc.CertRevoked {
			t.Fatalf("current certificate after superseding: %+v", acc)
		}
	})
}

// A renewal whose reply was lost is retried with the certificate the device
// still holds: it gets the same new certificate back; if that one expired
// unused meanwhile, a fresh one is issued and the unused one superseded.
func TestLostRenewalReplyRetryWithOldCert(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx, a, b := renewFixture(t, d)
		retry := store.RenewRequest{DeviceID: a.ID, PresentedSerial: a.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA"}
		res, err := d.RenewDevice(ctx, retry, func() (store.Issued, error) { t.Fatal("a replay issued a certificate"); return store.Issued{}, nil })
		if err != nil || !res.Replayed || res.CertSerial != b.CertSerial || res.CertPEM != b.CertPEM {
			t.Fatalf("retry: %+v %v", res, err)
		}
		d.SetClock(func() time.Time { return time.Now().Add(91 * 24 * time.Hour) })
		retry.Expired, retry.JTI, retry.JTIExpiresAt = true, "late", time.Now().Add(92*24*time.Hour)
		res, err = d.RenewDevice(ctx, retry, issuer("keyA"))
		if err != nil || res.Replayed || res.CertSerial == b.CertSerial || res.ReplacedCertSerial != a.CertSerial || res.Superseded != 1 {
			t.Fatalf("retry after the unused certificate expired: %+v %v", res, err)
		}
		if c, _ := d.GetCertificate(ctx, b.CertSerial); c.RevokeReasonCode != store.ReasonSuperseded {
			t.Fatalf("unused certificate: %+v", c)
		}
	})
}

// Station token ids are chosen by each station: one station's id must not
// spend another's (used_token_ids was keyed by jti alone).
func TestTokenIDOfOneIssuerDoesNotSpendAnothers(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		newStation(t, d, "line-1", 10)
		newStation(t, d, "line-2", 10)
		testTokenIDsPerIssuer(t, ctx, d)
	})
}

func testTokenIDsPerIssuer(t *testing.T, ctx context.Context, d *store.DB) {
	t.Helper()
	enroll := func(station, jti, serial string) error {
		_, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: serial, Model: "edge-gw", KeySHA256: "k-" + serial, Station: station,
			JTI: jti, JTIExpiresAt: time.Now().Add(time.Hour)}, issuer("k-"+serial))
		return err
	}
	if err := enroll("line-1", "j1", "SN-0001"); err != nil {
		t.Fatal(err)
	}
	if err := enroll("line-2", "j1", "SN-0002"); err != nil {
		t.Fatalf("same token id from another station: %v", err)
	}
	if err := d.CheckEnroll(ctx, store.EnrollRequest{Serial: "SN-0003", Model: "edge-gw", KeySHA256: "k", Station: "line-1", JTI: "j1"}); !errors.Is(err, store.ErrTokenUsed) {
		t.Fatalf("check of a spent token id: %v", err)
	}
	if err := enroll("line-1", "j1", "SN-0003"); !errors.Is(err, store.ErrTokenUsed) {
		t.Fatalf("same station, same token id again: %v", err)
	}
}

// A store created when used_token_ids was keyed by jti alone is re-keyed by
// (issuer, jti) when opened, keeping the ids already spent.
func TestTokenIDsTableKeyedByJTIIsMigrated(t *testing.T) {
	far := time.Now().Add(time.Hour).UnixNano()
	legacy := `CREATE TABLE used_token_ids (jti TEXT PRIMARY KEY, issuer TEXT NOT NULL, expires_at BIGINT NOT NULL, used_at BIGINT NOT NULL);
INSERT INTO used_token_ids (jti, issuer, expires_at, used_at) VALUES ('j1', 'urn:foster:station:line-1', ` + strconv.FormatInt(far, 10) + `, 1)`
	storetest.EachFrom(t, legacy, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		newStation(t, d, "line-1", 10)
		newStation(t, d, "line-2", 10)
		if err := d.CheckEnroll(ctx, store.EnrollRequest{Serial: "SN-0009", Model: "edge-gw", KeySHA256: "k", Station: "line-1", JTI: "j1"}); !errors.Is(err, store.ErrTokenUsed) {
			t.Fatalf("token id spent before the migration: %v", err)
		}
		// j1 of line-1 is taken by the legacy row: use another id there.
		if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-0002", Model: "edge-gw", KeySHA256: "k2", Station: "line-2", JTI: "j1",
			JTIExpiresAt: time.Now().Add(time.Hour)}, issuer("k2")); err != nil {
			t.Fatalf("same token id from another station after the migration: %v", err)
		}
	})
}
