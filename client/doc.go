// Package client is Foster's device agent library: it enrolls a device (key
// generated on the device, certificate from fosterd), keeps it patched (TUF
// metadata via go-tuf over mTLS, targets streamed and verified against signed
// length and hashes, installed atomically), and proves what it installed with
// signed install attestations that survive being offline.
//
// Threat model. The network, the server's blob store and the wall clock are
// untrusted. The device trusts only what it was provisioned with at
// enrollment: the Foster root CA (TLS in both directions) and the TUF root
// (everything it installs). Consequences:
//   - nothing is installed unless TUF-signed metadata lists it with this
//     device's model and a release counter above the installed one, so a
//     compromised server or mirror cannot downgrade a device, even to an
//     image that was once legitimately signed;
//   - an image is written to <dest>.unverified, checked incrementally, and
//     promoted only after length and hashes match; the old image stays
//     untouched until then;
//   - every step is journalled (fsync + rename + dir fsync) before it
//     happens, so a power cut resumes or abandons work, never half-installs.
//
// Key hierarchy: the device key (ECDSA P-256, DIR/device.key, 0600) never
// leaves the device; it authenticates mTLS and signs install attestations.
//
// Nothing here imports the CA or OTA server code, step-ca or the AWS SDK; a
// test in cmd/foster-agent enforces it.
package client
