package client

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/foster-ota/foster/client/internal/enroll"
	"github.com/foster-ota/foster/client/internal/statedir"
)

// ErrAlreadyEnrolled is returned by Enroll when the state dir holds a certificate.
var ErrAlreadyEnrolled = enroll.ErrAlreadyEnrolled

// EnrollConfig is one enrollment.
type EnrollConfig struct {
	StateDir string
	// Server is the fosterd base URL, https only.
	Server string
	// Token is the one-time enrollment token (a secret: never logged).
	Token  string
	Serial string
	Model  string
	// HardwareID is the device's hardware id, required when its model
	// declares hardware ids: later installs take only targets listing it
	// (or listing none).
	HardwareID string
	// CARootPath is the Foster root CA certificate (PEM), copied to DIR/ca.pem.
	CARootPath string
	// TUFRootPath is the initial trusted TUF root.json, copied to DIR/tuf/root.json.
	TUFRootPath string
	// Timeout bounds the enrollment request; default 60s.
	Timeout time.Duration
	Logger  *slog.Logger
}

// EnrollResult describes the new identity.
type EnrollResult struct {
	Device   string // urn:foster:device:<model>:<serial>
	DeviceID string
	NotAfter time.Time
	// KeyReused is true when a key left by an interrupted enrollment was used.
	KeyReused bool
}

// Enroll generates (or reuses, after an interrupted attempt) the device key,
// obtains a certificate from the server and stores the trust roots.
func Enroll(ctx context.Context, cfg EnrollConfig) (*EnrollResult, error) {
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("state dir not set")
	}
	caRoot, err := statedir.ReadBounded(cfg.CARootPath, statedir.MaxSmallFile)
	if err != nil {
		return nil, fmt.Errorf("reading CA root: %w", err)
	}
	tufRoot, err := statedir.ReadBounded(cfg.TUFRootPath, statedir.MaxSmallFile)
	if err != nil {
		return nil, fmt.Errorf("reading TUF root: %w", err)
	}
	res, err := enroll.Run(ctx, enroll.Request{
		Layout:     statedir.Layout{Dir: cfg.StateDir},
		Server:     cfg.Server,
		Token:      cfg.Token,
		Serial:     cfg.Serial,
		Model:      cfg.Model,
		HardwareID: cfg.HardwareID,
		CARoot:     caRoot,
		TUFRoot:    tufRoot,
		Timeout:    cfg.Timeout,
		Log:        orDiscard(cfg.Logger),
	})
	if err != nil {
		return nil, err
	}
	return &EnrollResult{Device: res.Principal.URI(), DeviceID: res.DeviceID, NotAfter: res.NotAfter, KeyReused: res.KeyReused}, nil
}

func orDiscard(l *slog.Logger) *slog.Logger {
	if l == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l
}
