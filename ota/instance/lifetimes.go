package instance

import (
	"fmt"
	"time"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/offline"
)

// TUFLifetimes is config.json's "tuf_lifetimes": how long the TUF metadata
// fosterd signs stays valid, per role, as Go durations ("24h"). Empty means
// the default. Root's lifetime is not here: fosterd never re-signs root on
// its own; each root ceremony sets it (foster tuf stage root --expires).
type TUFLifetimes struct {
	// Targets: top-level targets, when fosterd holds its key (default 8760h).
	Targets string `json:"targets,omitempty"`
	// Delegated: models/<model> roles and their hashed bins (default: targets).
	Delegated string `json:"delegated,omitempty"`
	// Snapshot (default 168h).
	Snapshot string `json:"snapshot,omitempty"`
	// Timestamp (default 24h).
	Timestamp string `json:"timestamp,omitempty"`
	// Bundle is the default lifetime of an offline bundle's timestamp and
	// snapshot (foster bundle export; default 720h), BundleMax the longest
	// an export may ask for (default 2160h, at most 8760h). docs/OFFLINE.md.
	Bundle    string `json:"bundle,omitempty"`
	BundleMax string `json:"bundle_max,omitempty"`
}

// bundles validates the offline bundle lifetimes.
func (l TUFLifetimes) bundles() (server.BundleLifetimes, error) {
	var out server.BundleLifetimes
	for _, f := range []struct {
		name, v string
		d       *time.Duration
	}{{"bundle", l.Bundle, &out.Default}, {"bundle_max", l.BundleMax, &out.Max}} {
		if f.v == "" {
			continue
		}
		d, err := time.ParseDuration(f.v)
		if err != nil {
			return out, fmt.Errorf("config tuf_lifetimes.%s %q: want a Go duration like 720h", f.name, f.v)
		}
		if d < offline.MinLifetime || d > offline.MaxLifetime {
			return out, fmt.Errorf("config tuf_lifetimes.%s %s: want between %s and %s", f.name, f.v, offline.MinLifetime, offline.MaxLifetime)
		}
		*f.d = d
	}
	if out.Default != 0 && out.Max != 0 && out.Default > out.Max {
		return out, fmt.Errorf("config tuf_lifetimes: bundle %s is longer than bundle_max %s", out.Default, out.Max)
	}
	return out, nil
}

// Lifetime bounds (docs/TUF.md).
const (
	// MinTimestampLifetime: fosterd re-signs timestamp a quarter of its
	// lifetime before it expires, checking every sixteenth of it; below a
	// few minutes a slow signer (KMS) or a busy host would let it lapse.
	MinTimestampLifetime = 5 * time.Minute
	// MaxLifetime bounds every role: beyond it, a stolen key's metadata
	// stays trusted for a decade.
	MaxLifetime = 10 * 365 * 24 * time.Hour
)

// Defaults of TUFLifetimes (those of tufrepo.Options).
const (
	DefaultTargetsLifetime   = 365 * 24 * time.Hour
	DefaultSnapshotLifetime  = 7 * 24 * time.Hour
	DefaultTimestampLifetime = 24 * time.Hour
)

// apply validates the lifetimes and sets them in o. Each must be a
// duration in [MinTimestampLifetime, MaxLifetime], and a role may not
// outlive nothing it depends on: timestamp <= snapshot <= targets and
// delegated (a snapshot that expired before the timestamp naming it would
// make clients fail while the timestamp looks fresh).
func (l TUFLifetimes) apply(o *tufrepo.Options) error {
	parse := func(name, v string, def time.Duration) (time.Duration, error) {
		if v == "" {
			return def, nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return 0, fmt.Errorf("config tuf_lifetimes.%s %q: want a Go duration like 24h", name, v)
		}
		if d < MinTimestampLifetime || d > MaxLifetime {
			return 0, fmt.Errorf("config tuf_lifetimes.%s %s: want between %s and %s", name, v, MinTimestampLifetime, MaxLifetime)
		}
		return d, nil
	}
	var err error
	if o.TargetsExpiry, err = parse("targets", l.Targets, DefaultTargetsLifetime); err != nil {
		return err
	}
	if o.DelegatedExpiry, err = parse("delegated", l.Delegated, o.TargetsExpiry); err != nil {
		return err
	}
	if o.SnapshotExpiry, err = parse("snapshot", l.Snapshot, DefaultSnapshotLifetime); err != nil {
		return err
	}
	if o.TimestampExpiry, err = parse("timestamp", l.Timestamp, DefaultTimestampLifetime); err != nil {
		return err
	}
	for _, c := range []struct {
		short, long string
		s, l        time.Duration
	}{
		{"timestamp", "snapshot", o.TimestampExpiry, o.SnapshotExpiry},
		{"snapshot", "targets", o.SnapshotExpiry, o.TargetsExpiry},
		{"snapshot", "delegated", o.SnapshotExpiry, o.DelegatedExpiry},
	} {
		if c.s > c.l {
			return fmt.Errorf("config tuf_lifetimes: %s lifetime %s is longer than %s lifetime %s; want %s <= %s", c.short, c.s, c.long, c.l, c.short, c.long)
		}
	}
	return nil
}

// refreshSchedule is how often fosterd's refresh loop runs and the margin
// within which it re-signs what expires: a quarter of the timestamp
// lifetime, at most RefreshMargin, checked four times per margin, at most
// every RefreshInterval. With the default 24h timestamp: every hour,
// re-signing what expires within 6 hours.
func refreshSchedule(timestamp time.Duration) (interval, margin time.Duration) {
	margin = min(RefreshMargin, timestamp/4)
	interval = min(RefreshInterval, margin/4)
	return interval, margin
}
