package main

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/env"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

const tufUsage = `foster tuf - TUF repository status and offline signing ceremonies

Usage:
  foster [connection] tuf status [--json]
  foster tuf keygen --out FILE                       new Ed25519 key FILE (0600) and FILE.pub
  foster [connection] tuf stage root --out FILE [--add-key ROLE=KEY ...] [--remove-key ROLE=KEY ...]
                                     [--threshold ROLE=N ...] [--expires 8760h]
  foster [connection] tuf stage targets --out FILE [--delegate-model M --model-key KEY ... [--model-threshold N]]
                                        [--undelegate-model M] [--expires 8760h]
  foster tuf sign --key KEY [--out FILE] STAGED      each key holder, on their own machine
  foster tuf combine --out FILE STAGED...            merge the holders' signed copies
  foster [connection] tuf inspect [--root ROOT.json] STAGED   whose signatures are there, which thresholds are met
  foster [connection] tuf publish [--root FILE] [--targets FILE]
  foster [connection] tuf rotate timestamp|snapshot|targets [--key KEY] [--root-key FILE ...]
                                     an online key on every fosterd, no restart (foster tuf rotate --help)

ROLE is root, targets, snapshot or timestamp. KEY is a PEM public key, a PEM
private key (its public half is used) or a KMS URI (awskms://, gcpkms://,
azurekms://, hashivault://); --remove-key also takes a key ID. Signing keys
are decrypted with FOSTER_PASSPHRASE when encrypted.

A root rotation (root N+1) must be signed by a threshold of the current root
keys and by a threshold of its own; a targets change by a threshold of the
targets keys. See docs/TUF.md for the ceremonies step by step.
`

// runTUF dispatches "foster tuf ...". Offline commands (keygen, sign,
// combine) need no connection.
func runTUF(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || isHelp(args[:1]) {
		fmt.Fprint(stdout, tufUsage) // like every group: its commands, exit 0
		return nil
	}
	sub, rest := args[0], args[1:]
	connect := func() (*client, error) {
		if isHelp(rest) {
			return nil, nil
		}
		return c.client()
	}
	switch sub {
	case "keygen":
		return cmdTUFKeygen(rest, stdout, stderr)
	case "sign":
		return cmdTUFSign(ctx, rest, stdout, stderr)
	case "combine":
		return cmdTUFCombine(rest, stdout, stderr)
	case "status", "stage", "inspect", "publish", "rotate":
	default:
		fmt.Fprintf(stderr, "foster tuf: unknown command %q\n\n%s", sub, tufUsage)
		return errUsage
	}
	cl, err := connect()
	if err != nil {
		if sub != "inspect" {
			return err
		}
		cl = nil // inspect works offline with --root
	}
	switch sub {
	case "status":
		return cmdTUFStatus(ctx, cl, rest, stdout, stderr)
	case "stage":
		return cmdTUFStage(ctx, cl, rest, stdout, stderr)
	case "inspect":
		return cmdTUFInspect(ctx, cl, rest, stdout, stderr)
	case "rotate":
		return cmdTUFRotate(ctx, cl, rest, stdout, stderr)
	default:
		return cmdTUFPublish(ctx, cl, rest, stdout, stderr)
	}
}

func cmdTUFStatus(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tuf status", "tuf status [--json] [--roles]", stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	roles := fs.Bool("roles", false, "list every targets role (model roles and bins)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	var st server.TUFStatus
	if err := c.do(ctx, "GET", "/v1/tuf", nil, 0, "", &st); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	rows := [][]string{}
	for _, r := range []struct {
		name string
		v    int64
		exp  time.Time
	}{
		{"root", st.Versions.Root, st.Expires.Root}, {"targets", st.Versions.Targets, st.Expires.Targets},
		{"snapshot", st.Versions.Snapshot, st.Expires.Snapshot}, {"timestamp", st.Versions.Timestamp, st.Expires.Timestamp},
	} {
		k := st.Keys[r.name]
		held := "offline"
		for _, h := range st.Held {
			if h == r.name {
				held = "online"
			}
		}
		rows = append(rows, []string{r.name, strconv.FormatInt(r.v, 10), fmtTime(r.exp), fmt.Sprintf("%d of %d", k.Threshold, len(k.KeyIDs)), held})
	}
	table(stdout, "ROLE\tVERSION\tEXPIRES\tTHRESHOLD\tKEYS", rows)
	fmt.Fprintf(stdout, "\n%d targets in %d targets roles; models: %s; snapshot %d bytes\n", st.Targets, len(st.Roles), orDash(strings.Join(st.Models, ", ")), st.SnapshotBytes)
	if *roles {
		rows = rows[:0]
		for _, r := range st.Roles {
			rows = append(rows, []string{r.Name, strconv.FormatInt(r.Version, 10), strconv.Itoa(r.Targets), strconv.Itoa(r.Bytes), r.Expires})
		}
		fmt.Fprintln(stdout)
		table(stdout, "TARGETS ROLE\tVERSION\tTARGETS\tBYTES\tEXPIRES", rows)
	}
	for _, w := range st.Warnings {
		fmt.Fprintf(stdout, "\nWARNING: %s\n", w)
	}
	return nil
}

func cmdTUFKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tuf keygen", "tuf keygen --out FILE", stderr)
	out := fs.String("out", "", "private key file to create (0600; encrypted when FOSTER_PASSPHRASE is set); the public key goes to FILE.pub")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return usageError(fs, "--out is required")
	}
	priv, err := signing.GenerateEd25519File(*out, env.Passphrase.Bytes())
	if err != nil {
		return err
	}
	pubPEM, err := cryptoutils.MarshalPublicKeyToPEM(priv.Public())
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(*out+".pub", pubPEM, 0o644); err != nil {
		return err
	}
	_, id, err := tufrepo.TUFKey(priv.Public())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s\n", id)
	fmt.Fprintf(stderr, "created %s (private) and %s.pub (public); TUF key ID %s\n", *out, *out, id)
	return nil
}

// loadPublicKey reads KEY: a PEM public key, a PEM private key or a KMS URI.
func loadPublicKey(ctx context.Context, ref string) (*metadata.Key, string, error) {
	var pub crypto.PublicKey
	if signing.IsKMS(ref) {
		s, err := signing.Load(ctx, ref, nil)
		if err != nil {
			return nil, "", err
		}
		if pub, err = s.PublicKey(); err != nil {
			return nil, "", fmt.Errorf("public key of %s: %w", ref, err)
		}
	} else {
		b, err := readFileBounded(ref, signing.MaxKeyFileSize)
		if err != nil {
			return nil, "", err
		}
		if pub, err = cryptoutils.UnmarshalPEMToPublicKey(b); err != nil {
			priv, perr := signing.LoadPrivateKey(ref, env.Passphrase.Bytes())
			if perr != nil {
				return nil, "", fmt.Errorf("%s is neither a PEM public key nor a private key: %w", ref, err)
			}
			signer, ok := priv.(crypto.Signer)
			if !ok {
				return nil, "", fmt.Errorf("%s: unsupported key", ref)
			}
			pub = signer.Public()
		}
	}
	key, id, err := tufrepo.TUFKey(pub)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", ref, err)
	}
	return key, id, nil
}

func readFileBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// maxStaged bounds staged metadata files (a root is at most 512 KB, a
// targets file at most 5 MB).
const maxStaged = 8 << 20

func roleArg(s string) (role, value string, err error) {
	role, value, ok := strings.Cut(s, "=")
	if !ok || role == "" || value == "" {
		return "", "", fmt.Errorf("%w: want ROLE=VALUE, got %q", errUsage, s)
	}
	return role, value, nil
}

func parseExpires(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return time.Time{}, fmt.Errorf("%w: --expires %q: want a duration like 8760h", errUsage, s)
	}
	return time.Now().Add(d), nil
}

func cmdTUFStage(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || (args[0] != "root" && args[0] != "targets") {
		fmt.Fprint(stderr, tufUsage)
		if isHelp(args[:min(len(args), 1)]) {
			return nil
		}
		return fmt.Errorf("%w: foster tuf stage root|targets", errUsage)
	}
	what, args := args[0], args[1:]
	fs := newFlags("tuf stage "+what, "tuf stage "+what+" --out FILE ...", stderr)
	out := fs.String("out", "", "staged metadata file to write (required)")
	expires := fs.String("expires", "", "validity from now, e.g. 8760h (root default: keep if 30+ days left, else 1 year; targets: 1 year)")
	var add, remove, thresholds, modelKeys multi
	var delegate, undelegate string
	var modelThreshold int
	if what == "root" {
		fs.Var(&add, "add-key", "ROLE=KEY: trust KEY for ROLE (repeatable)")
		fs.Var(&remove, "remove-key", "ROLE=KEY or ROLE=KEYID: stop trusting a key for ROLE (repeatable)")
		fs.Var(&thresholds, "threshold", "ROLE=N: signatures ROLE needs (repeatable)")
	} else {
		fs.StringVar(&delegate, "delegate-model", "", "delegate (or re-key) models/M to --model-key")
		fs.Var(&modelKeys, "model-key", "KEY of the model's role (repeatable)")
		fs.IntVar(&modelThreshold, "model-threshold", 1, "signatures the model's role needs")
		fs.StringVar(&undelegate, "undelegate-model", "", "remove the delegation of models/M: its releases are no longer offered")
	}
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *out == "" {
		return usageError(fs, "--out is required")
	}
	exp, err := parseExpires(*expires)
	if err != nil {
		return err
	}
	var cur []byte
	if err := c.raw(ctx, "/v1/tuf/metadata/"+what, &cur); err != nil {
		return err
	}
	var staged []byte
	if what == "root" {
		ch := tufrepo.RootChange{Expires: exp, Add: map[string][]*metadata.Key{}, Remove: map[string][]string{}, Threshold: map[string]int{}}
		for _, a := range add {
			role, ref, err := roleArg(a)
			if err != nil {
				return err
			}
			k, _, err := loadPublicKey(ctx, ref)
			if err != nil {
				return err
			}
			ch.Add[role] = append(ch.Add[role], k)
		}
		for _, a := range remove {
			role, ref, err := roleArg(a)
			if err != nil {
				return err
			}
			id := ref
			if _, statErr := os.Stat(ref); statErr == nil || signing.IsKMS(ref) {
				if _, id, err = loadPublicKey(ctx, ref); err != nil {
					return err
				}
			}
			ch.Remove[role] = append(ch.Remove[role], id)
		}
		for _, a := range thresholds {
			role, v, err := roleArg(a)
			if err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 {
				return fmt.Errorf("%w: --threshold %s: want a positive number", errUsage, a)
			}
			ch.Threshold[role] = n
		}
		staged, err = tufrepo.StageRoot(cur, ch, time.Now())
	} else {
		ch := tufrepo.TargetsChange{Expires: exp}
		if delegate != "" {
			if len(modelKeys) == 0 {
				return fmt.Errorf("%w: --delegate-model needs at least one --model-key", errUsage)
			}
			d := tufrepo.ModelDelegation{Model: delegate, Threshold: modelThreshold}
			for _, ref := range modelKeys {
				k, _, err := loadPublicKey(ctx, ref)
				if err != nil {
					return err
				}
				d.Keys = append(d.Keys, k)
			}
			ch.Delegate = append(ch.Delegate, d)
		}
		if undelegate != "" {
			ch.Undelegate = append(ch.Undelegate, undelegate)
		}
		staged, err = tufrepo.StageTargets(cur, ch, time.Now())
	}
	if err != nil {
		return fmt.Errorf("staging %s: %w", what, err)
	}
	if err := atomicfile.WriteFile(*out, staged, 0o644); err != nil {
		return err
	}
	info, err := inspect(ctx, c, staged, "")
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "staged %s version %d in %s (expires %s); it needs:\n", what, info.Version, *out, fmtTime(info.Expires))
	printChecks(stdout, info)
	return nil
}

func cmdTUFSign(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tuf sign", "tuf sign --key KEY [--out FILE] STAGED", stderr)
	key := fs.String("key", "", "signing key: PEM private key file or KMS URI (required)")
	out := fs.String("out", "", "where to write the signed copy (default: overwrite STAGED)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *key == "" || len(pos) != 1 {
		return usageError(fs, "--key and one STAGED file are required")
	}
	raw, err := readFileBounded(pos[0], maxStaged)
	if err != nil {
		return err
	}
	s, err := signing.Load(ctx, *key, env.Passphrase.Bytes())
	if err != nil {
		return err
	}
	signed, err := tufrepo.SignStaged(ctx, raw, s)
	if err != nil {
		return err
	}
	if *out == "" {
		*out = pos[0]
	}
	if err := atomicfile.WriteFile(*out, signed, 0o644); err != nil {
		return err
	}
	pub, _ := s.PublicKey()
	_, id, _ := tufrepo.TUFKey(pub)
	fmt.Fprintf(stdout, "signed %s with key %s -> %s\n", pos[0], id, *out)
	return nil
}

func cmdTUFCombine(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tuf combine", "tuf combine --out FILE STAGED...", stderr)
	out := fs.String("out", "", "combined file to write (required)")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if *out == "" || len(pos) == 0 {
		return usageError(fs, "--out and at least one STAGED file are required")
	}
	var raws [][]byte
	for _, p := range pos {
		b, err := readFileBounded(p, maxStaged)
		if err != nil {
			return err
		}
		raws = append(raws, b)
	}
	combined, err := tufrepo.CombineStaged(raws...)
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(*out, combined, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "combined %d copies into %s\n", len(raws), *out)
	return nil
}

// inspect reports staged's signatures against the current root: rootFile
// if given, else the server's.
func inspect(ctx context.Context, c *client, staged []byte, rootFile string) (*tufrepo.Signatures, error) {
	var root []byte
	var err error
	switch {
	case rootFile != "":
		root, err = readFileBounded(rootFile, maxStaged)
	case c != nil:
		err = c.raw(ctx, "/v1/tuf/metadata/root", &root)
	default:
		err = fmt.Errorf("%w: give --root ROOT.json, or a connection to fetch the current root", errUsage)
	}
	if err != nil {
		return nil, err
	}
	return tufrepo.Inspect(staged, root)
}

func printChecks(w io.Writer, info *tufrepo.Signatures) {
	for _, ch := range info.Checks {
		state := "MISSING"
		if ch.Met {
			state = "met"
		}
		fmt.Fprintf(w, "  %-28s %d of threshold %d: %s", ch.By, ch.Have, ch.Threshold, state)
		if !ch.Met && len(ch.Missing) > 0 {
			fmt.Fprintf(w, " (unsigned keys: %s)", strings.Join(ch.Missing, ", "))
		}
		fmt.Fprintln(w)
	}
}

func cmdTUFInspect(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tuf inspect", "tuf inspect [--root ROOT.json] [--json] STAGED", stderr)
	rootFile := fs.String("root", "", "current root.json (default: fetched from the server)")
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "one STAGED file")
	}
	raw, err := readFileBounded(pos[0], maxStaged)
	if err != nil {
		return err
	}
	info, err := inspect(ctx, c, raw, *rootFile)
	if err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, info)
	}
	fmt.Fprintf(stdout, "%s version %d, expires %s, valid signatures from: %s\n", info.Type, info.Version, fmtTime(info.Expires), orDash(strings.Join(info.Valid, ", ")))
	printChecks(stdout, info)
	for _, ch := range info.Checks {
		if !ch.Met {
			return errors.New("not publishable yet: a threshold is not met")
		}
	}
	return nil
}

func cmdTUFPublish(ctx context.Context, c *client, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tuf publish", "tuf publish [--root FILE] [--targets FILE] [--json]", stderr)
	asJSON := fs.Bool("json", false, "print the repository status after the publish as JSON")
	rootFile := fs.String("root", "", "signed staged root")
	targetsFile := fs.String("targets", "", "signed staged targets")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	if *rootFile == "" && *targetsFile == "" {
		return usageError(fs, "give --root and/or --targets")
	}
	var req server.PublishRequest
	for _, x := range []struct {
		file string
		dst  *json.RawMessage
	}{{*rootFile, &req.Root}, {*targetsFile, &req.Targets}} {
		if x.file == "" {
			continue
		}
		b, err := readFileBounded(x.file, maxStaged)
		if err != nil {
			return err
		}
		if !json.Valid(b) {
			return fmt.Errorf("%s is not JSON", x.file)
		}
		*x.dst = b
	}
	var st tufrepo.Status
	if err := c.postJSON(ctx, "/v1/tuf/publish", req, &st); err != nil {
		return err
	}
	if *asJSON {
		return printJSON(stdout, st)
	}
	fmt.Fprintf(stdout, "published: root v%d, targets v%d, snapshot v%d, timestamp v%d\n", st.Versions.Root, st.Versions.Targets, st.Versions.Snapshot, st.Versions.Timestamp)
	return nil
}

// raw GETs path and returns the body bytes (bounded).
func (c *client) raw(ctx context.Context, path string, out *[]byte) error {
	var buf json.RawMessage
	if err := c.do(ctx, "GET", path, nil, 0, "", &buf); err != nil {
		return err
	}
	*out = bytes.TrimSpace(buf)
	return nil
}
