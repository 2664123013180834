// Command image assembles fosterd's container image without a Docker
// daemon, with go-containerregistry, and writes it as an OCI image layout
// (and optionally a tarball for `docker load`):
//
//	make image                          # bin/ static binaries, then:
//	go run ./deploy/image --bin bin --out image/oci [--tar image/fosterd.tar] [--tag foster/fosterd:dev]
//
// The image has no base: one layer with fosterd and foster (static
// binaries, CGO_ENABLED=0: no libc, no loader), /etc/passwd and /etc/group
// naming the nonroot user 65532, CA certificates for S3 over HTTPS, an
// empty data directory owned by 65532, and nothing else: no shell, no
// package manager. It runs as 65532:65532 with fosterd as entrypoint.
// No key is in the image: the data directory is a volume, keys come from
// it, from FOSTER_PASSPHRASE-encrypted files or from KMS URIs.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	var o options
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.StringVar(&o.binDir, "bin", "bin", "directory holding the static fosterd and foster binaries (make build)")
	fs.StringVar(&o.out, "out", "image/oci", "OCI image layout directory to write (must not exist or be empty)")
	fs.StringVar(&o.tar, "tar", "", "also write a tarball for `docker load -i` here")
	fs.StringVar(&o.tag, "tag", "foster/fosterd:dev", "image reference recorded in the layout and tarball")
	fs.StringVar(&o.caBundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle copied into the image for TLS to S3 and KMS endpoints (\"\": none)")
	fs.StringVar(&o.arch, "arch", "", "image architecture (default: the binaries' GOARCH)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "image: unexpected argument %q\n", fs.Arg(0))
		os.Exit(2)
	}
	digest, err := build(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("%s %s written to %s\n", o.tag, digest, o.out)
}
