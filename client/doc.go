// Package client is Foster's device agent library: it enrolls a device (key
// generated on the device, certificate from fosterd), keeps it patched (TUF
// metadata via go-tuf over mTLS, targets streamed and verified against signed
// length and hashes, installed by an A/B, file, rauc, swupdate or script
// installer, health-checked, then committed or rolled back), and proves what
// happened with signed install attestations that survive being offline.
// docs/AGENT.md is the user-facing description.
//
// Threat model. The network, the server's blob store (and any object store it
// redirects downloads to) and the wall clock are untrusted. The device trusts
// only what it was provisioned with at enrollment: the Foster root CA (TLS in
// both directions) and the TUF root (everything it installs). Consequences:
//   - nothing is installed unless TUF-signed metadata lists it with this
//     device's model (and hardware id) and a release counter above the
//     installed one, so a compromised server or mirror cannot downgrade a
//     device, even to an image that was once legitimately signed;
//   - metadata older than what the device trusted before is refused even if
//     go-tuf's cache is lost, and every delegated role is verified against the
//     delegator on the path that reached it;
//   - an image is streamed to a place that cannot run (a staging file, or the
//     A/B slot the bootloader is pointed away from), checked incrementally,
//     and activated only after length and hashes match; the old image stays
//     bootable until the new one has booted and passed its health check;
//   - every step is journalled (fsync + rename + dir fsync) before it
//     happens and is idempotent, so a power cut resumes the install or rolls
//     it back, never leaves the device without a bootable image;
//   - expiry is judged against a reference time that never trusts the wall
//     clock more than signed evidence (client/internal/clock).
//
// Key hierarchy: the device key (ECDSA P-256, DIR/device.key, 0600) never
// leaves the device; it authenticates mTLS and signs install attestations.
//
// Nothing here imports the CA or OTA server code, step-ca or the AWS SDK; a
// test in cmd/foster-agent enforces it.
package client
