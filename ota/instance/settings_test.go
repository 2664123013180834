package instance_test

import (
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/instance"
)

// Every setting has its own environment variable and can be set by path.
func TestEverySettingHasAnEnvironmentVariableAndASetFlag(t *testing.T) {
	all := instance.Settings()
	seen := map[string]string{}
	for _, p := range all {
		e := instance.SettingEnv(p)
		if other, dup := seen[e]; dup {
			t.Fatalf("%s and %s share the environment variable %s", p, other, e)
		}
		seen[e] = p
		var c instance.Config
		sample := map[string]string{"tuf_keys.model_keys": `{"gw":"keys/gw.key"}`, "tuf_keys.extra": `["keys/next.key"]`,
			"distribution.public": "true"}[p]
		if sample == "" {
			sample = "7"
		}
		if err := c.ApplySets([]string{p + "=" + sample}); err != nil {
			t.Errorf("--set %s=%s: %v", p, sample, err)
		}
		if reflect.ValueOf(c).IsZero() {
			t.Errorf("--set %s=%s changed nothing", p, sample)
		}
	}
	if instance.SettingEnv("http.read_timeout") != "FOSTER_HTTP_READ_TIMEOUT" {
		t.Fatal(instance.SettingEnv("http.read_timeout"))
	}
	var c instance.Config
	for _, bad := range []string{"nosuch=1", "http=1", "http.max_connections=many", "distribution.public=maybe", "tuf_keys.extra=[", "listen"} {
		if err := c.ApplySets([]string{bad}); err == nil {
			t.Errorf("--set %s accepted", bad)
		}
	}
}

// flag > environment > config.json > default, seen through a whole
// instance.Open: rollouts.tick_interval becomes Instance.RolloutTick.
func TestSettingPrecedenceFlagEnvConfig(t *testing.T) {
	dir, p := newInstance(t)
	open := func(sets ...string) (time.Duration, error) {
		t.Helper()
		in, err := instance.Open(context.Background(), dir, instance.Overrides{Sets: sets}, nil, nil)
		if err != nil {
			return 0, err
		}
		defer in.Close()
		return in.RolloutTick, nil
	}
	if d, err := open(); err != nil || d != instance.DefaultRolloutTick {
		t.Fatalf("default: %s, %v", d, err)
	}
	cfg, err := instance.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Rollouts.TickInterval = "20s"
	writeConfig(t, p.Config, cfg)
	if d, err := open(); err != nil || d != 20*time.Second {
		t.Fatalf("config.json: %s, %v", d, err)
	}
	t.Setenv("FOSTER_ROLLOUTS_TICK_INTERVAL", "30s")
	if d, err := open(); err != nil || d != 30*time.Second {
		t.Fatalf("environment over config.json: %s, %v", d, err)
	}
	if d, err := open("rollouts.tick_interval=40s"); err != nil || d != 40*time.Second {
		t.Fatalf("flag over environment: %s, %v", d, err)
	}
	t.Setenv("FOSTER_ROLLOUTS_TICK_INTERVAL", "soon")
	if _, err := open(); err == nil || !strings.Contains(err.Error(), "rollouts.tick_interval") {
		t.Fatalf("bad value from the environment: %v", err)
	}
	t.Setenv("FOSTER_ROLLOUTS_TICK_INTERVAL", "30s")
	if _, err := open("rollouts.tick=1s"); err == nil || !strings.Contains(err.Error(), "rollouts.tick=1s") {
		t.Fatalf("unknown setting: %v", err)
	}
	if !slices.Contains(instance.Settings(), "tuf_lifetimes.timestamp") {
		t.Fatal("Settings misses tuf_lifetimes.timestamp")
	}
}
