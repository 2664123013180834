// Package identity is the one place where Foster's principal names are
// formatted and parsed. Every actor (device, admin, auditor, factory station)
// is an X.509 certificate whose URI SAN names it:
//
//	urn:foster:device:<model>:<serial>
//	urn:foster:admin:<name>
//	urn:foster:auditor:<name>
//	urn:foster:station:<name>
//
// Authorisation decisions are made on the parsed Principal only after the
// certificate chain has been verified against the Foster CA.
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// Role is what a principal may do.
type Role string

const (
	RoleDevice  Role = "device"
	RoleAdmin   Role = "admin"
	RoleAuditor Role = "auditor"
	RoleStation Role = "station"
)

const urnPrefix = "urn:foster:"

// ErrNoIdentity is returned when a certificate carries no Foster URI SAN.
var ErrNoIdentity = errors.New("certificate carries no urn:foster identity")

// namePattern bounds every component: printable, no separators, at most 64 bytes.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidName reports whether s can be used as a model, serial or actor name.
func ValidName(s string) error {
	if !namePattern.MatchString(s) {
		return fmt.Errorf("invalid name %q: want 1-64 characters of [A-Za-z0-9._-], starting with a letter or digit", s)
	}
	return nil
}

// Principal is a parsed Foster identity.
type Principal struct {
	Role Role
	// Name is the actor name for admins, auditors and stations; the serial for devices.
	Name string
	// Model is set for devices only.
	Model string
}

// Device returns the principal of device serial of model.
func Device(model, serial string) Principal {
	return Principal{Role: RoleDevice, Model: model, Name: serial}
}

// Serial returns the device serial (same as Name) for readability at call sites.
func (p Principal) Serial() string { return p.Name }

// URI renders the principal as its URN.
func (p Principal) URI() string {
	if p.Role == RoleDevice {
		return urnPrefix + string(RoleDevice) + ":" + p.Model + ":" + p.Name
	}
	return urnPrefix + string(p.Role) + ":" + p.Name
}

func (p Principal) String() string { return p.URI() }

// URL renders the principal as a *url.URL suitable for x509 URI SANs.
func (p Principal) URL() *url.URL {
	u, _ := url.Parse(p.URI()) // the URN grammar here always parses
	return u
}

// Validate checks every component.
func (p Principal) Validate() error {
	switch p.Role {
	case RoleDevice:
		if err := ValidName(p.Model); err != nil {
			return fmt.Errorf("model: %w", err)
		}
	case RoleAdmin, RoleAuditor, RoleStation:
		if p.Model != "" {
			return fmt.Errorf("role %s has no model", p.Role)
		}
	default:
		return fmt.Errorf("unknown role %q", p.Role)
	}
	if err := ValidName(p.Name); err != nil {
		return fmt.Errorf("name: %w", err)
	}
	return nil
}

// ParseURI parses a urn:foster:... string.
func ParseURI(s string) (Principal, error) {
	if !strings.HasPrefix(s, urnPrefix) {
		return Principal{}, fmt.Errorf("identity %q: missing %s prefix", s, urnPrefix)
	}
	parts := strings.Split(strings.TrimPrefix(s, urnPrefix), ":")
	var p Principal
	switch {
	case len(parts) == 3 && parts[0] == string(RoleDevice):
		p = Principal{Role: RoleDevice, Model: parts[1], Name: parts[2]}
	case len(parts) == 2 && parts[0] != string(RoleDevice):
		p = Principal{Role: Role(parts[0]), Name: parts[1]}
	default:
		return Principal{}, fmt.Errorf("identity %q: malformed", s)
	}
	if err := p.Validate(); err != nil {
		return Principal{}, fmt.Errorf("identity %q: %w", s, err)
	}
	return p, nil
}

// FromCertificate extracts the single Foster identity from cert's URI SANs.
// It does not verify the certificate; callers must have verified the chain.
func FromCertificate(cert *x509.Certificate) (Principal, error) {
	var found []Principal
	for _, u := range cert.URIs {
		if u.Scheme != "urn" || !strings.HasPrefix(u.String(), urnPrefix) {
			continue
		}
		p, err := ParseURI(u.String())
		if err != nil {
			return Principal{}, err
		}
		found = append(found, p)
	}
	switch len(found) {
	case 0:
		return Principal{}, ErrNoIdentity
	case 1:
		return found[0], nil
	default:
		return Principal{}, fmt.Errorf("certificate carries %d foster identities, want exactly one", len(found))
	}
}
