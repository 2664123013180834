// Package tufclient wraps go-tuf's updater for the device agent: it refreshes
// metadata over the agent's mTLS client and picks the target to install from
// signed custom metadata. It never downloads targets (go-tuf's DownloadTarget
// buffers them in memory); client/internal/fetch streams them instead.
//
// Threat model: everything here is decided on TUF-verified metadata only.
// go-tuf provides freeze, rollback, mix-and-match and endless-data defences
// for metadata and keeps the newest trusted metadata in the state dir; this
// package adds the Foster rules on top: the model must be ours, the release
// counter must be above the installed one (no downgrades, even to a signed
// older image), and the hardware id must match when both sides name one.
package tufclient

import (
	"cmp"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path"
	"slices"
	"strings"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/fetcher"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// Doer sends HTTP requests; *http.Client satisfies it.
type Doer interface {
	Do(*http.Request) (*http.Response, error)
}

// Config configures a Client.
type Config struct {
	// Server is the fosterd base URL (https://host:port).
	Server string
	// MetadataDir holds the trusted root.json and go-tuf's metadata cache.
	MetadataDir string
	// Root is the trusted root metadata (the newest root.json the device has).
	Root []byte
	// HTTP fetches metadata; its requests are bound to the context given to New.
	HTTP Doer
	// UserAgent is sent with metadata requests.
	UserAgent string
}

// Client is one refresh cycle: go-tuf's updater can Refresh only once, so
// make a new Client per check. Not safe for concurrent use.
type Client struct {
	server string
	up     *updater.Updater
}

// New builds an updater whose fetches carry ctx (cancellation on shutdown).
func New(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.HTTP == nil || cfg.Server == "" || cfg.MetadataDir == "" || len(cfg.Root) == 0 {
		return nil, errors.New("tufclient: Server, MetadataDir, Root and HTTP are required")
	}
	ucfg, err := config.New(cfg.Server+"/tuf/", cfg.Root)
	if err != nil {
		return nil, fmt.Errorf("tuf config: %w", err)
	}
	ucfg.LocalMetadataDir = cfg.MetadataDir
	// Never used (targets are streamed by fetch), but go-tuf creates it.
	ucfg.LocalTargetsDir = cfg.MetadataDir
	ucfg.RemoteTargetsURL = cfg.Server + "/targets/"
	// cfg.SetDefaultFetcherHTTPClient wants an *http.Client, whose requests
	// would carry no context; the fetcher only needs Do, so give it one that
	// binds ctx (shutdown cancels metadata downloads). go-tuf's length limits
	// per role still apply.
	df := fetcher.NewDefaultFetcher()
	df.SetHTTPClient(boundDoer{ctx: ctx, d: cfg.HTTP})
	if cfg.UserAgent != "" {
		df.SetHTTPUserAgent(cfg.UserAgent)
	}
	ucfg.Fetcher = df
	up, err := updater.New(ucfg)
	if err != nil {
		return nil, fmt.Errorf("loading trusted TUF root: %w", err)
	}
	return &Client{server: cfg.Server, up: up}, nil
}

// Refresh runs the TUF client workflow (root, timestamp, snapshot, targets).
func (c *Client) Refresh() error {
	if err := c.up.Refresh(); err != nil {
		return fmt.Errorf("refreshing TUF metadata: %s%w", attack(err), err)
	}
	return nil
}

// attack names what a metadata verification failure may be defending against.
func attack(err error) string {
	switch {
	case errors.Is(err, &metadata.ErrBadVersionNumber{}):
		return "rollback (metadata older than already trusted): "
	case errors.Is(err, &metadata.ErrExpiredMetadata{}):
		return "freeze (expired metadata, or a wrong device clock): "
	case errors.Is(err, &metadata.ErrUnsignedMetadata{}):
		return "untrusted signature: "
	case errors.Is(err, &metadata.ErrLengthOrHashMismatch{}), errors.Is(err, &metadata.ErrDownloadLengthMismatch{}):
		return "mix-and-match or endless data: "
	}
	return ""
}

// Versions returns the trusted targets and snapshot versions.
func (c *Client) Versions() (targets, snapshot int64) {
	t := c.up.GetTrustedMetadataSet()
	if t.Snapshot != nil {
		snapshot = t.Snapshot.Signed.Version
	}
	if top := t.Targets[metadata.TARGETS]; top != nil {
		targets = top.Signed.Version
	}
	return targets, snapshot
}

// Custom is Foster's target custom metadata (docs/CONTRACTS.md).
type Custom struct {
	Model          string   `json:"model"`
	Version        string   `json:"version"`
	ReleaseCounter int64    `json:"release_counter"`
	HardwareIDs    []string `json:"hardware_ids"`
}

// Candidate is a target chosen for installation.
type Candidate struct {
	Name   string
	Info   *metadata.TargetFiles
	Custom Custom
	SHA256 []byte
	SHA512 []byte // nil unless signed
}

// Criteria select a target.
type Criteria struct {
	Model      string
	HardwareID string // optional
	// MinReleaseCounter: only targets with a strictly greater counter qualify.
	MinReleaseCounter int64
}

func parseCustom(tf *metadata.TargetFiles) (Custom, error) {
	var c Custom
	if tf.Custom == nil {
		return c, errors.New("no custom metadata")
	}
	if err := json.Unmarshal(*tf.Custom, &c); err != nil {
		return c, fmt.Errorf("custom metadata: %w", err)
	}
	return c, nil
}

// qualifies applies the Foster rules; reason is empty when the target qualifies.
func (cr Criteria) qualifies(c Custom) (reason string) {
	switch {
	case c.Model != cr.Model:
		return "other model"
	case c.ReleaseCounter <= cr.MinReleaseCounter:
		return "release counter not above installed"
	case cr.HardwareID != "" && len(c.HardwareIDs) > 0 && !slices.Contains(c.HardwareIDs, cr.HardwareID):
		return "other hardware"
	}
	return ""
}

// Latest returns the qualifying target with the highest release counter, or
// nil when the device is up to date. Call Refresh first.
//
// Every loaded role is searched to discover candidates, but a candidate is
// judged on the entry go-tuf's delegation walk returns for its path: a role
// listing a path it is not delegated for cannot smuggle a target in.
func (c *Client) Latest(cr Criteria) (*Candidate, error) {
	if err := c.loadModelRoles(cr.Model); err != nil {
		return nil, err
	}
	counters := map[string]int64{}
	for _, role := range c.up.GetTrustedMetadataSet().Targets {
		for name, tf := range role.Signed.Targets {
			if cu, err := parseCustom(tf); err == nil && cr.qualifies(cu) == "" {
				counters[name] = max(counters[name], cu.ReleaseCounter)
			}
		}
	}
	names := make([]string, 0, len(counters))
	for n := range counters {
		names = append(names, n)
	}
	// Highest counter first; ties broken by name so the choice is deterministic.
	slices.SortFunc(names, func(a, b string) int {
		if counters[a] != counters[b] {
			return cmp.Compare(counters[b], counters[a])
		}
		return strings.Compare(b, a)
	})
	for _, name := range names {
		tf, err := c.up.GetTargetInfo(name)
		if err != nil {
			if err.Error() == fmt.Sprintf("target %s not found", name) {
				continue // listed by a role not delegated for this path
			}
			return nil, fmt.Errorf("target %q: %w", name, err)
		}
		cu, err := parseCustom(tf)
		if err != nil || cr.qualifies(cu) != "" {
			continue
		}
		if err := checkTargetName(name); err != nil {
			return nil, err
		}
		cand := &Candidate{Name: name, Info: tf, Custom: cu}
		for alg, h := range tf.Hashes {
			switch alg {
			case "sha256":
				cand.SHA256 = h
			case "sha512":
				cand.SHA512 = h
			}
		}
		if len(cand.SHA256) != 32 {
			return nil, fmt.Errorf("target %q: signed metadata carries no sha256 hash", name)
		}
		return cand, nil
	}
	return nil, nil
}

// loadModelRoles makes go-tuf fetch and verify the delegated roles that may
// hold targets for model, by asking for a path shaped like a Foster target
// (<model>/<version>/<file>). Only the top-level targets are loaded by Refresh.
func (c *Client) loadModelRoles(model string) error {
	top := c.up.GetTrustedMetadataSet().Targets[metadata.TARGETS]
	if top == nil || top.Signed.Delegations == nil {
		return nil
	}
	probe := model + "/0/probe"
	_, err := c.up.GetTargetInfo(probe)
	if err != nil && err.Error() != fmt.Sprintf("target %s not found", probe) {
		return fmt.Errorf("loading delegated targets for model %s: %w", model, err)
	}
	return nil
}

// checkTargetName refuses paths that could escape the targets URL space.
func checkTargetName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || path.Clean(name) != name {
		return fmt.Errorf("target name %q is not a clean relative path", name)
	}
	for _, seg := range strings.Split(name, "/") {
		if seg == "." || seg == ".." {
			return fmt.Errorf("target name %q is not a clean relative path", name)
		}
	}
	return nil
}

// TargetURL is where the server serves cand: with consistent snapshots
// <server>/targets/<dir>/<sha256hex>.<base> (docs/CONTRACTS.md).
func (c *Client) TargetURL(cand *Candidate) string {
	dir, base := path.Split(cand.Name)
	if c.up.GetTrustedMetadataSet().Root.Signed.ConsistentSnapshot {
		base = hex.EncodeToString(cand.SHA256) + "." + base
	}
	var b strings.Builder
	b.WriteString(c.server + "/targets/")
	for _, seg := range strings.Split(strings.TrimSuffix(dir, "/"), "/") {
		if seg != "" {
			b.WriteString(url.PathEscape(seg) + "/")
		}
	}
	b.WriteString(url.PathEscape(base))
	return b.String()
}

// boundDoer attaches the agent's context to go-tuf's context-less requests.
type boundDoer struct {
	ctx context.Context
	d   Doer
}

func (b boundDoer) Do(req *http.Request) (*http.Response, error) {
	return b.d.Do(req.WithContext(b.ctx))
}
