package instance

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// RolloutsConfig is config.json "rollouts" (docs/ROLLOUTS.md).
type RolloutsConfig struct {
	// TickInterval is how often fosterd evaluates every active rollout: a
	// full walk of the model's devices for silent ones, automatic advance
	// after a wave's interval, and the halt check (default 10s). An
	// accepted attestation re-evaluates its model's rollouts at once, so
	// a failing wave halts within seconds whatever the interval.
	TickInterval string `json:"tick_interval,omitempty"`
}

// DefaultRolloutTick is RolloutsConfig.TickInterval's default.
const DefaultRolloutTick = 10 * time.Second

func (c RolloutsConfig) tick() (time.Duration, error) {
	if c.TickInterval == "" {
		return DefaultRolloutTick, nil
	}
	d, err := time.ParseDuration(c.TickInterval)
	if err != nil || d < 100*time.Millisecond {
		return 0, fmt.Errorf("config rollouts.tick_interval %q: want a duration of at least 100ms, like 10s", c.TickInterval)
	}
	return d, nil
}

// runRollouts runs the rollout Controller's loop until ctx ends.
func (in *Instance) runRollouts(ctx context.Context) error {
	err := in.Rollouts.Run(ctx, in.RolloutTick)
	if errors.Is(err, context.Canceled) || ctx.Err() != nil {
		return nil
	}
	return fmt.Errorf("rollout controller: %w", err)
}
