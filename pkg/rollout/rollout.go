// Package rollout is the signed decision of which devices are offered a
// staged release. fosterd writes it, TUF signs it, and every device checks
// it itself before it installs anything (docs/ROLLOUTS.md).
//
// # Threat model
//
// The database, the API and the network are untrusted for this decision.
// A staged release carries Terms in its TUF target's custom metadata under
// "rollout", so they are signed by the model's targets role together with
// the image's hashes; a device's groups are signed the same way, as the
// custom metadata of the target MembershipPath(model, serial). A device
// computes its bucket from the signed seed and its own URN (the one in its
// certificate): nobody can place it in a wave the signed terms exclude,
// and nobody can move it to another bucket without re-signing the terms.
// An unsigned answer (an API reply, an MQTT nudge) can only make a device
// check sooner; it never widens what the device may install.
//
// Package rollout is imported by the device agent: it must stay free of
// server dependencies.
package rollout

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/foster-ota/foster/pkg/identity"
)

// Scale is the resolution of shares and buckets: a share of Scale is the
// whole fleet, 1 is 0.01 %.
const Scale = 10000

// DefaultGroup is the group of a device no signed membership names.
const DefaultGroup = "default"

// Bounds on signed input (every size is bounded).
const (
	SeedBytes      = 32
	MaxGroups      = 64 // groups in one Terms, and groups of one device
	membershipDir  = "_groups"
	customKey      = "rollout"
	maxCustomBytes = 16 << 10
)

// StateHeld is the State of the terms of a release published with
// `foster release add --hold`: offered to no device until a rollout starts.
const StateHeld = "held"

// Terms are a staged release's rollout terms, signed in its target's custom
// metadata. Absent terms mean the release is offered to every device of its
// model (releases published without a rollout, as before rollouts existed).
type Terms struct {
	// ID names the rollout ("" while the release is held before any rollout).
	ID string `json:"id,omitempty"`
	// Seed (hex, SeedBytes) places devices in buckets; fixed for a rollout's
	// life so widening keeps every device already offered.
	Seed string `json:"seed"`
	// Share is how many buckets of Scale are offered: a device is eligible
	// when its bucket is below Share. 0 offers the release to no device
	// (held, halted, aborted).
	Share int `json:"share"`
	// Groups restricts the rollout to devices in one of these groups; empty
	// means every group.
	Groups []string `json:"groups,omitempty"`
	// State is informational ("held", "running", "paused", "halted",
	// "completed", "aborted"): the decision is Share and Groups alone.
	State string `json:"state,omitempty"`
}

// Validate checks terms read from signed metadata or built by fosterd.
func (t Terms) Validate() error {
	if t.ID != "" {
		if err := identity.ValidName(t.ID); err != nil {
			return fmt.Errorf("rollout id: %w", err)
		}
	}
	seed, err := hex.DecodeString(t.Seed)
	if err != nil || len(seed) != SeedBytes {
		return fmt.Errorf("rollout seed: want %d bytes of hex", SeedBytes)
	}
	if t.Share < 0 || t.Share > Scale {
		return fmt.Errorf("rollout share %d outside 0..%d", t.Share, Scale)
	}
	return validGroups(t.Groups)
}

func validGroups(groups []string) error {
	if len(groups) > MaxGroups {
		return fmt.Errorf("%d groups: at most %d", len(groups), MaxGroups)
	}
	for _, g := range groups {
		if err := identity.ValidName(g); err != nil {
			return fmt.Errorf("group: %w", err)
		}
	}
	return nil
}

// Bucket places a device in [0, Scale): the first 8 bytes of
// SHA-256(seed ‖ urn), big-endian, modulo Scale. seed is the decoded Seed.
func Bucket(seed []byte, urn string) int {
	h := sha256.New()
	h.Write(seed)
	h.Write([]byte(urn))
	sum := h.Sum(nil)
	return int(binary.BigEndian.Uint64(sum[:8]) % Scale)
}

// Decision is a device's verdict on one release's terms.
type Decision struct {
	Eligible bool
	Bucket   int
	// Reason says why a device is not eligible ("" when it is).
	Reason string
}

// Decide judges terms for the device urn whose signed groups are groups
// (nil or empty: DefaultGroup). Invalid terms offer nothing.
func (t Terms) Decide(urn string, groups []string) Decision {
	if err := t.Validate(); err != nil {
		return Decision{Reason: "invalid rollout terms: " + err.Error()}
	}
	seed, _ := hex.DecodeString(t.Seed)
	d := Decision{Bucket: Bucket(seed, urn)}
	if len(groups) == 0 {
		groups = []string{DefaultGroup}
	}
	if len(t.Groups) > 0 && !slices.ContainsFunc(groups, func(g string) bool { return slices.Contains(t.Groups, g) }) {
		d.Reason = fmt.Sprintf("rollout %s is for groups %v, device is in %v", t.ID, t.Groups, groups)
		return d
	}
	if d.Bucket >= t.Share {
		d.Reason = fmt.Sprintf("rollout %s offers buckets below %d, device is in bucket %d", t.ID, t.Share, d.Bucket)
		if t.ID == "" && t.Share == 0 {
			d.Reason = "held: offered to no device until a rollout starts"
		}
		return d
	}
	d.Eligible = true
	return d
}

// FromCustom reads the terms in a target's custom metadata; ok is false
// when the target carries none (offered to every device).
func FromCustom(custom []byte) (t Terms, ok bool, err error) {
	if len(custom) == 0 {
		return Terms{}, false, nil
	}
	if len(custom) > maxCustomBytes {
		return Terms{}, false, fmt.Errorf("custom metadata larger than %d bytes", maxCustomBytes)
	}
	var c map[string]json.RawMessage
	if err := json.Unmarshal(custom, &c); err != nil {
		return Terms{}, false, fmt.Errorf("custom metadata: %w", err)
	}
	raw, ok := c[customKey]
	if !ok || string(raw) == "null" {
		return Terms{}, false, nil
	}
	if err := json.Unmarshal(raw, &t); err != nil {
		return Terms{}, false, fmt.Errorf("rollout terms: %w", err)
	}
	if err := t.Validate(); err != nil {
		return Terms{}, false, err
	}
	return t, true, nil
}

// WithTerms returns custom with its "rollout" member set to t (nil removes
// it), leaving every other member as it was.
func WithTerms(custom []byte, t *Terms) ([]byte, error) {
	c := map[string]json.RawMessage{}
	if len(custom) > 0 {
		if err := json.Unmarshal(custom, &c); err != nil {
			return nil, fmt.Errorf("custom metadata: %w", err)
		}
	}
	if t == nil {
		delete(c, customKey)
	} else {
		if err := t.Validate(); err != nil {
			return nil, err
		}
		raw, err := json.Marshal(t)
		if err != nil {
			return nil, err
		}
		c[customKey] = raw
	}
	return json.Marshal(c)
}

// Membership is the signed record of a device's groups: the custom metadata
// of the target MembershipPath(model, serial).
type Membership struct {
	Groups []string `json:"groups"`
}

// MembershipPath is the TUF target path that carries a device's groups. Its
// second segment can never be a release version (versions are semver), so
// it shares the model's delegation without colliding with a release.
func MembershipPath(model, serial string) string {
	return model + "/" + membershipDir + "/" + serial
}

// IsMembershipPath reports whether a target path is a membership record.
func IsMembershipPath(targetPath string) bool {
	_, rest, ok := strings.Cut(targetPath, "/")
	if !ok {
		return false
	}
	dir, _, ok := strings.Cut(rest, "/")
	return ok && dir == membershipDir
}

// ParseMembership reads a membership target's custom metadata.
func ParseMembership(custom []byte) (Membership, error) {
	if len(custom) > maxCustomBytes {
		return Membership{}, fmt.Errorf("membership larger than %d bytes", maxCustomBytes)
	}
	var m Membership
	if err := json.Unmarshal(custom, &m); err != nil {
		return Membership{}, fmt.Errorf("membership: %w", err)
	}
	if err := validGroups(m.Groups); err != nil {
		return Membership{}, fmt.Errorf("membership: %w", err)
	}
	return m, nil
}

// ErrNotEligible is returned (wrapped, with the Decision's reason) when a
// device refuses a release its signed terms do not offer it.
var ErrNotEligible = errors.New("not offered by the signed rollout terms")
