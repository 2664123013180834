package instance

import (
	"log/slog"

	"github.com/foster-ota/foster/ota/nudge"
	"github.com/foster-ota/foster/ota/rollout"
)

// MQTTConfig is config.json "mqtt": the broker fosterd publishes "update
// now" nudges to (docs/ROLLOUTS.md). Without a broker fosterd sends no
// nudges and devices find updates at their next poll.
type MQTTConfig struct {
	// Broker is tcp://HOST:PORT, or ssl://HOST:PORT for TLS.
	Broker string `json:"broker,omitempty"`
	// CAFile verifies the broker's certificate (default: system roots);
	// CertFile and KeyFile are a client certificate. Paths relative to DIR.
	CAFile   string `json:"ca_file,omitempty"`
	CertFile string `json:"cert_file,omitempty"`
	KeyFile  string `json:"key_file,omitempty"`
	// ClientID is fosterd's MQTT client id (default "fosterd"); give each
	// replica its own.
	ClientID string `json:"client_id,omitempty"`
}

// openNudger starts the nudge publisher when a broker is configured (nil
// otherwise). It connects in the background: a broker that is down does
// not stop fosterd from starting.
func openNudger(dir string, c MQTTConfig, log *slog.Logger) (*nudge.Publisher, error) {
	if c.Broker == "" {
		return nil, nil
	}
	path := func(p string) string {
		if p == "" {
			return ""
		}
		return resolve(dir, p)
	}
	return nudge.New(nudge.Config{
		Broker: c.Broker, CAFile: path(c.CAFile), CertFile: path(c.CertFile), KeyFile: path(c.KeyFile),
		ClientID: c.ClientID, Log: log.With("component", "nudge"),
	})
}

// RolloutNudger is the nudger to give rollout.Config.Nudger: nil (no
// nudges) without a broker, never a nil pointer inside a non-nil interface.
func (in *Instance) RolloutNudger() rollout.Nudger {
	if in.Nudger == nil {
		return nil
	}
	return in.Nudger
}
