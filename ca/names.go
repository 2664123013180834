package ca

import (
	"fmt"
	"net"
	"strings"

	"golang.org/x/net/idna"
)

// Names that go into certificates are checked here, before step-ca sees them,
// so that every certificate Foster issues conforms to RFC 5280 (the ca tests
// hold each profile to zlint's RFC 5280/5480/3279 and community lints).

// maxCommonName is ub-common-name (RFC 5280 appendix A.1), in bytes: every
// name checked here is ASCII.
const maxCommonName = 64

// checkCAName allows the PrintableString alphabet (X.680 41.4), without a
// space at either end, so "<Name> Root CA" is encoded as a PrintableString
// that every X.509 stack reads and that cannot carry control characters,
// HTML entities or mis-encoded text.
func checkCAName(name string) error {
	ok := name != "" && len(name) <= maxNameLen && name[0] != ' ' && name[len(name)-1] != ' '
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte(" '()+,-./:=?", c) >= 0
	}
	if !ok {
		return fmt.Errorf("invalid CA name %q: want 1-%d letters, digits, spaces or '()+,-./:=? and no space at either end",
			name, maxNameLen)
	}
	return nil
}

// checkDNSName allows a host name of letters, digits and hyphens (RFC 1123
// 2.1) with labels of 1-63 bytes that neither start nor end with a hyphen, no
// trailing dot, at most 253 bytes, optionally with "*" as its whole leftmost
// label. A-labels ("xn--") must be valid punycode.
func checkDNSName(name string) error {
	bad := func(why string) error { return fmt.Errorf("invalid DNS name %q: %s", name, why) }
	if name == "" || len(name) > 253 {
		return bad("want 1 to 253 bytes")
	}
	labels := strings.Split(name, ".")
	if labels[0] == "*" {
		if len(labels) == 1 {
			return bad("a wildcard needs a domain to its right")
		}
		labels = labels[1:]
	}
	for _, label := range labels {
		if label == "" || len(label) > 63 {
			return bad("every label needs 1 to 63 bytes")
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return bad("a label cannot start or end with a hyphen")
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
				return bad("want letters, digits and hyphens (with a leftmost \"*\" label at most)")
			}
		}
		if len(label) >= 4 && strings.EqualFold(label[:4], "xn--") {
			if _, err := idna.ToUnicode("xn--" + label[4:]); err != nil {
				return bad("label " + label + " is not valid punycode")
			}
		}
	}
	return nil
}

// serverCommonName keeps the legacy CN of a server certificate to the first
// DNS name or IP address that fits ub-common-name. It returns "" when none
// does: the subject is then empty and step-ca marks the SAN extension
// critical, as RFC 5280 4.2.1.6 requires; clients match on the SANs anyway.
func serverCommonName(dnsNames []string, ips []net.IP) string {
	for _, d := range dnsNames {
		if len(d) <= maxCommonName {
			return d
		}
	}
	for _, ip := range ips {
		if s := ip.String(); len(s) <= maxCommonName {
			return s
		}
	}
	return ""
}
