// Package deps pins the modules the project is about to use so go.sum is
// complete while packages are being written. Removed once real imports exist.
package deps

import (
	_ "github.com/aws/aws-sdk-go-v2/config"
	_ "github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	_ "github.com/aws/aws-sdk-go-v2/service/s3"
	_ "github.com/jackc/pgx/v5/stdlib"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/sigstore/sigstore/pkg/cryptoutils"
	_ "github.com/sigstore/sigstore/pkg/signature"
	_ "github.com/sigstore/sigstore/pkg/signature/dsse"
	_ "github.com/sigstore/sigstore/pkg/signature/kms"
	_ "github.com/smallstep/certificates/authority"
	_ "github.com/smallstep/certificates/authority/provisioner"
	_ "github.com/smallstep/certificates/db"
	_ "github.com/theupdateframework/go-tuf/v2/metadata"
	_ "github.com/theupdateframework/go-tuf/v2/metadata/config"
	_ "github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	_ "github.com/theupdateframework/go-tuf/v2/metadata/updater"
	_ "github.com/transparency-dev/merkle"
	_ "github.com/transparency-dev/merkle/rfc6962"
	_ "go.step.sm/crypto/keyutil"
	_ "go.step.sm/crypto/minica"
	_ "go.step.sm/crypto/pemutil"
	_ "go.step.sm/crypto/x509util"
	_ "golang.org/x/mod/sumdb/note"
	_ "modernc.org/sqlite"
)
