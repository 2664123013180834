// Package statedir is the on-disk layout of a device agent's state directory
// and the small files in it that describe the device (agent.json).
//
//	DIR/device.key               device private key (ECDSA P-256, PKCS#8 PEM, 0600); never leaves the device
//	DIR/device.crt               device certificate chain (leaf + intermediate); its presence means "enrolled"
//	DIR/ca.pem                   Foster root CA, the only TLS trust anchor of the agent
//	DIR/agent.json               server URL, model, serial, device id
//	DIR/state.json               install journal (client/internal/journal)
//	DIR/tuf/root.json            trusted TUF root; go-tuf keeps its metadata cache next to it
//	DIR/attestations/outbox/     signed install attestations not yet accepted by the server
//	DIR/attestations/sent/       attestations the server accepted
//	DIR/attestations/rejected/   attestations the server refused as malformed (kept for audit)
//	DIR/.lock                    advisory lock: one agent process per state dir
package statedir

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/foster-ota/foster/pkg/atomicfile"
	"github.com/foster-ota/foster/pkg/identity"
)

// DirMode is the permission of the state directory and its private subdirectories.
const DirMode = 0o700

// MaxSmallFile bounds every small file read from the state dir (certificates,
// agent.json, state.json, TUF root).
const MaxSmallFile = 1 << 20 // bytes

// Layout names the files of a state directory. Safe for concurrent use (it is a value).
type Layout struct{ Dir string }

func (l Layout) Key() string         { return filepath.Join(l.Dir, "device.key") }
func (l Layout) Cert() string        { return filepath.Join(l.Dir, "device.crt") }
func (l Layout) CA() string          { return filepath.Join(l.Dir, "ca.pem") }
func (l Layout) AgentConfig() string { return filepath.Join(l.Dir, "agent.json") }
func (l Layout) State() string       { return filepath.Join(l.Dir, "state.json") }
func (l Layout) TUFDir() string      { return filepath.Join(l.Dir, "tuf") }
func (l Layout) TUFRoot() string     { return filepath.Join(l.Dir, "tuf", "root.json") }
func (l Layout) Outbox() string      { return filepath.Join(l.Dir, "attestations", "outbox") }
func (l Layout) Sent() string        { return filepath.Join(l.Dir, "attestations", "sent") }
func (l Layout) Rejected() string    { return filepath.Join(l.Dir, "attestations", "rejected") }
func (l Layout) lockFile() string    { return filepath.Join(l.Dir, ".lock") }

// Ensure creates the state dir and its subdirectories with mode 0700.
func (l Layout) Ensure() error {
	if l.Dir == "" {
		return errors.New("state dir not set")
	}
	for _, d := range []string{l.Dir, l.TUFDir(), l.Outbox(), l.Sent(), l.Rejected()} {
		if err := os.MkdirAll(d, DirMode); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	// MkdirAll leaves an existing directory's mode alone; the state dir holds the device key.
	if err := os.Chmod(l.Dir, DirMode); err != nil {
		return fmt.Errorf("restricting %s to 0700: %w", l.Dir, err)
	}
	return nil
}

// Enrolled reports whether the state dir holds a device certificate.
func (l Layout) Enrolled() (bool, error) {
	_, err := os.Stat(l.Cert())
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, os.ErrNotExist):
		return false, nil
	default:
		return false, err
	}
}

// ReadBounded reads path, refusing files larger than max bytes.
func ReadBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}

// AgentConfig is DIR/agent.json: what enrollment learned about the device.
type AgentConfig struct {
	// Server is the fosterd base URL, https://host:port, without a trailing slash.
	Server   string `json:"server"`
	Model    string `json:"model"`
	Serial   string `json:"serial"`
	DeviceID string `json:"device_id"`
	// HardwareID, when set, restricts installs to targets whose hardware_ids list it
	// (or list none).
	HardwareID string    `json:"hardware_id,omitempty"`
	EnrolledAt time.Time `json:"enrolled_at,omitzero"`
}

// Principal is the device identity named by the config.
func (c *AgentConfig) Principal() identity.Principal { return identity.Device(c.Model, c.Serial) }

// Validate checks every field.
func (c *AgentConfig) Validate() error {
	if _, err := NormalizeServerURL(c.Server); err != nil {
		return err
	}
	if err := c.Principal().Validate(); err != nil {
		return err
	}
	if c.HardwareID != "" {
		if err := identity.ValidName(c.HardwareID); err != nil {
			return fmt.Errorf("hardware id: %w", err)
		}
	}
	return nil
}

// LoadAgentConfig reads and validates agent.json.
func LoadAgentConfig(path string) (*AgentConfig, error) {
	b, err := ReadBounded(path, MaxSmallFile)
	if err != nil {
		return nil, err
	}
	var c AgentConfig
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &c, nil
}

// SaveAgentConfig writes agent.json atomically.
func SaveAgentConfig(path string, c *AgentConfig) error {
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), 0o644)
}

// NormalizeServerURL checks that s is an https URL with a host and no query,
// and returns it without a trailing slash.
func NormalizeServerURL(s string) (string, error) {
	if s == "" {
		return "", errors.New("server URL is empty")
	}
	u, err := url.Parse(s)
	if err != nil {
		return "", fmt.Errorf("server URL %q: %w", s, err)
	}
	if u.Scheme != "https" {
		return "", fmt.Errorf("server URL %q: scheme must be https", s)
	}
	if u.Host == "" {
		return "", fmt.Errorf("server URL %q: missing host", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("server URL %q: must not carry user info, a query or a fragment", s)
	}
	return strings.TrimRight(u.String(), "/"), nil
}
