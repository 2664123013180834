package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/env"
)

// runCA runs the CA commands (docs/CA.md): the offline ceremony that
// certifies a new intermediate, and activating it on the running fosterd.
func runCA(ctx context.Context, c conn, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "use-intermediate" {
		return cmdCAUseIntermediate(ctx, c, args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "certify-intermediate" {
		fmt.Fprintln(stderr, "usage: foster ca certify-intermediate --dir DIR --key URI [--root-key FILE|URI] [--validity 87600h] [--out FILE]\n       foster [connection] ca use-intermediate --cert FILE --key URI")
		return errUsage
	}
	fs := newFlags("ca certify-intermediate", "ca certify-intermediate --dir DIR --key URI [--root-key FILE|URI] [--validity 87600h] [--out FILE]", stderr)
	dir := fs.String("dir", "", "instance (PKI) directory holding ca.pem and intermediate.pem (required)")
	key := fs.String("key", "", "the new issuing key: a KMS/HSM URI (softkms:path=..., awskms:key-id=..., pkcs11:...) or a key file (required)")
	rootKey := fs.String("root-key", "", "root CA key: a file on the offline media (decrypted with FOSTER_OFFLINE_PASSPHRASE, default FOSTER_PASSPHRASE) or a KMS/HSM URI (default DIR/keys/root_ca.key, a development instance's)")
	validity := fs.Duration("validity", 10*365*24*time.Hour, "lifetime of the new intermediate (never past the root)")
	out := fs.String("out", "", "write the new intermediate to FILE and leave DIR as it is, for foster ca use-intermediate on the running fosterd (default: replace DIR/intermediate.pem, fosterd stopped)")
	if _, err := parse(fs, args[1:]); err != nil {
		return err
	}
	if *dir == "" || *key == "" {
		return usageError(fs, "--dir and --key are required")
	}
	pass, rootPass := env.Passphrase.Bytes(), env.OfflinePassphrase.Bytes()
	if rootPass == nil {
		rootPass = pass
	}
	inter, err := ca.CertifyIntermediate(ctx, *dir, ca.CertifyOptions{
		Key: *key, KeyPassphrase: pass, RootPassphrase: rootPass, RootKey: *rootKey, Validity: *validity, Out: *out,
	})
	if err != nil {
		return err
	}
	if *out != "" {
		fmt.Fprintf(stdout, "intermediate %s (serial %s, until %s) certifies the new key, in %s\nactivate it on the running fosterd: foster [connection] ca use-intermediate --cert %s --key '%s'\n",
			inter.Subject.CommonName, inter.SerialNumber.Text(16), inter.NotAfter.UTC().Format(time.RFC3339), *out, *out, *key)
		return nil
	}
	fmt.Fprintf(stdout, "intermediate %s (serial %s, until %s) certifies the new key\nset config.json \"identity\": {\"intermediate_key\": %q} and restart fosterd\n",
		inter.Subject.CommonName, inter.SerialNumber.Text(16), inter.NotAfter.UTC().Format(time.RFC3339), *key)
	return nil
}
