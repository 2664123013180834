package store_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// storeState is everything an enrollment, a refusal or a replay could
// change: devices, certificates, refusals, stations (quota) and the audit log.
type storeState struct {
	devices  []store.Device
	certs    []store.Certificate
	refusals []store.Refusal
	stations []store.Station
	audit    int
}

func stateOf(t *testing.T, d *store.DB, ids ...string) storeState {
	t.Helper()
	ctx := context.Background()
	var s storeState
	var err error
	if s.devices, err = d.ListDevices(ctx); err != nil {
		t.Fatal(err)
	}
	if s.certs, err = d.ListCertificates(ctx, ""); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		rs, err := d.ListRefusals(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		s.refusals = append(s.refusals, rs...)
	}
	if s.stations, err = d.ListStations(ctx); err != nil {
		t.Fatal(err)
	}
	ev, err := d.ListAudit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.audit = len(ev)
	return s
}

func (s storeState) mustEqual(t *testing.T, other storeState, what string) {
	t.Helper()
	if !reflect.DeepEqual(s, other) {
		t.Fatalf("%s changed the store:\nbefore %+v\nafter  %+v", what, s, other)
	}
}

// retry runs a retried enrollment the way the API does: the read-only
// pre-check, and on its refusal, the replay check.
func retry(t *testing.T, d *store.DB, r store.EnrollRequest) (store.Device, bool, error) {
	t.Helper()
	ctx := context.Background()
	refusal := d.CheckEnroll(ctx, r)
	if refusal == nil {
		t.Fatalf("retry of %+v passed the pre-check: the token was not spent", r)
	}
	dev, ok, err := d.ReplayEnrollment(ctx, r, refusal)
	if err != nil {
		t.Fatal(err)
	}
	return dev, ok, refusal
}

// TestEnrollRetryAfterLostResponse: a device whose enrollment committed but
// never heard back retries with the same token and key, and gets the same
// certificate back, without a second certificate, token or quota unit.
func TestEnrollRetryAfterLostResponse(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		newStation(t, d, "line-1", 2)
		d.CreateToken(ctx, store.Token{Hash: "t1", Serial: "SN-0001", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		for _, r := range []store.EnrollRequest{
			{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kA", TokenHash: "t1"},
			{Serial: "SN-0002", Model: "edge-gw", KeySHA256: "kB", Station: "line-1", JTI: "j1", JTIExpiresAt: time.Now().Add(time.Hour)},
		} {
			t.Run(r.Serial, func(t *testing.T) {
				first, err := d.EnrollDevice(ctx, r, issuer(r.KeySHA256))
				if err != nil {
					t.Fatal(err)
				}
				before := stateOf(t, d, first.ID)
				for i := range 3 {
					got, ok, refusal := retry(t, d, r)
					if !ok {
						t.Fatalf("retry %d refused: %v", i, refusal)
					}
					if got.ID != first.ID || got.CertSerial != first.CertSerial || got.CertPEM != first.CertPEM || got.KeySHA256 != r.KeySHA256 {
						t.Fatalf("retry %d returned %+v, want the first enrollment's %+v", i, got, first)
					}
				}
				// The write path refuses too (a retry that raced its first
				// attempt), and that refusal is a replay as well.
				issued := false
				_, err = d.EnrollDevice(ctx, r, func() (store.Issued, error) { issued = true; return issuer(r.KeySHA256)() })
				if !errors.Is(err, store.ErrTokenUsed) && !errors.Is(err, store.ErrStationQuota) {
					t.Fatalf("second EnrollDevice: %v", err)
				}
				if issued {
					t.Fatal("a spent token reached issuance")
				}
				if got, ok, _ := d.ReplayEnrollment(ctx, r, err); !ok || got.CertSerial != first.CertSerial {
					t.Fatalf("replay after the write path's refusal: %+v %v", got, ok)
				}
				stateOf(t, d, first.ID).mustEqual(t, before, "a replay")
				if certs, _ := d.ListCertificates(ctx, first.ID); len(certs) != 1 {
					t.Fatalf("%d certificates after replays", len(certs))
				}
			})
		}
		// The station's second unit paid for SN-0002 once; it has none
		// left, and its replays still work.
		if st, _ := d.GetStation(ctx, "line-1"); st.Used != 1 {
			t.Fatalf("station quota after one enrollment and its replays: %+v", st)
		}
	})
}

// TestEnrollRetryOfStationsLastUnit: the enrollment that spent a station's
// last unit can be replayed (the pre-check refuses it for quota, not for the
// used token), and the replay charges nothing.
func TestEnrollRetryOfStationsLastUnit(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		newStation(t, d, "line-1", 1)
		r := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kA", Station: "line-1", JTI: "j1", JTIExpiresAt: time.Now().Add(time.Hour)}
		first, err := d.EnrollDevice(ctx, r, issuer("kA"))
		if err != nil {
			t.Fatal(err)
		}
		before := stateOf(t, d, first.ID)
		got, ok, refusal := retry(t, d, r)
		if !errors.Is(refusal, store.ErrStationQuota) || !ok || got.CertSerial != first.CertSerial {
			t.Fatalf("replay at full quota: %+v %v %v", got, ok, refusal)
		}
		stateOf(t, d, first.ID).mustEqual(t, before, "a replay")
		// A fresh token of the full station is still refused for quota.
		fresh := r
		fresh.JTI = "j2"
		if got, ok, refusal := retry(t, d, fresh); ok || !errors.Is(refusal, store.ErrStationQuota) {
			t.Fatalf("fresh token at full quota: %+v %v %v", got, ok, refusal)
		}
	})
}

// TestEnrollReplayRefusals: a spent token gives nothing back to another key,
// nor after the device was revoked, renewed, marked for or re-provisioned,
// nor after the token expired, nor for another device; each keeps its
// original refusal and changes nothing (in particular, records no refusal:
// exactly as before replays existed).
func TestEnrollReplayRefusals(t *testing.T) {
	tests := map[string]struct {
		station bool
		// after runs once the first enrollment committed and returns the
		// retried request.
		after func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest
	}{
		"another key (clone with a spent token)": {after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			r.KeySHA256 = "kEvil"
			return r
		}},
		"another key (clone with a spent station token)": {station: true, after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			r.KeySHA256 = "kEvil"
			return r
		}},
		"device revoked": {after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			if _, err := d.RevokeDevice(context.Background(), dev.ID, 1, "keyCompromise", "admin"); err != nil {
				t.Fatal(err)
			}
			return r
		}},
		"device revoked (station token)": {station: true, after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			if _, err := d.RevokeDevice(context.Background(), dev.ID, 1, "keyCompromise", "admin"); err != nil {
				t.Fatal(err)
			}
			return r
		}},
		"device marked for re-provisioning": {after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			if _, err := d.AllowReprovision(context.Background(), dev.ID, "admin"); err != nil {
				t.Fatal(err)
			}
			return r
		}},
		"device re-provisioned with a new key": {after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			ctx := context.Background()
			d.AllowReprovision(ctx, dev.ID, "admin")
			d.CreateToken(ctx, store.Token{Hash: "t2", Serial: r.Serial, Model: r.Model, ExpiresAt: time.Now().Add(time.Hour)})
			if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: r.Serial, Model: r.Model, KeySHA256: "kNew", TokenHash: "t2"}, issuer("kNew")); err != nil {
				t.Fatal(err)
			}
			r.KeySHA256 = "kNew" // even the new key cannot use the old token
			return r
		}},
		"enrolled again with a fresh token": {after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			ctx := context.Background()
			d.CreateToken(ctx, store.Token{Hash: "t2", Serial: r.Serial, Model: r.Model, ExpiresAt: time.Now().Add(time.Hour)})
			if _, err := d.EnrollDevice(ctx, store.EnrollRequest{Serial: r.Serial, Model: r.Model, KeySHA256: r.KeySHA256, TokenHash: "t2"}, issuer(r.KeySHA256)); err != nil {
				t.Fatal(err)
			}
			return r // the current certificate is t2's, not t1's
		}},
		"device renewed": {after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			if _, err := d.RenewDevice(context.Background(), store.RenewRequest{DeviceID: dev.ID, PresentedSerial: dev.CertSerial, PresentedKeySHA256: r.KeySHA256, KeySHA256: r.KeySHA256}, issuer(r.KeySHA256)); err != nil {
				t.Fatal(err)
			}
			return r
		}},
		"admin token expired": {after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			d.SetClock(func() time.Time { return time.Now().UTC().Add(2 * time.Hour) })
			return r
		}},
		"station token expired": {station: true, after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			d.SetClock(func() time.Time { return time.Now().UTC().Add(2 * time.Hour) })
			r.JTIExpiresAt = time.Now().Add(time.Hour) // the store's own record decides
			return r
		}},
		"station token id of another device": {station: true, after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			ctx := context.Background()
			other := store.EnrollRequest{Serial: "SN-0002", Model: "edge-gw", KeySHA256: r.KeySHA256, Station: "line-1", JTI: "j2", JTIExpiresAt: r.JTIExpiresAt}
			if _, err := d.EnrollDevice(ctx, other, issuer(r.KeySHA256)); err != nil {
				t.Fatal(err)
			}
			other.JTI = r.JTI // SN-0002's key, with SN-0001's token id
			return other
		}},
		"station revoked": {station: true, after: func(t *testing.T, d *store.DB, r store.EnrollRequest, dev store.Device) store.EnrollRequest {
			if _, err := d.RevokeStation(context.Background(), "line-1", 5, "cessationOfOperation", "admin"); err != nil {
				t.Fatal(err)
			}
			r.JTI = "j1"
			return r
		}},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			forEach(t, func(t *testing.T, d *store.DB) {
				ctx := setup(t, d)
				// The station outlives the tokens, so token expiry is what refuses.
				newStation(t, d, "line-1", 10, func(s *store.Station) { s.NotAfter = time.Now().Add(24 * time.Hour) })
				d.CreateToken(ctx, store.Token{Hash: "t1", Serial: "SN-0001", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
				r := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kA", TokenHash: "t1"}
				if tt.station {
					r = store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kA", Station: "line-1", JTI: "j1", JTIExpiresAt: time.Now().Add(time.Hour)}
				}
				dev, err := d.EnrollDevice(ctx, r, issuer("kA"))
				if err != nil {
					t.Fatal(err)
				}
				retried := tt.after(t, d, r, dev)
				ids := []string{dev.ID, "urn:foster:device:edge-gw:SN-0002"}
				before := stateOf(t, d, ids...)
				got, ok, refusal := retry(t, d, retried)
				if ok {
					t.Fatalf("replayed: %+v", got)
				}
				// The refusal is what it was before replays existed.
				wantRefusal := d.CheckEnroll(ctx, retried)
				if refusal == nil || refusal.Error() != wantRefusal.Error() {
					t.Fatalf("refusal %v, want %v", refusal, wantRefusal)
				}
				_, err = d.EnrollDevice(ctx, retried, issuer(retried.KeySHA256))
				if err == nil {
					t.Fatal("a spent token enrolled again")
				}
				if _, ok, _ := d.ReplayEnrollment(ctx, retried, err); ok {
					t.Fatal("replayed after the write path's refusal")
				}
				stateOf(t, d, ids...).mustEqual(t, before, "a refused replay")
			})
		})
	}
}

// TestReplayNeedsAReplayableRefusal: only a spent token (or a station's
// spent quota) can be a lost response; other refusals are not looked at.
func TestReplayNeedsAReplayableRefusal(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := setup(t, d)
		d.CreateToken(ctx, store.Token{Hash: "t1", Serial: "SN-0001", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		r := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kA", TokenHash: "t1"}
		if _, err := d.EnrollDevice(ctx, r, issuer("kA")); err != nil {
			t.Fatal(err)
		}
		for _, refusal := range []error{nil, store.ErrClone, store.ErrDeviceRevoked, store.ErrTokenInvalid, store.ErrTokenExpired, store.ErrStationRevoked, errors.New("db down")} {
			if _, ok, err := d.ReplayEnrollment(ctx, r, refusal); ok || err != nil {
				t.Fatalf("refusal %v: replay %v, %v", refusal, ok, err)
			}
		}
		// A station's CSR submitted over mTLS has no token to replay.
		mtls := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kA", Station: "line-1"}
		if _, ok, _ := d.ReplayEnrollment(ctx, mtls, store.ErrStationQuota); ok {
			t.Fatal("replayed a tokenless station enrollment")
		}
	})
}

// TestCertificatesMigrateForReplay: a store whose certificates table predates
// enroll_token opens; its certificates (enrolled before the token was
// recorded) are not replayable, new enrollments are.
func TestCertificatesMigrateForReplay(t *testing.T) {
	const legacy = `CREATE TABLE models (name TEXT PRIMARY KEY, hardware_ids TEXT NOT NULL, created_at BIGINT NOT NULL);
INSERT INTO models (name, hardware_ids, created_at) VALUES ('edge-gw', '[]', 1700000000000000000);
CREATE TABLE tokens (hash TEXT PRIMARY KEY, serial TEXT NOT NULL, model TEXT NOT NULL REFERENCES models(name),
	expires_at BIGINT NOT NULL, created_by TEXT NOT NULL, created_at BIGINT NOT NULL, used_at BIGINT NOT NULL DEFAULT 0);
INSERT INTO tokens (hash, serial, model, expires_at, created_by, created_at, used_at) VALUES ('old', 'SN-0001', 'edge-gw', 9000000000000000000, 'admin', 1700000000000000000, 1700000000000000001);
CREATE TABLE devices (id TEXT PRIMARY KEY, serial TEXT NOT NULL, model TEXT NOT NULL REFERENCES models(name), status TEXT NOT NULL,
	cert_serial TEXT NOT NULL, cert_not_after BIGINT NOT NULL, cert_pem TEXT NOT NULL, enrolled_at BIGINT NOT NULL,
	installed_version TEXT NOT NULL DEFAULT '', installed_target TEXT NOT NULL DEFAULT '', installed_counter BIGINT NOT NULL DEFAULT 0,
	last_attestation_at BIGINT NOT NULL DEFAULT 0, last_sequence BIGINT NOT NULL DEFAULT 0,
	key_sha256 TEXT NOT NULL DEFAULT '', reprovision_at BIGINT NOT NULL DEFAULT 0, reprovision_by TEXT NOT NULL DEFAULT '',
	revoked_at BIGINT NOT NULL DEFAULT 0, revoke_reason TEXT NOT NULL DEFAULT '');
INSERT INTO devices (id, serial, model, status, cert_serial, cert_not_after, cert_pem, enrolled_at, key_sha256)
	VALUES ('urn:foster:device:edge-gw:SN-0001', 'SN-0001', 'edge-gw', 'active', 'aa01', 9000000000000000000, 'pem', 1700000000000000001, 'kOld');
CREATE TABLE certificates (serial TEXT PRIMARY KEY, subject TEXT NOT NULL, key_sha256 TEXT NOT NULL, not_before BIGINT NOT NULL,
	not_after BIGINT NOT NULL, issued_at BIGINT NOT NULL, issued_via TEXT NOT NULL, issued_by TEXT NOT NULL DEFAULT '',
	revoked_at BIGINT NOT NULL DEFAULT 0, revoke_reason_code INTEGER NOT NULL DEFAULT 0, revoke_reason TEXT NOT NULL DEFAULT '');
INSERT INTO certificates (serial, subject, key_sha256, not_before, not_after, issued_at, issued_via)
	VALUES ('aa01', 'urn:foster:device:edge-gw:SN-0001', 'kOld', 1700000000000000000, 9000000000000000000, 1700000000000000001, 'token')`
	storetest.EachFrom(t, legacy, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		old := store.EnrollRequest{Serial: "SN-0001", Model: "edge-gw", KeySHA256: "kOld", TokenHash: "old"}
		if _, ok, refusal := retry(t, d, old); ok || !errors.Is(refusal, store.ErrTokenUsed) {
			t.Fatalf("legacy enrollment replayed: %v %v", ok, refusal)
		}
		d.CreateToken(ctx, store.Token{Hash: "new", Serial: "SN-0002", Model: "edge-gw", ExpiresAt: time.Now().Add(time.Hour)})
		r := store.EnrollRequest{Serial: "SN-0002", Model: "edge-gw", KeySHA256: "kB", TokenHash: "new"}
		first, err := d.EnrollDevice(ctx, r, issuer("kB"))
		if err != nil {
			t.Fatal(err)
		}
		if got, ok, refusal := retry(t, d, r); !ok || got.CertSerial != first.CertSerial {
			t.Fatalf("replay on a migrated store: %+v %v %v", got, ok, refusal)
		}
		if c, err := d.GetCertificate(ctx, "aa01"); err != nil || c.IssuedVia != "token" {
			t.Fatal(fmt.Sprint(c, err))
		}
	})
}
