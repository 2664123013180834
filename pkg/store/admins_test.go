package store_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/pkg/store"
)

// credIssuer returns an issue callback for a credential of role:name.
func credIssuer(role, name string, life time.Duration) func() (store.Certificate, error) {
	return func() (store.Certificate, error) {
		n := certSeq.Add(1)
		now := time.Now()
		return store.Certificate{Serial: fmt.Sprintf("%x", n+2_000_000), Subject: "urn:foster:" + role + ":" + name,
			KeySHA256: fmt.Sprintf("k%d", n), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(life)}, nil
	}
}

func issueCred(t *testing.T, d *store.DB, role, name string) store.Certificate {
	t.Helper()
	c, err := d.IssueAdminCredential(context.Background(), role, name, "urn:foster:admin:root", credIssuer(role, name, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func statusOf(t *testing.T, d *store.DB, serial string) string {
	t.Helper()
	creds, err := d.ListAdminCredentials(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range creds {
		if c.Serial == serial {
			return c.Status
		}
	}
	t.Fatalf("credential %s is not listed", serial)
	return ""
}

// A name holds one live credential: a second one, in either role, is
// refused (without signing anything) until the first is revoked or expired.
func TestSecondCredentialForExistingNameIsRefused(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		issueCred(t, d, "admin", "root")
		first := issueCred(t, d, "admin", "bob")
		for _, role := range []string{"admin", "auditor"} {
			signed := false
			_, err := d.IssueAdminCredential(ctx, role, "bob", "urn:foster:admin:root", func() (store.Certificate, error) {
				signed = true
				return credIssuer(role, "bob", time.Hour)()
			})
			if !errors.Is(err, store.ErrCredentialExists) || !errors.Is(err, store.ErrConflict) || signed {
				t.Fatalf("second %s credential for bob: err %v, signed %v", role, err, signed)
			}
		}
		if _, err := d.RevokeAdminCredentials(ctx, "bob", 1, "keyCompromise"); err != nil {
			t.Fatal(err)
		}
		second := issueCred(t, d, "auditor", "bob")
		if statusOf(t, d, first.Serial) != store.CredentialRevoked || statusOf(t, d, second.Serial) != store.CredentialActive {
			t.Fatalf("after revoke and re-issue: %s %s", statusOf(t, d, first.Serial), statusOf(t, d, second.Serial))
		}
		// An expired credential does not block a new one either.
		if _, err := d.IssueAdminCredential(ctx, "auditor", "old", "x", credIssuer("auditor", "old", -time.Second)); err != nil {
			t.Fatal(err)
		}
		issueCred(t, d, "auditor", "old")
	})
}

// Two admins racing to create the same name: exactly one gets it.
func TestConcurrentCredentialsForOneNameIssueOnce(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		var wg sync.WaitGroup
		var mu sync.Mutex
		ok := 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := d.IssueAdminCredential(context.Background(), "admin", "carol", "x", credIssuer("admin", "carol", time.Hour))
				if err == nil {
					mu.Lock()
					ok++
					mu.Unlock()
				} else if !errors.Is(err, store.ErrCredentialExists) {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if ok != 1 {
			t.Fatalf("%d credentials issued for one name", ok)
		}
	})
}

// Revoking the only admin would lock everyone out: refused, also when
// auditors remain; with a second admin it goes through, and the revoked
// credentials are in the CRL's list.
func TestLastAdminCannotBeRevoked(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		root := issueCred(t, d, "admin", "root")
		issueCred(t, d, "auditor", "alice")
		if _, err := d.RevokeAdminCredentials(ctx, "root", 0, "unspecified"); !errors.Is(err, store.ErrLastAdmin) {
			t.Fatalf("revoking the last admin: %v", err)
		}
		if revoked, _ := d.IsRevoked(ctx, root.Serial); revoked {
			t.Fatal("a refused revocation revoked the certificate")
		}
		if _, err := d.RevokeAdminCredentials(ctx, "alice", 0, "unspecified"); err != nil {
			t.Fatalf("revoking an auditor: %v", err)
		}
		issueCred(t, d, "admin", "bob")
		got, err := d.RevokeAdminCredentials(ctx, "root", 1, "keyCompromise")
		if err != nil || len(got) != 1 || got[0].Serial != root.Serial {
			t.Fatalf("revoking root with bob left: %v %v", got, err)
		}
		if _, err := d.RevokeAdminCredentials(ctx, "bob", 0, "unspecified"); !errors.Is(err, store.ErrLastAdmin) {
			t.Fatalf("revoking bob, now the last admin: %v", err)
		}
		if _, err := d.RevokeAdminCredentials(ctx, "root", 1, "keyCompromise"); !errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrLastAdmin) {
			t.Fatalf("revoking root again: %v", err)
		}
		if _, err := d.RevokeAdminCredentials(ctx, "nobody", 1, "keyCompromise"); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("revoking an unknown name: %v", err)
		}
		crl, err := d.RevokedCertificates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		listed := false
		for _, c := range crl {
			listed = listed || (c.Serial == root.Serial && c.RevokeReasonCode == 1)
		}
		if !listed {
			t.Fatal("the revoked admin credential is not among the revoked certificates")
		}
	})
}

// A renewal leaves the old credential valid (a lost response costs only a
// retry) until the renewed one is first used; then the old one is
// superseded, and only a renewed credential supersedes anything.
func TestRenewedCredentialSupersedesOldOnFirstUse(t *testing.T) {
	forEach(t, func(t *testing.T, d *store.DB) {
		ctx := context.Background()
		old := issueCred(t, d, "auditor", "alice")
		lost, err := d.RenewAdminCredential(ctx, old.Serial, credIssuer("auditor", "alice", time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		renewed, err := d.RenewAdminCredential(ctx, old.Serial, credIssuer("auditor", "alice", time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		acc, err := d.CheckCredentialAccess(ctx, old.Serial)
		if err != nil || !acc.Recorded || acc.Revoked || acc.Supersedes {
			t.Fatalf("old credential before the new one is used: %+v %v", acc, err)
		}
		acc, err = d.CheckCredentialAccess(ctx, renewed.Serial)
		if err != nil || !acc.Supersedes || acc.Subject != "urn:foster:auditor:alice" {
			t.Fatalf("renewed credential: %+v %v", acc, err)
		}
		gone, err := d.Supersede(ctx, renewed.Serial)
		if err != nil || len(gone) != 2 {
			t.Fatalf("supersede: %v %v", gone, err)
		}
		for _, s := range []string{old.Serial, lost.Serial} {
			if st := statusOf(t, d, s); st != store.CredentialSuperseded {
				t.Fatalf("%s is %s after the renewed one was used", s, st)
			}
		}
		if acc, _ := d.CheckCredentialAccess(ctx, renewed.Serial); acc.Supersedes || acc.Revoked {
			t.Fatalf("renewed credential after supersede: %+v", acc)
		}
		if _, err := d.RenewAdminCredential(ctx, old.Serial, credIssuer("auditor", "alice", time.Hour)); !errors.Is(err, store.ErrSuperseded) {
			t.Fatalf("renewing from a superseded credential: %v", err)
		}
		if acc, _ := d.CheckCredentialAccess(ctx, "feedface"); acc.Recorded {
			t.Fatal("an unknown serial is recorded")
		}
	})
}
