package identity

import (
	"crypto/x509"
	"net/url"
	"testing"
)

func TestParseURIRoundTrip(t *testing.T) {
	for _, p := range []Principal{
		Device("edge-gw", "SN-0001"),
		{Role: RoleAdmin, Name: "admin"},
		{Role: RoleAuditor, Name: "alice"},
		{Role: RoleStation, Name: "line-1"},
	} {
		got, err := ParseURI(p.URI())
		if err != nil {
			t.Fatalf("ParseURI(%q): %v", p.URI(), err)
		}
		if got != p {
			t.Fatalf("round trip %q: got %+v want %+v", p.URI(), got, p)
		}
	}
}

func TestParseURIRejectsMalformed(t *testing.T) {
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"wrong prefix", "urn:other:device:m:s"},
		{"device without serial", "urn:foster:device:edge-gw"},
		{"device extra component", "urn:foster:device:a:b:c"},
		{"admin with model", "urn:foster:admin:x:y"},
		{"unknown role", "urn:foster:root:x"},
		{"slash in serial", "urn:foster:device:m:a/b"},
		{"empty name", "urn:foster:admin:"},
		{"too long", "urn:foster:admin:" + string(make([]byte, 65))},
		{"leading dot", "urn:foster:device:m:.x"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := ParseURI(tt.in); err == nil {
				t.Fatalf("ParseURI(%q) accepted malformed identity", tt.in)
			}
		})
	}
}

func TestFromCertificateRequiresExactlyOneIdentity(t *testing.T) {
	dev := Device("m", "s").URL()
	adm := Principal{Role: RoleAdmin, Name: "a"}.URL()
	other, _ := url.Parse("https://example.com")
	if _, err := FromCertificate(&x509.Certificate{URIs: []*url.URL{other}}); err != ErrNoIdentity {
		t.Fatalf("no identity: got %v", err)
	}
	if _, err := FromCertificate(&x509.Certificate{URIs: []*url.URL{dev, adm}}); err == nil {
		t.Fatal("two identities accepted: a cert must not be both device and admin")
	}
	p, err := FromCertificate(&x509.Certificate{URIs: []*url.URL{other, dev}})
	if err != nil || p != Device("m", "s") {
		t.Fatalf("got %+v, %v", p, err)
	}
}
