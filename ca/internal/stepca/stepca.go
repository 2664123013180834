// Package stepca is the only place in Foster that touches step-ca types. It
// creates the CA certificates with go.step.sm/crypto templates and issues
// leaves through step-ca's certificate-authority service (cas/softcas, the
// signer behind step-ca's authority.Sign) from x509util templates. Foster
// acts as its own provisioner: the caller has already decided who the
// subject is and proved possession of its key, and this package turns that
// decision into an x509util template. Nothing from a CSR except its public
// key reaches a certificate.
//
// Why the CAS and not authority.SignWithContext: the authority takes a CSR
// and verifies its signature twice (once itself, once in
// x509util.NewCertificate), after Foster already did to decide on clones and
// quotas, and everything else it adds (provisioners, webhooks, policy, its
// certificate DB) Foster does not use. Those two ECDSA verifications were
// a third of an enrollment's CPU (docs/BENCHMARKS.md, "Enrollment").
package stepca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	"go.step.sm/crypto/x509util"
)

// Profile selects the leaf template.
type Profile int

const (
	// ClientAuth is for devices, admins, auditors and factory stations.
	ClientAuth Profile = iota
	// ServerAuth is for fosterd's TLS listener.
	ServerAuth
)

// The templates are the certificate profiles: every field of a leaf except
// its names, validity and key. They are rendered once (New); each leaf is
// its rendered profile with the subject's names set (Sign). They read no
// template data at all, so nothing from a request (CSR subject, SANs,
// extensions) can reach a certificate through them.
const (
	clientTemplate = `{
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["clientAuth"]
}`
	serverTemplate = `{
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["serverAuth"]
}`
)

var templates = map[Profile]string{ClientAuth: clientTemplate, ServerAuth: serverTemplate}

// Authority issues leaves with the online intermediate. Safe for concurrent use.
type Authority struct {
	cas      *softcas.SoftCAS
	profiles map[Profile]x509util.Certificate // rendered templates, read-only
	issuer   *x509.Certificate
	signer   crypto.Signer // the intermediate key step-ca signs with; also signs CRLs (crl.go)
}

// New creates step-ca's software CAS over the intermediate and its key (a
// file key or any KMS-backed crypto.Signer). There is no step-ca database
// (Foster's store records and revokes certificates) and no provisioner
// (Foster authorises requests before they get here). root must have signed
// intermediate.
func New(root, intermediate *x509.Certificate, signer crypto.Signer) (*Authority, error) {
	if root == nil || intermediate == nil || signer == nil {
		return nil, errors.New("step-ca: root, intermediate and signer are required")
	}
	if err := intermediate.CheckSignatureFrom(root); err != nil {
		return nil, fmt.Errorf("step-ca: intermediate is not signed by the root: %w", err)
	}
	cas, err := softcas.New(context.Background(), apiv1.Options{
		CertificateChain: []*x509.Certificate{intermediate},
		Signer:           signer,
	})
	if err != nil {
		return nil, fmt.Errorf("starting step-ca CAS: %w", err)
	}
	a := &Authority{cas: cas, issuer: intermediate, signer: signer, profiles: map[Profile]x509util.Certificate{}}
	for p, text := range templates {
		// Rendering a template (text/template, then JSON) cost a tenth of an
		// enrollment; the profiles do not change, so render them once.
		crt, err := x509util.NewCertificateFromX509(&x509.Certificate{}, x509util.WithTemplate(text, x509util.NewTemplateData()))
		if err != nil {
			return nil, fmt.Errorf("step-ca: rendering certificate template %d: %w", p, err)
		}
		a.profiles[p] = *crt
	}
	return a, nil
}

// Close releases the authority.
func (a *Authority) Close() error { return nil }

// Leaf is everything Foster decided about a certificate.
type Leaf struct {
	// PublicKey is the subject's key. The caller has proved possession
	// (checked the CSR's signature) or generated the key itself.
	PublicKey  crypto.PublicKey
	Profile    Profile
	CommonName string
	URIs       []string
	DNSNames   []string
	IPs        []net.IP
	NotBefore  time.Time
	NotAfter   time.Time
}

// Name is the subject's common name, or its first SAN when the subject is
// empty, for messages.
func (l Leaf) Name() string {
	switch {
	case l.CommonName != "":
		return l.CommonName
	case len(l.URIs) > 0:
		return l.URIs[0]
	case len(l.DNSNames) > 0:
		return l.DNSNames[0]
	case len(l.IPs) > 0:
		return l.IPs[0].String()
	}
	return ""
}

// Sign issues l and returns the leaf followed by the intermediate. An empty
// CommonName gives an empty subject, and then the SAN extension is critical
// (RFC 5280 4.2.1.6).
func (a *Authority) Sign(ctx context.Context, l Leaf) ([]*x509.Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if l.PublicKey == nil {
		return nil, errors.New("step-ca: leaf has no public key")
	}
	if l.NotBefore.IsZero() || !l.NotAfter.After(l.NotBefore) {
		return nil, fmt.Errorf("step-ca: empty validity window %s to %s", l.NotBefore, l.NotAfter)
	}
	if l.NotAfter.After(a.issuer.NotAfter) {
		return nil, fmt.Errorf("step-ca: leaf would outlive its issuer (%s > %s)", l.NotAfter, a.issuer.NotAfter)
	}
	crt, ok := a.profiles[l.Profile]
	if !ok {
		return nil, fmt.Errorf("step-ca: unknown certificate profile %d", l.Profile)
	}
	// crt is a copy of the profile. GetCertificate appends the SANs to its
	// name slices: give this leaf its own, so concurrent Signs never share
	// an array even if a profile one day names hosts. The other slices
	// (key usages) are only read.
	crt.DNSNames = slices.Clone(crt.DNSNames)
	crt.EmailAddresses = slices.Clone(crt.EmailAddresses)
	crt.IPAddresses = slices.Clone(crt.IPAddresses)
	crt.URIs = slices.Clone(crt.URIs)
	crt.Subject = x509util.Subject{CommonName: l.CommonName}
	crt.SANs = nil
	for _, u := range l.URIs {
		crt.SANs = append(crt.SANs, x509util.SubjectAlternativeName{Type: x509util.URIType, Value: u})
	}
	for _, d := range l.DNSNames {
		crt.SANs = append(crt.SANs, x509util.SubjectAlternativeName{Type: x509util.DNSType, Value: d})
	}
	for _, ip := range l.IPs {
		crt.SANs = append(crt.SANs, x509util.SubjectAlternativeName{Type: x509util.IPType, Value: ip.String()})
	}
	crt.PublicKey = l.PublicKey
	leaf := crt.GetCertificate()
	leaf.NotBefore, leaf.NotAfter = l.NotBefore, l.NotAfter
	resp, err := a.cas.CreateCertificate(&apiv1.CreateCertificateRequest{
		Template: leaf,
		Lifetime: l.NotAfter.Sub(l.NotBefore),
	})
	if err != nil {
		return nil, fmt.Errorf("step-ca: %w", err)
	}
	return append([]*x509.Certificate{resp.Certificate}, resp.CertificateChain...), nil
}

// NewRoot creates a self-signed root CA certificate from step's root template
// (path length 1: root -> intermediate -> leaf).
func NewRoot(commonName string, signer crypto.Signer, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	tmpl, err := caTemplate(x509util.DefaultRootTemplate, commonName, signer, notBefore, notAfter)
	if err != nil {
		return nil, err
	}
	return x509util.CreateCertificate(tmpl, tmpl, signer.Public(), signer)
}

// NewIntermediate creates the device-issuing intermediate from step's
// intermediate template (path length 0), signed by the root.
func NewIntermediate(commonName string, signer crypto.Signer, root *x509.Certificate, rootSigner crypto.Signer, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	if notAfter.After(root.NotAfter) {
		return nil, errors.New("intermediate would outlive the root")
	}
	tmpl, err := caTemplate(x509util.DefaultIntermediateTemplate, commonName, signer, notBefore, notAfter)
	if err != nil {
		return nil, err
	}
	return x509util.CreateCertificate(tmpl, root, signer.Public(), rootSigner)
}

func caTemplate(text, commonName string, signer crypto.Signer, notBefore, notAfter time.Time) (*x509.Certificate, error) {
	cr, err := x509util.CreateCertificateRequest(commonName, nil, signer)
	if err != nil {
		return nil, err
	}
	cert, err := x509util.NewCertificate(cr, x509util.WithTemplate(text, x509util.CreateTemplateData(commonName, nil)))
	if err != nil {
		return nil, fmt.Errorf("rendering CA template: %w", err)
	}
	tmpl := cert.GetCertificate()
	tmpl.NotBefore, tmpl.NotAfter = notBefore, notAfter
	return tmpl, nil
}
