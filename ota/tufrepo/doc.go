// Package tufrepo publishes Foster's firmware as a TUF repository
// (https://theupdateframework.github.io/specification/latest/) in a blob
// store, using go-tuf v2's metadata types; go-tuf no longer ships a
// repository writer, so publishing is ours. Devices verify what it publishes
// with go-tuf's stock updater.
//
// # Key roles
//
//   - root: signs the key hierarchy (which keys may sign each role, with
//     which threshold). Offline; changed only by a root ceremony (ceremony.go:
//     N+1.root.json signed by a threshold of the old and of the new keys).
//   - targets: delegates each device model's paths to that model's role.
//     Offline or KMS in production (it changes only when a model is added or
//     its key rotated); the dev instance keeps it online.
//   - models/<model>: one delegated role per model, for target paths
//     "<model>/*/*" (terminating). Its key may be online or KMS, so a product
//     team releases without the offline keys. It lists the model's newest
//     releases (Options.RecentTargets, by release counter) and its stepping
//     stones (for every hardware id, the newest release it can install from
//     any version: no min_from_version), so a device offline for years still
//     finds its way up in the one role it loads. It delegates the rest to
//     succinct hashed bins (TAP 15) models/<model>/bins-<hex>, whose count
//     doubles as they fill, so a release re-signs one small role and one bin
//     (two when it supersedes a stepping stone) however many releases the
//     model has. Each target is in exactly one role.
//   - snapshot: signs the versions of all targets metadata, so a device can
//     never be shown a mix of old and new targets files.
//   - timestamp: signs the current snapshot version with a short expiry, so
//     a network attacker cannot freeze a device on old metadata for longer
//     than that expiry. Online; Refresh re-signs it before it runs out, and
//     Metadata never serves it expired.
//
// Every signature goes through a sigstore signature.Signer, so any key can
// be a file or a KMS URI (pkg/signing). Use Ed25519 or ECDSA P-256 keys: go-tuf
// labels every ECDSA key as P-256 and signs RSA as PSS.
//
// # Threat model
//
// The blob store and the network between it and devices are untrusted;
// devices rely only on the signatures, the version numbers (rollback) and
// the expiries (freeze). Publishing is atomic for clients: every new
// versioned file (N.targets.json, N.snapshot.json, hash-prefixed target
// blobs) is written before timestamp.json, the only mutable file clients
// poll, so a crash or a failed write at any point leaves clients on the
// previous repository; the Repo's in-memory state changes only after
// timestamp.json is written. Snapshot records the version and length of
// delegated roles (hashes only for targets.json), which keeps it small.
// Before publishing, every new signature is checked against the root, so a key type go-tuf cannot verify fails here
// instead of on a device. Upload input (target paths, bodies, custom
// metadata) is validated and bounded; a refused upload publishes nothing.
//
// A Repo's mutex serialises publishing within a process. Several Repos
// (processes) may publish to one store only through a shared Arbiter
// (replicas.go; fosterd's is its PostgreSQL store): it excludes the others'
// publishes, and each Repo catches up with the store before publishing and
// polls (Sync, Follow) to serve what the others published. Without one, a
// Repo must be its store's only writer.
//
// # Layout in the blob store (docs/CONTRACTS.md)
//
//	tuf/<N>.root.json  tuf/<N>.targets.json  tuf/<N>.snapshot.json  tuf/timestamp.json
//	tuf/<N>.models/<model>.json            a model's role (clients request 3.models%2Fedge-gw.json)
//	tuf/<N>.models/<model>/bins-<hex>.json that model's hashed bins
//	targets/<dir>/<sha256hex>.<name>   for target path <dir>/<name> (SHA-256 is the
//	                                   only hash signed, so each target has one name)
//	staging/<random>                   uploads in flight (never served)
package tufrepo
