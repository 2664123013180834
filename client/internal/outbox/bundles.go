package outbox

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/atomicfile"
)

// KeepBundles is how many bundles (the newest) stay on the device; fosterd
// serves any older one to auditors (GET /v1/attestations/{device}/{seq}/bundle).
const KeepBundles = 256

// maxResponse bounds the server's answer to an attestation: a bundle
// carries the TUF metadata that signed the target (docs/ATTESTATIONS.md).
const maxResponse = 17 << 20 // bytes

// saveBundle keeps the bundle fosterd returned for attestation seq in
// bundles/<seq>.json: the device's own proof, checkable offline with
// `foster audit verify`, that its install was logged. Answers without a
// bundle (servers without a transparency log) are ignored.
func (o *Outbox) saveBundle(seq int64, body []byte) error {
	if len(body) > maxResponse {
		return fmt.Errorf("attestation %d: answer larger than %d bytes", seq, maxResponse)
	}
	var resp struct {
		Bundle json.RawMessage `json:"bundle"`
	}
	if len(body) == 0 || json.Unmarshal(body, &resp) != nil || len(resp.Bundle) == 0 || string(resp.Bundle) == "null" {
		return nil
	}
	dir := bundlesDir(o.Layout)
	if err := os.MkdirAll(dir, statedir.DirMode); err != nil {
		return fmt.Errorf("attestation %d: %w", seq, err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, name(seq)), append(resp.Bundle, '\n'), 0o644); err != nil {
		return fmt.Errorf("saving bundle of attestation %d: %w", seq, err)
	}
	o.Log.Info("attestation logged; bundle saved", "sequence", seq, "bundle", filepath.Join(dir, name(seq)))
	seqs, err := list(dir)
	if err != nil {
		return err
	}
	for i := 0; i < len(seqs)-KeepBundles; i++ {
		if err := os.Remove(filepath.Join(dir, name(seqs[i]))); err != nil {
			return err
		}
	}
	return nil
}

// bundlesDir is DIR/attestations/bundles.
func bundlesDir(l statedir.Layout) string { return filepath.Join(l.Dir, "attestations", "bundles") }
