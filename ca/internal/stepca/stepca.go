// Package stepca is the only place in Foster that touches step-ca types. It
// creates the CA certificates with go.step.sm/crypto templates and issues
// leaves through an embedded step-ca authority (authority.NewEmbedded +
// SignWithContext), with Foster acting as its own provisioner: the caller has
// already decided who the subject is, and this package turns that decision
// into step-ca sign options and an x509util template. Nothing from the CSR
// except its public key reaches a certificate.
package stepca

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/provisioner"
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

// The templates name every field of a leaf. They read only .Subject and
// .SANs, which this package fills in; never .Insecure.CR, so CSR subjects,
// SANs and extensions are not copied.
const (
	clientTemplate = `{
	"subject": {"commonName": {{ toJson .Subject.CommonName }}},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["clientAuth"]
}`
	serverTemplate = `{
	"subject": {"commonName": {{ toJson .Subject.CommonName }}},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["serverAuth"]
}`
)

// Authority issues leaves with the online intermediate. Safe for concurrent use.
type Authority struct {
	auth   *authority.Authority
	issuer *x509.Certificate
	signer crypto.Signer // the intermediate key step-ca signs with; also signs CRLs (crl.go)
}

// New embeds a step-ca authority with no database (so no step-ca revocation:
// Foster's store does that) and no provisioners (Foster authorises requests
// before they get here).
func New(root, intermediate *x509.Certificate, signer crypto.Signer) (*Authority, error) {
	auth, err := authority.NewEmbedded(
		authority.WithX509RootCerts(root),
		authority.WithX509Signer(intermediate, signer),
		authority.WithQuietInit(),
	)
	if err != nil {
		return nil, fmt.Errorf("starting embedded step-ca authority: %w", err)
	}
	return &Authority{auth: auth, issuer: intermediate, signer: signer}, nil
}

// Close releases the authority.
func (a *Authority) Close() error { return a.auth.Shutdown() }

// Leaf is everything Foster decided about a certificate.
type Leaf struct {
	// CSR proves possession of the key; only its public key is used.
	CSR        *x509.CertificateRequest
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
	tmpl := clientTemplate
	if l.Profile == ServerAuth {
		tmpl = serverTemplate
	}
	data := x509util.NewTemplateData()
	data.SetCommonName(l.CommonName)
	var sans []x509util.SubjectAlternativeName
	for _, u := range l.URIs {
		sans = append(sans, x509util.SubjectAlternativeName{Type: x509util.URIType, Value: u})
	}
	for _, d := range l.DNSNames {
		sans = append(sans, x509util.SubjectAlternativeName{Type: x509util.DNSType, Value: d})
	}
	for _, ip := range l.IPs {
		sans = append(sans, x509util.SubjectAlternativeName{Type: x509util.IPType, Value: ip.String()})
	}
	data.SetSubjectAlternativeNames(sans...)

	// With nil provisioner options, CustomTemplateOptions always renders
	// tmpl: there is no way for a request to supply its own template.
	certOpts, err := provisioner.CustomTemplateOptions(nil, data, tmpl)
	if err != nil {
		return nil, fmt.Errorf("building template options: %w", err)
	}
	signOpts := provisioner.SignOptions{
		NotBefore: provisioner.NewTimeDuration(l.NotBefore),
		NotAfter:  provisioner.NewTimeDuration(l.NotAfter),
	}
	chain, err := a.auth.SignWithContext(ctx, l.CSR, signOpts,
		certOpts,
		provisioner.CertificateModifierFunc(applyValidity),
		validityValidator{issuer: a.issuer},
	)
	if err != nil {
		return nil, fmt.Errorf("step-ca: %w", err)
	}
	return chain, nil
}

// applyValidity copies the window from the sign options; step-ca's own
// duration modifiers are private to its provisioners.
func applyValidity(cert *x509.Certificate, so provisioner.SignOptions) error {
	cert.NotBefore = so.NotBefore.Time()
	cert.NotAfter = so.NotAfter.Time()
	return nil
}

type validityValidator struct{ issuer *x509.Certificate }

func (v validityValidator) Valid(cert *x509.Certificate, _ provisioner.SignOptions) error {
	switch {
	case cert.NotBefore.IsZero() || !cert.NotAfter.After(cert.NotBefore):
		return fmt.Errorf("empty validity window %s to %s", cert.NotBefore, cert.NotAfter)
	case cert.NotAfter.After(v.issuer.NotAfter):
		return fmt.Errorf("leaf would outlive its issuer (%s > %s)", cert.NotAfter, v.issuer.NotAfter)
	}
	return nil
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
