package client

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/foster-ota/foster/client/internal/install"
	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/nudgemsg"
)

// DefaultConfigPath is where foster-agent looks for its config file.
const DefaultConfigPath = "/etc/foster-agent/config.json"

// maxConfigFile bounds the config file.
const maxConfigFile = 1 << 20 // bytes

// Duration is a time.Duration written as a Go duration string ("90s", "1h").
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"90s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	*d = Duration(v)
	return nil
}

// FileConfig is the agent config file (JSON, unknown fields refused). Every
// field is optional except the installer's own settings; docs/AGENT.md has a
// complete example.
type FileConfig struct {
	// Installer is one of InstallerNames.
	Installer string `json:"installer"`
	// File configures the file installer.
	File struct {
		Path string `json:"path"`
	} `json:"file,omitzero"`
	AB       install.ABConfig      `json:"ab,omitzero"`
	RAUC     install.CommandConfig `json:"rauc,omitzero"`
	SWUpdate install.CommandConfig `json:"swupdate,omitzero"`
	Script   install.CommandConfig `json:"script,omitzero"`
	// InstallTimeout bounds installer commands (default 30m).
	InstallTimeout Duration `json:"install_timeout,omitempty"`
	// HealthCheck runs once the new image runs; exit status 0 means healthy.
	HealthCheck struct {
		Command []string `json:"command,omitempty"`
		Timeout Duration `json:"timeout,omitempty"` // default 5m
	} `json:"health_check,omitzero"`
	Reboot struct {
		// Command reboots the device (default ["reboot"]).
		Command []string `json:"command,omitempty"`
		// BootIDFile changes on every boot (default /proc/sys/kernel/random/boot_id).
		BootIDFile string `json:"boot_id_file,omitempty"`
		// MaxAttempts: reboots requested before giving up on one (default 3).
		MaxAttempts int `json:"max_attempts,omitempty"`
	} `json:"reboot,omitzero"`
	Download struct {
		// MinRate (bytes/s) over RateWindow below which a download is abandoned
		// and retried later (slow retrieval); 0 disables.
		MinRate         int64    `json:"min_rate,omitempty"`
		RateWindow      Duration `json:"rate_window,omitempty"`
		StallTimeout    Duration `json:"stall_timeout,omitempty"`
		CheckpointBytes int64    `json:"checkpoint_bytes,omitempty"`
		// RedirectCAFile: extra CA certificates (PEM) for the object store
		// fosterd may redirect downloads to (default: the system roots).
		RedirectCAFile string `json:"redirect_ca_file,omitempty"`
	} `json:"download,omitzero"`
	// MQTTBroker (tcp://HOST:PORT or ssl://HOST:PORT) enables "update now"
	// nudges; empty: polling only. The MQTT* files are TLS settings.
	MQTTBroker   string `json:"mqtt_broker,omitempty"`
	MQTTCAFile   string `json:"mqtt_ca_file,omitempty"`
	MQTTCertFile string `json:"mqtt_cert_file,omitempty"`
	MQTTKeyFile  string `json:"mqtt_key_file,omitempty"`
	// NudgeMinInterval: at most one nudged check per this long (default 1m).
	NudgeMinInterval Duration `json:"nudge_min_interval,omitempty"`
	Interval         Duration `json:"interval,omitempty"`
	RequestTimeout   Duration `json:"request_timeout,omitempty"`
	Clock            struct {
		// MaxLead: how far the wall clock may run ahead of signed evidence (default 1 year).
		MaxLead Duration `json:"max_lead,omitempty"`
		// TimestampValidity: the longest validity of the repository's TUF timestamps (default 7 days).
		TimestampValidity Duration `json:"timestamp_validity,omitempty"`
	} `json:"clock,omitzero"`
}

// LoadFileConfig reads and validates a config file.
func LoadFileConfig(path string) (*FileConfig, error) {
	b, err := statedir.ReadBounded(path, maxConfigFile)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c FileConfig
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("config %s: trailing data after the JSON object", path)
	}
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// Validate checks what can be checked without touching the device.
func (c *FileConfig) Validate() error {
	var errs []error
	if c.Installer != "" && !contains(InstallerNames, c.Installer) {
		errs = append(errs, fmt.Errorf("unknown installer %q (available: %s)", c.Installer, strings.Join(InstallerNames, ", ")))
	}
	if c.Download.MinRate < 0 || c.Download.CheckpointBytes < 0 || c.Reboot.MaxAttempts < 0 {
		errs = append(errs, errors.New("download.min_rate, download.checkpoint_bytes and reboot.max_attempts must not be negative"))
	}
	if len(c.HealthCheck.Command) > 0 && c.HealthCheck.Command[0] == "" {
		errs = append(errs, errors.New("health_check.command: empty program"))
	}
	if len(c.Reboot.Command) > 0 && c.Reboot.Command[0] == "" {
		errs = append(errs, errors.New("reboot.command: empty program"))
	}
	if c.MQTTBroker != "" {
		if err := nudgemsg.CheckBroker(c.MQTTBroker); err != nil {
			errs = append(errs, fmt.Errorf("mqtt_broker: %w", err))
		}
	} else if c.MQTTCAFile != "" || c.MQTTCertFile != "" || c.MQTTKeyFile != "" {
		errs = append(errs, errors.New("mqtt_ca_file, mqtt_cert_file and mqtt_key_file need mqtt_broker"))
	}
	return errors.Join(errs...)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// ErrInstallerConfig marks an installer configuration mistake.
var ErrInstallerConfig = install.ErrConfig

// InstallerNames lists the installers BuildInstaller knows.
var InstallerNames = []string{"file", "ab", "rauc", "swupdate", "script"}

// BuildInstaller returns the installer the config selects.
func (c *FileConfig) BuildInstaller(stateDir string) (Installer, error) {
	cmd := install.Command{Timeout: time.Duration(c.InstallTimeout)}
	download := filepath.Join(stateDir, "download")
	switch c.Installer {
	case "file":
		if c.File.Path == "" {
			return nil, fmt.Errorf("installer %q needs a target path (file.path or --target)", c.Installer)
		}
		return install.NewFile(c.File.Path)
	case "ab":
		return install.NewAB(c.AB, cmd)
	case "rauc":
		return install.NewCommand("rauc", c.RAUC, download, cmd)
	case "swupdate":
		return install.NewCommand("swupdate", c.SWUpdate, download, cmd)
	case "script":
		return install.NewCommand("script", c.Script, download, cmd)
	case "":
		return nil, errors.New("no installer configured (installer in the config file, or --installer)")
	}
	return nil, fmt.Errorf("unknown installer %q (available: %s)", c.Installer, strings.Join(InstallerNames, ", "))
}

// Apply copies the config's agent settings into cfg (fields already set win).
func (c *FileConfig) Apply(cfg *Config) {
	set := func(dst *time.Duration, v Duration) {
		if *dst == 0 {
			*dst = time.Duration(v)
		}
	}
	set(&cfg.RequestTimeout, c.RequestTimeout)
	set(&cfg.StallTimeout, c.Download.StallTimeout)
	set(&cfg.RateWindow, c.Download.RateWindow)
	set(&cfg.HealthTimeout, c.HealthCheck.Timeout)
	set(&cfg.MaxClockLead, c.Clock.MaxLead)
	set(&cfg.TimestampValidity, c.Clock.TimestampValidity)
	if cfg.MinRate == 0 {
		cfg.MinRate = c.Download.MinRate
	}
	if cfg.CheckpointEvery == 0 {
		cfg.CheckpointEvery = c.Download.CheckpointBytes
	}
	if cfg.HealthCheck == nil {
		cfg.HealthCheck = c.HealthCheck.Command
	}
	if cfg.RebootCommand == nil {
		cfg.RebootCommand = c.Reboot.Command
	}
	if cfg.RedirectCAFile == "" {
		cfg.RedirectCAFile = c.Download.RedirectCAFile
	}
	if cfg.BootIDFile == "" {
		cfg.BootIDFile = c.Reboot.BootIDFile
	}
	if cfg.MaxReboots == 0 {
		cfg.MaxReboots = c.Reboot.MaxAttempts
	}
	if cfg.MQTT.Broker == "" {
		cfg.MQTT.Broker, cfg.MQTT.CAFile, cfg.MQTT.CertFile, cfg.MQTT.KeyFile = c.MQTTBroker, c.MQTTCAFile, c.MQTTCertFile, c.MQTTKeyFile
	}
	set(&cfg.MQTT.MinInterval, c.NudgeMinInterval)
}

// NewInstaller returns the named installer with a target path (the file
// installer's file); other installers need a config file.
func NewInstaller(name, target string) (Installer, error) {
	if name != "file" {
		if contains(InstallerNames, name) {
			return nil, fmt.Errorf("installer %q is configured in the config file (--config)", name)
		}
		return nil, fmt.Errorf("unknown installer %q (available: %s)", name, strings.Join(InstallerNames, ", "))
	}
	c := &FileConfig{Installer: name}
	c.File.Path = target
	return c.BuildInstaller(os.TempDir())
}
