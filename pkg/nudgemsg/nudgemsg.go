// Package nudgemsg is the "update now" message fosterd publishes over MQTT
// and foster-agent reads: its JSON format, its topics, and its strict parser.
//
// Threat model: MQTT carries no authority. Anyone who can publish to the
// broker can forge a nudge, so a nudge only ever asks a device to run its
// ordinary signed TUF check sooner; nothing in it is trusted to choose what
// is installed. The fields are hints for logs. The parser bounds the size,
// refuses unknown fields and trailing data, and validates every name, so a
// hostile publisher cannot make the agent allocate or log without bound.
package nudgemsg

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/foster-ota/foster/pkg/identity"
)

// MaxSize bounds an encoded message.
const MaxSize = 512 // bytes

// maxHint bounds the rollout id and version hints.
const maxHint = 128 // bytes

// Message asks the devices of Model (or one device, on its own topic) to
// check for updates now.
type Message struct {
	// Model is the model whose devices should check.
	Model string `json:"model"`
	// Rollout and Version are optional hints (the rollout or release that
	// prompted the nudge), for logs only.
	Rollout string `json:"rollout,omitempty"`
	Version string `json:"version,omitempty"`
	// At is when fosterd sent the nudge.
	At time.Time `json:"at"`
}

// ErrInvalid marks a message that does not parse or is out of bounds.
var ErrInvalid = errors.New("invalid nudge message")

// Topic prefix and layout (version 1).
const (
	prefix = "foster/v1/"
	suffix = "/nudge"
)

// ModelTopic is where fosterd nudges every device of model:
// foster/v1/models/<model>/nudge.
func ModelTopic(model string) (string, error) {
	if err := identity.ValidName(model); err != nil {
		return "", fmt.Errorf("nudge topic: model: %w", err)
	}
	return prefix + "models/" + model + suffix, nil
}

// DeviceTopic is where fosterd nudges one device:
// foster/v1/devices/<model>:<serial>/nudge. Names hold only [A-Za-z0-9._-],
// so the topic has none of MQTT's wildcards or separators in a segment and
// ':' makes it unambiguous.
func DeviceTopic(model, serial string) (string, error) {
	if err := identity.ValidName(model); err != nil {
		return "", fmt.Errorf("nudge topic: model: %w", err)
	}
	if err := identity.ValidName(serial); err != nil {
		return "", fmt.Errorf("nudge topic: serial: %w", err)
	}
	return prefix + "devices/" + model + ":" + serial + suffix, nil
}

// Marshal validates and encodes m.
func (m Message) Marshal() ([]byte, error) {
	if err := m.validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxSize {
		return nil, fmt.Errorf("%w: %d bytes, at most %d", ErrInvalid, len(b), MaxSize)
	}
	return b, nil
}

// Parse decodes a message strictly: at most MaxSize bytes, one JSON object,
// no unknown fields, a valid model, bounded hints, a time.
func Parse(b []byte) (Message, error) {
	var m Message
	if len(b) > MaxSize {
		return m, fmt.Errorf("%w: %d bytes, at most %d", ErrInvalid, len(b), MaxSize)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return Message{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if _, err := dec.Token(); err == nil {
		return Message{}, fmt.Errorf("%w: trailing data after the JSON object", ErrInvalid)
	}
	if err := m.validate(); err != nil {
		return Message{}, err
	}
	return m, nil
}

func (m Message) validate() error {
	if err := identity.ValidName(m.Model); err != nil {
		return fmt.Errorf("%w: model: %v", ErrInvalid, err)
	}
	for _, h := range []struct{ name, v string }{{"rollout", m.Rollout}, {"version", m.Version}} {
		if len(h.v) > maxHint {
			return fmt.Errorf("%w: %s hint longer than %d bytes", ErrInvalid, h.name, maxHint)
		}
		for _, r := range h.v {
			if r < 0x21 || r > 0x7e {
				return fmt.Errorf("%w: %s hint: want printable ASCII without spaces", ErrInvalid, h.name)
			}
		}
	}
	if m.At.IsZero() {
		return fmt.Errorf("%w: at is required", ErrInvalid)
	}
	return nil
}
