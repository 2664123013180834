package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
)

var certSeq atomic.Int64

// issuer returns an issue callback for a certificate with key k.
func issuer(k string) func() (store.Issued, error) {
	return func() (store.Issued, error) {
		n := certSeq.Add(1)
		now := time.Now()
		return store.Issued{Serial: fmt.Sprintf("%x", n+1_000_000), NotBefore: now, NotAfter: now.Add(90 * 24 * time.Hour), KeySHA256: k, ChainPEM: "pem"}, nil
	}
}

func newStation(t *testing.T, d *store.DB, name string, quota int64, mutate ...func(*store.Station)) store.Station {
	t.Helper()
	s := store.Station{Name: name, Quota: quota, NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		Models: []string{"edge-gw"}, SerialPattern: `^SN-[0-9]{4,12}$`, CreatedBy: "urn:foster:admin:admin"}
	for _, m := range mutate {
		m(&s)
	}
	st, err := d.CreateStation(context.Background(), s, store.Certificate{Serial: "st-" + name, Subject: "urn:foster:station:" + name,
		NotBefore: s.NotBefore, NotAfter: s.NotAfter, IssuedVia: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestStationPolicyIsEnforcedAtEnrollment(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		newStation(t, d, "line-1", 10)
		newStation(t, d, "old", 10, func(s *store.Station) {
			s.NotBefore, s.NotAfter = time.Now().Add(-2*time.Hour), time.Now().Add(-time.Hour)
		})
		newStation(t, d, "full", 1)
		newStation(t, d, "gone", 10)
		if _, err := d.RevokeStation(ctx, "gone", 5, "cessationOfOperation", "admin"); err != nil {
			t.Fatal(err)
		}
		if _, err := d.RevokeStation(ctx, "gone", 5, "again", "admin"); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second revoke: %v", err)
		}
		if revoked, _ := d.IsRevoked(ctx, "st-gone"); !revoked {
			t.Fatal("revoking a station left its certificate valid")
		}
		if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-0009", Model: "edge-gw", KeySHA256: "k9", Station: "full", JTI: "j-full-1"}, issuer("k9")); err != nil {
			t.Fatal(err)
		}
		tests := []struct {
			name    string
			req     store.EnrollRequest
			wantErr error
		}{
			{"model not allowed", store.EnrollRequest{Serial: "SN-0001", Model: "other", Station: "line-1", JTI: "j1"}, store.ErrStationPolicy},
			{"serial off pattern", store.EnrollRequest{Serial: "XX-0001", Model: "edge-gw", Station: "line-1", JTI: "j2"}, store.ErrStationPolicy},
			{"expired station", store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", Station: "old", JTI: "j3"}, store.ErrStationExpired},
			{"revoked station", store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", Station: "gone", JTI: "j4"}, store.ErrStationRevoked},
			{"unknown station", store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", Station: "nope", JTI: "j5"}, store.ErrStationRevoked},
			{"over quota", store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", Station: "full", JTI: "j6"}, store.ErrStationQuota},
			{"reused token id", store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", Station: "full", JTI: "j-full-1"}, store.ErrStationQuota},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				tt.req.KeySHA256 = "k1"
				if _, err := d.EnrollDevice(ctx, tt.req, issuer("k1")); !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			})
		}
		if ds, _ := d.ListDevices(ctx); len(ds) != 1 {
			t.Fatalf("refused enrollments recorded devices: %+v", ds)
		}
		// Token ids are single use, and a refused enrollment does not spend one.
		ok := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "k1", Station: "line-1", JTI: "j1"}
		if _, err := d.EnrollDevice(ctx, ok, issuer("k1")); err != nil {
			t.Fatal(err)
		}
		ok.Serial = "SN-0002"
		if _, err := d.EnrollDevice(ctx, ok, issuer("k2")); !errors.Is(err, store.ErrTokenUsed) {
			t.Fatalf("reused jti: %v", err)
		}
		st, _ := d.GetStation(ctx, "line-1")
		if st.Used != 1 || st.Remaining() != 9 {
			t.Fatalf("quota after one enrollment: %+v", st)
		}
		certs, _ := d.ListCertificates(ctx, "urn:foster:device:edge-gw:SN-0001")
		if len(certs) != 1 || certs[0].IssuedVia != "station:line-1" {
			t.Fatalf("issued certificate not recorded: %+v", certs)
		}
	})
}

func TestStationQuotaHoldsUnderConcurrency(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		newStation(t, d, "line-1", 5)
		var wg sync.WaitGroup
		var ok atomic.Int64
		for i := range 12 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				serial := fmt.Sprintf("SN-%04d", i)
				_, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: serial, Model: "edge-gw", KeySHA256: serial, Station: "line-1", JTI: serial}, issuer(serial))
				if err == nil {
					ok.Add(1)
				} else if !errors.Is(err, store.ErrStationQuota) {
					t.Errorf("%s: %v", serial, err)
				}
			}()
		}
		wg.Wait()
		st, _ := d.GetStation(ctx, "line-1")
		if ok.Load() != 5 || st.Used != 5 {
			t.Fatalf("%d enrollments succeeded, station used %d; want exactly the quota of 5", ok.Load(), st.Used)
		}
	})
}

func TestCloneIsRefusedUntilReprovisioned(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		id := "urn:foster:device:edge-gw:SN-1"
		tok := func(h string) string {
			if err := d.CreateToken(ctx, store.Token{Hash: h, Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
				t.Fatal(err)
			}
			return h
		}
		first, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "keyA", TokenHash: tok("t1")}, issuer("keyA"))
		if err != nil {
			t.Fatal(err)
		}
		// Same key again (an interrupted enrollment retried): a fresh certificate.
		again, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "keyA", TokenHash: tok("t2")}, issuer("keyA"))
		if err != nil || again.CertSerial == first.CertSerial {
			t.Fatalf("same-key re-enrollment: %+v %v", again, err)
		}
		// Another key: a clone.
		_, err = d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "keyB", TokenHash: tok("t3")}, issuer("keyB"))
		if !errors.Is(err, store.ErrClone) || !errors.Is(err, store.ErrConflict) {
			t.Fatalf("clone: %v", err)
		}
		refusals, _ := d.ListRefusals(ctx, id)
		if len(refusals) != 1 || refusals[0].KeySHA256 != "keyB" || refusals[0].Via != "token" {
			t.Fatalf("refusal not recorded: %+v", refusals)
		}
		// The refused clone did not spend its token: t3 enrolls the key
		// once re-provisioning is allowed (below).
		if _, err := d.AllowReprovision(ctx, id, "urn:foster:admin:admin"); err != nil {
			t.Fatal(err)
		}
		re, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "keyB", TokenHash: "t3"}, issuer("keyB"))
		if err != nil {
			t.Fatalf("re-provisioned enrollment: %v", err)
		}
		if re.KeySHA256 != "keyB" || !re.ReprovisionAllowedAt.IsZero() {
			t.Fatalf("%+v", re)
		}
		for _, serial := range []string{first.CertSerial, again.CertSerial} {
			c, err := d.GetCertificate(ctx, serial)
			if err != nil || c.RevokedAt.IsZero() || c.RevokeReasonCode != 4 {
				t.Fatalf("old certificate %s not revoked as superseded: %+v %v", serial, c, err)
			}
		}
		if c, _ := d.GetCertificate(ctx, re.CertSerial); !c.RevokedAt.IsZero() || c.IssuedVia != "reprovision:token" {
			t.Fatalf("new certificate: %+v", c)
		}
		// The flag is spent: the old key is now the clone.
		if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "keyA", TokenHash: tok("t4")}, issuer("keyA")); !errors.Is(err, store.ErrClone) {
			t.Fatalf("old key after re-provisioning: %v", err)
		}
	})
}

func TestRenewalRules(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		id := "urn:foster:device:edge-gw:SN-1"
		d.CreateToken(ctx, store.Token{Hash: "t", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		dev, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "keyA", TokenHash: "t"}, issuer("keyA"))
		if err != nil {
			t.Fatal(err)
		}
		renewed, err := d.RenewDevice(ctx, store.RenewRequest{DeviceID: id, PresentedSerial: dev.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA"}, issuer("keyA"))
		if err != nil || renewed.CertSerial == dev.CertSerial || renewed.Replayed || renewed.ReplacedCertSerial != dev.CertSerial {
			t.Fatalf("renew: %+v %v", renewed, err)
		}
		// The replaced certificate, until the new one is used, may retry
		// (a lost reply): it gets the same new certificate, nothing issued.
		again, err := d.RenewDevice(ctx, store.RenewRequest{DeviceID: id, PresentedSerial: dev.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA"}, issuer("keyA"))
		if err != nil || !again.Replayed || again.CertSerial != renewed.CertSerial {
			t.Fatalf("retry with the replaced certificate: %+v %v", again, err)
		}
		exp := store.RenewRequest{DeviceID: id, PresentedSerial: renewed.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA", Expired: true, JTI: "r1", JTIExpiresAt: time.Now().Add(time.Minute)}
		if _, err := d.RenewDevice(ctx, exp, issuer("keyA")); err != nil {
			t.Fatalf("renew after expiry: %v", err)
		}
		if _, err := d.RenewDevice(ctx, exp, issuer("keyA")); !errors.Is(err, store.ErrTokenUsed) {
			t.Fatalf("replayed renew-expired token: %v", err)
		}
		tests := []struct {
			name    string
			req     store.RenewRequest
			wantErr error
		}{
			{"unknown device", store.RenewRequest{DeviceID: "urn:foster:device:edge-gw:SN-9", PresentedSerial: dev.CertSerial, KeySHA256: "keyA"}, store.ErrNotFound},
			{"certificate of another subject", store.RenewRequest{DeviceID: id, PresentedSerial: "unknown", PresentedKeySHA256: "keyA", KeySHA256: "keyA"}, store.ErrSuperseded},
			{"certificate the renewal before last replaced", store.RenewRequest{DeviceID: id, PresentedSerial: dev.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA"}, store.ErrSuperseded},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				if _, err := d.RenewDevice(ctx, tt.req, issuer("keyA")); !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			})
		}
		if _, err := d.AllowReprovision(ctx, id, "admin"); err != nil {
			t.Fatal(err)
		}
		exp.JTI = "r2"
		if _, err := d.RenewDevice(ctx, exp, issuer("keyA")); !errors.Is(err, store.ErrReprovisioning) {
			t.Fatalf("renew-expired while re-provisioning: %v", err)
		}
		revoked, err := d.RevokeDevice(ctx, id, 1, "keyCompromise", "urn:foster:admin:admin")
		if err != nil || revoked.Status != store.DeviceRevoked || revoked.RevokeReason != "keyCompromise" {
			t.Fatalf("revoke: %+v %v", revoked, err)
		}
		if _, err := d.RevokeDevice(ctx, id, 1, "keyCompromise", "admin"); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("second revoke: %v", err)
		}
		for _, expired := range []bool{false, true} {
			r := store.RenewRequest{DeviceID: id, PresentedSerial: dev.CertSerial, PresentedKeySHA256: "keyA", KeySHA256: "keyA", Expired: expired, JTI: fmt.Sprint("r3", expired)}
			if _, err := d.RenewDevice(ctx, r, issuer("keyA")); !errors.Is(err, store.ErrDeviceRevoked) {
				t.Fatalf("revoked device renewing (expired=%v): %v", expired, err)
			}
		}
		all, _ := d.ListCertificates(ctx, id)
		rev, _ := d.RevokedCertificates(ctx)
		if len(all) != 3 || len(rev) != 3 {
			t.Fatalf("%d certificates, %d revoked; want all 3 revoked", len(all), len(rev))
		}
		for _, c := range rev {
			// The first was superseded by the renewal after expiry; the
			// others revoked with the device.
			if want := map[bool]int{true: store.ReasonSuperseded, false: 1}[c.Serial == dev.CertSerial]; c.RevokeReasonCode != want {
				t.Fatalf("%+v: want reason %d", c, want)
			}
			if r, _ := d.IsRevoked(ctx, c.Serial); !r {
				t.Fatalf("IsRevoked(%s) = false", c.Serial)
			}
		}
		// A revoked device cannot enroll again either, and the attempt is recorded.
		d.CreateToken(ctx, store.Token{Hash: "t2", Serial: "SN-1", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: "SN-1", Model: "edge-gw", KeySHA256: "keyA", TokenHash: "t2"}, issuer("keyA")); !errors.Is(err, store.ErrDeviceRevoked) {
			t.Fatalf("revoked device enrolling: %v", err)
		}
		if rs, _ := d.ListRefusals(ctx, id); len(rs) != 1 {
			t.Fatalf("refusals: %+v", rs)
		}
	})
}

func TestCRLIsMonotonic(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		if _, err := d.GetCRL(ctx); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("empty store: %v", err)
		}
		now := time.Now().UTC().Truncate(time.Second)
		for _, n := range []int64{1, 3, 2} {
			if err := d.StoreCRL(ctx, store.CRL{Number: n, ThisTime: now, ExpiresAt: now.Add(time.Hour), Duration: time.Hour, DER: []byte{byte(n)}}); err != nil {
				t.Fatal(err)
			}
		}
		c, err := d.GetCRL(ctx)
		if err != nil || c.Number != 3 || c.DER[0] != 3 || c.Duration != time.Hour || !c.ExpiresAt.Equal(now.Add(time.Hour)) {
			t.Fatalf("%+v %v", c, err)
		}
	})
}

// TestCheckEnrollAgreesWithEnrollDevice: the read-only pre-check refuses
// what EnrollDevice would refuse, records clone attempts, and writes nothing
// else.
func TestCheckEnrollAgreesWithEnrollDevice(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		newStation(t, d, "line-1", 2)
		ok := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kA", Station: "line-1", JTI: "j1"}
		if err := d.CheckEnroll(ctx, ok); err != nil {
			t.Fatal(err)
		}
		if _, err := d.EnrollDevice(ctx, ok, issuer("kA")); err != nil {
			t.Fatal(err)
		}
		for _, tt := range []struct {
			name    string
			req     store.EnrollRequest
			wantErr error
		}{
			{"used token id", store.EnrollRequest{Serial: "SN-0002", Model: "edge-gw", KeySHA256: "kB", Station: "line-1", JTI: "j1"}, store.ErrTokenUsed},
			{"clone", store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kZ", Station: "line-1", JTI: "j2"}, store.ErrClone},
			{"serial off pattern", store.EnrollRequest{Serial: "X", Model: "edge-gw", KeySHA256: "kB", Station: "line-1", JTI: "j3"}, store.ErrStationPolicy},
			{"unknown admin token", store.EnrollRequest{Serial: "SN-0002", Model: "edge-gw", KeySHA256: "kB", TokenHash: "nope"}, store.ErrTokenInvalid},
		} {
			t.Run(tt.name, func(t *testing.T) {
				if err := d.CheckEnroll(ctx, tt.req); !errors.Is(err, tt.wantErr) {
					t.Fatalf("got %v, want %v", err, tt.wantErr)
				}
			})
		}
		if st, _ := d.GetStation(ctx, "line-1"); st.Used != 1 {
			t.Fatalf("pre-checks charged the quota: %+v", st)
		}
		if rs, _ := d.ListRefusals(ctx, "urn:foster:device:edge-gw:SN-0001"); len(rs) != 1 || rs[0].KeySHA256 != "kZ" {
			t.Fatalf("clone pre-check not recorded: %+v", rs)
		}
	})
}

func TestDeviceAccessSeesRevocationAtOnce(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		tok := store.Token{Hash: "acc", Serial: "SN-ACC", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour), CreatedBy: "admin"}
		if err := d.CreateToken(ctx, tok); err != nil {
			t.Fatal(err)
		}
		dev, err := enrollToken(ctx, d, "acc", "SN-ACC", "edge-gw")
		if err != nil {
			t.Fatal(err)
		}
		check := func(id, serial string, want store.DeviceAccess) {
			t.Helper()
			got, err := d.CheckDeviceAccess(ctx, id, serial)
			if err != nil || got != want {
				t.Fatalf("access(%s, %s) = %+v, %v; want %+v", id, serial, got, err, want)
			}
		}
		check(dev.ID, dev.CertSerial, store.DeviceAccess{Enrolled: true, Status: store.DeviceActive, CertCurrent: true})
		check("urn:foster:device:edge-gw:SN-NONE", "ffff", store.DeviceAccess{})
		if _, err := d.RevokeDevice(ctx, dev.ID, 1, "keyCompromise", "urn:foster:admin:admin"); err != nil {
			t.Fatal(err)
		}
		check(dev.ID, dev.CertSerial, store.DeviceAccess{Enrolled: true, Status: store.DeviceRevoked, CertRevoked: true, CertCurrent: true})
	})
}
