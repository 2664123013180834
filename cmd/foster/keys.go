package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Online key changes that reach every fosterd without a restart
// (docs/TUF.md "Rotating keys", docs/CA.md): foster tuf rotate, foster ca
// use-intermediate, foster keys status. fosterd keeps the online keys in
// a record in its store that every replica follows (GET /v1/keys).

// defaultKeyWait bounds how long a key change waits for every fosterd.
const defaultKeyWait = 2 * time.Minute

func cmdKeysStatus(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("keys status", "keys status [--json]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var st server.KeyStatus
	if err := c.do(ctx, "GET", "/v1/keys", nil, 0, "", &st); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	printKeyStatus(stdout, st)
	return nil
}

func printKeyStatus(w io.Writer, st server.KeyStatus) {
	if st.Version == 0 {
		fmt.Fprintln(w, "online keys: config.json's (never changed by foster tuf rotate or foster ca use-intermediate)")
	} else {
		fmt.Fprintf(w, "online key record version %d, changed %s by %s\n", st.Version, fmtTime(st.UpdatedAt), st.UpdatedBy)
	}
	fmt.Fprintf(w, "\nas held by %s:\n", st.Replica)
	var rows [][]string
	for _, k := range st.TUF {
		rows = append(rows, []string{k.Role, k.KeyID, orDash(strings.Join(k.TrustedFor, ",")), k.Key})
	}
	table(w, "HELD AS\tKEY ID\tROOT TRUSTS IT FOR\tKEY", rows)
	in := st.Intermediate
	fmt.Fprintf(w, "\nissuing intermediate %s (serial %s, until %s), key %s\n", in.Subject, in.Serial, fmtTime(in.NotAfter), in.Key)
	rows = rows[:0]
	for _, r := range st.Replicas {
		rows = append(rows, []string{r.Name, strconv.FormatInt(r.Version, 10), fmtTime(r.SeenAt), orDash(r.Error)})
	}
	fmt.Fprintln(w)
	table(w, "FOSTERD\tKEY RECORD\tLAST SEEN\tERROR", rows)
}

// waitReplicas waits until every fosterd seen recently uses key record
// version (or a newer one), for at most wait; a fosterd that reports it
// cannot load it fails the wait at once.
func waitReplicas(ctx context.Context, c *client, version int64, wait time.Duration, stderr io.Writer) (server.KeyStatus, error) {
	deadline := time.Now().Add(wait)
	said := false
	for {
		var st server.KeyStatus
		if err := c.do(ctx, "GET", "/v1/keys", nil, 0, "", &st); err != nil {
			return st, err
		}
		var lagging, failing []string
		for _, r := range st.Replicas {
			if r.Version >= version {
				continue
			}
			lagging = append(lagging, r.Name)
			if r.Error != "" {
				failing = append(failing, fmt.Sprintf("%s: %s", r.Name, r.Error))
			}
		}
		if len(failing) > 0 {
			return st, fmt.Errorf("fosterd that cannot use key record version %d (they keep their old keys; fix the key on them, they retry by themselves):\n  %s", version, strings.Join(failing, "\n  "))
		}
		if len(lagging) == 0 && st.Applied >= version {
			return st, nil
		}
		if time.Now().After(deadline) {
			return st, fmt.Errorf("after %s, fosterd still on a key record older than version %d: %s (foster keys status)", wait, version, strings.Join(lagging, ", "))
		}
		if !said {
			fmt.Fprintf(stderr, "waiting for every fosterd to load key record version %d...\n", version)
			said = true
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

const rotateUsage = `foster [connection] tuf rotate timestamp|snapshot|targets [--key KEY] [--root-key FILE ...] [--out FILE] [--json]
foster [connection] tuf rotate ROLE --publish SIGNED-ROOT [--json]

Rotates an online TUF key on the running fosterd and every replica, without
a restart:
  1. every fosterd holds the new KEY beside the current one (it must load on
     each: a KMS URI, or a file path relative to the data directory that exists
     on every replica); the command waits until all have loaded it;
  2. it stages root N+1, which trusts KEY for ROLE instead of the current key;
  3. with --root-key (a threshold of the current and new root keys), it signs
     and publishes that root; without, it writes it (--out) for the root key
     holders to sign (foster tuf sign, foster tuf combine), and
     'foster tuf rotate ROLE --publish SIGNED-ROOT' (or foster tuf publish
     --root) publishes it later;
  4. once the root is published, KEY becomes the configured ROLE key on every
     fosterd and the old key is dropped.
Clients on the old or the new root accept everything at every moment: the
publish of root N+1 is signed by both keys, and root N+1 is written last.
Without --key, fosterd generates a new Ed25519 key file in DIR/keys (an
instance with a single fosterd only).
`

// rotateResult is what tuf rotate prints with --json.
type rotateResult struct {
	Held server.HoldKeyResult `json:"held"`
	// Staged is the root written for a ceremony ("" when published).
	Staged    string            `json:"staged,omitempty"`
	Published bool              `json:"published"`
	Keys      *server.KeyStatus `json:"keys,omitempty"`
}

func cmdTUFRotate(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprint(stderr, rotateUsage)
		if isHelp(args) {
			return nil
		}
		return fmt.Errorf("%w: foster tuf rotate timestamp|snapshot|targets", errUsage)
	}
	role, args := args[0], args[1:]
	if role != "timestamp" && role != "snapshot" && role != "targets" {
		return fmt.Errorf("%w: foster tuf rotate %q: rotate timestamp, snapshot or targets (root: foster tuf stage root)", errUsage, role)
	}
	fs := newFlags("tuf rotate "+role, "tuf rotate "+role+" [--key KEY] [--root-key FILE ...] [--out FILE] [--publish FILE] [--json]", stderr)
	key := fs.String("key", "", "the new key: a KMS URI, or a key file path relative to the data directory (or absolute) that every fosterd can read; default: fosterd generates an Ed25519 key in DIR/keys (one fosterd only)")
	var rootKeys multi
	fs.Var(&rootKeys, "root-key", "root signing key (file or KMS URI; repeatable): sign and publish the new root at once")
	out := fs.String("out", "", "where to write the staged root for the ceremony (default N.root.json)")
	publish := fs.String("publish", "", "publish a root signed in the ceremony (finishes a rotation started without --root-key)")
	expires := fs.String("expires", "", "validity of the new root from now, e.g. 8760h (default: keep if 30+ days left, else 1 year)")
	wait := fs.Duration("wait", defaultKeyWait, "how long to wait for every fosterd to load a new key record")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *publish != "" && (*key != "" || len(rootKeys) > 0) {
		return usageError(fs, "--publish finishes a rotation: give it alone")
	}
	exp, err := parseExpires(*expires)
	if err != nil {
		return err
	}
	var res rotateResult
	if *publish != "" {
		raw, err := readFileBounded(*publish, maxStaged)
		if err != nil {
			return err
		}
		return finishRotation(ctx, c, role, raw, &res, *wait, *asJSON, stdout, stderr)
	}
	req := server.HoldKeyRequest{Role: role, Key: *key, Generate: *key == ""}
	if err := c.postJSON(ctx, "/v1/keys/tuf", req, &res.Held); err != nil {
		return err
	}
	h := res.Held
	if h.Published {
		st, err := waitReplicas(ctx, c, h.Version, *wait, stderr)
		if err != nil {
			return err
		}
		res.Published, res.Keys = true, &st
		if *asJSON {
			return printJSON(stdout, res)
		}
		fmt.Fprintf(stdout, "root already trusts %s for %s: the rotation is published; every fosterd uses key record version %d\n", h.KeyID, role, h.Version)
		return nil
	}
	fmt.Fprintf(stderr, "holding %s key %s (%s) beside %s: key record version %d\n", role, h.KeyID, h.Key, strings.Join(h.Replace, ", "), h.Version)
	if _, err := waitReplicas(ctx, c, h.Version, *wait, stderr); err != nil {
		return fmt.Errorf("%w\nthe root that needs the new key is not staged; run the same command again once every fosterd can load it", err)
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey([]byte(h.PublicKey))
	if err != nil {
		return fmt.Errorf("fosterd's public key of %s: %w", h.KeyID, err)
	}
	tk, id, err := tufrepo.TUFKey(pub)
	if err != nil || id != h.KeyID {
		return fmt.Errorf("fosterd's public key does not match key ID %s (%v)", h.KeyID, err)
	}
	var cur []byte
	if err := c.raw(ctx, "/v1/tuf/metadata/root", &cur); err != nil {
		return err
	}
	staged, err := tufrepo.StageRoot(cur, tufrepo.RootChange{
		Expires: exp,
		Add:     map[string][]*metadata.Key{role: {tk}},
		Remove:  map[string][]string{role: h.Replace},
	}, time.Now())
	if err != nil {
		return fmt.Errorf("staging the root: %w", err)
	}
	for _, ref := range rootKeys {
		s, err := signing.Load(ctx, ref, env.Passphrase.Bytes())
		if err != nil {
			return err
		}
		if staged, err = tufrepo.SignStaged(ctx, staged, s); err != nil {
			return err
		}
	}
	info, err := tufrepo.Inspect(staged, cur)
	if err != nil {
		return err
	}
	met := !slices.ContainsFunc(info.Checks, func(ch tufrepo.ThresholdCheck) bool { return !ch.Met })
	if !met {
		// The ceremony: the root key holders sign, then --publish.
		if *out == "" {
			*out = fmt.Sprintf("%d.root.json", info.Version)
		}
		if err := atomicfile.WriteFile(*out, staged, 0o644); err != nil {
			return err
		}
		res.Staged = *out
		if *asJSON {
			return printJSON(stdout, res)
		}
		fmt.Fprintf(stdout, "every fosterd holds the new %s key %s; staged root version %d in %s, which needs:\n", role, h.KeyID, info.Version, *out)
		printChecks(stdout, info)
		fmt.Fprintf(stdout, `
each root key holder signs a copy, on their own machine:
  foster tuf sign --key ROOT-KEY --out %[1]d.root.HOLDER.json %[2]s
then, with the copies:
  foster tuf combine --out %[1]d.root.signed.json %[1]d.root.*.json
  foster [connection] tuf rotate %[3]s --publish %[1]d.root.signed.json
`, info.Version, *out, role)
		return nil
	}
	return finishRotation(ctx, c, role, staged, &res, *wait, *asJSON, stdout, stderr)
}

// finishRotation publishes a signed root that rotates role's key, then
// waits until every fosterd uses the key record that makes the new key the
// configured one.
func finishRotation(ctx context.Context, c *client, role string, root []byte, res *rotateResult, wait time.Duration, asJSON bool, stdout, stderr io.Writer) error {
	var tst tufrepo.Status
	if err := c.postJSON(ctx, "/v1/tuf/publish", server.PublishRequest{Root: root}, &tst); err != nil {
		return err
	}
	var st server.KeyStatus
	if err := c.do(ctx, "GET", "/v1/keys", nil, 0, "", &st); err != nil {
		return err
	}
	st, err := waitReplicas(ctx, c, st.Version, wait, stderr)
	if err != nil {
		return fmt.Errorf("root version %d is published, but: %w", tst.Versions.Root, err)
	}
	i := slices.IndexFunc(st.TUF, func(k server.HeldKey) bool { return k.Role == role })
	if i < 0 || !slices.Contains(st.TUF[i].TrustedFor, role) {
		return fmt.Errorf("root version %d is published, but the configured %s key is not one it trusts for the role (foster keys status)", tst.Versions.Root, role)
	}
	res.Published, res.Keys = true, &st
	if asJSON {
		return printJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "published root version %d: every fosterd signs %s with key %s (key record version %d); the old key is dropped\n",
		tst.Versions.Root, role, st.TUF[i].KeyID, st.Version)
	return nil
}

func cmdCAUseIntermediate(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("ca use-intermediate", "ca use-intermediate --cert FILE --key KEY [--json]", stderr)
	certFile := fs.String("cert", "", "the new intermediate certificate, certified by the root (foster ca certify-intermediate --out FILE) (required)")
	key := fs.String("key", "", "its key: a KMS/HSM URI (awskms:..., pkcs11:..., softkms:path=...) or a key file path relative to the data directory, which every fosterd can read (required)")
	wait := fs.Duration("wait", defaultKeyWait, "how long to wait for every fosterd to load it")
	asJSON := fs.Bool("json", false, "print JSON")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *certFile == "" || *key == "" {
		return usageError(fs, "--cert and --key are required")
	}
	certPEM, err := readFileBounded(*certFile, ca.MaxIntermediatePEM)
	if err != nil {
		return err
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	var st server.KeyStatus
	if err := cl.postJSON(ctx, "/v1/keys/intermediate", server.UseIntermediateRequest{Certificate: string(certPEM), Key: *key}, &st); err != nil {
		return err
	}
	if st, err = waitReplicas(ctx, cl, st.Version, *wait, stderr); err != nil {
		return fmt.Errorf("the new intermediate is recorded (key record version %d), but: %w", st.Version, err)
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	in := st.Intermediate
	fmt.Fprintf(stdout, "every fosterd issues with intermediate %s (serial %s, until %s), key %s (key record version %d)\n",
		in.Subject, in.Serial, fmtTime(in.NotAfter), in.Key, st.Version)
	return nil
}
