// Package nudge is the agent's "update now" listener: it subscribes to its
// model's and its own nudge topics on an MQTT broker (pkg/nudgemsg) and
// signals the run loop to check for updates at once.
//
// Threat model: the broker and everyone who can publish to it are
// untrusted. A nudge only wakes the loop for the ordinary signed TUF check,
// so a forged one changes nothing but timing; the loop debounces wakes (at
// most one extra check per interval, client.Run) so a flood cannot make the
// device hammer fosterd. Messages are parsed strictly and bounded; the ones
// that do not parse, or name another model, are ignored. When the broker is
// down the agent keeps polling: the listener logs once and reconnects in
// the background with backoff.
package nudge

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/foster-ota/foster/pkg/nudgemsg"
)

// Config configures a Listener.
type Config struct {
	// Broker is tcp://HOST:PORT, or ssl://HOST:PORT for TLS (required).
	Broker string
	// CAFile: CA certificates (PEM) for the broker's certificate (default:
	// system roots); CertFile and KeyFile: a client certificate.
	CAFile, CertFile, KeyFile string
	// Model and Serial select the topics (required).
	Model, Serial string
	Log           *slog.Logger
	// UnreachableAfter: how long the first connection may take before the
	// listener logs (once) that the broker is unreachable (default 10s).
	UnreachableAfter time.Duration
}

// Listener delivers nudges. Safe for concurrent use.
type Listener struct {
	c      mqtt.Client
	wake   chan struct{}
	log    *slog.Logger
	model  string
	topics map[string]byte
	done   chan struct{}
	once   sync.Once
	// ignored counts messages dropped as malformed or for another model.
	ignored atomic.Int64
}

const qos = 1

// Start validates cfg and starts connecting in the background: it never
// waits for the broker.
func Start(cfg Config) (*Listener, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.UnreachableAfter <= 0 {
		cfg.UnreachableAfter = 10 * time.Second
	}
	mt, err := nudgemsg.ModelTopic(cfg.Model)
	if err != nil {
		return nil, err
	}
	dt, err := nudgemsg.DeviceTopic(cfg.Model, cfg.Serial)
	if err != nil {
		return nil, err
	}
	opts, err := nudgemsg.ClientOptions(cfg.Broker, cfg.CAFile, cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	log := cfg.Log.With("broker", cfg.Broker)
	l := &Listener{wake: make(chan struct{}, 1), log: log, model: cfg.Model,
		topics: map[string]byte{mt: qos, dt: qos}, done: make(chan struct{})}
	var lost atomic.Bool
	opts.SetClientID("foster-agent/" + cfg.Model + ":" + cfg.Serial).
		SetCleanSession(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(15 * time.Second).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(5 * time.Minute). // exponential backoff up to this
		SetConnectTimeout(10 * time.Second).
		SetKeepAlive(60 * time.Second).
		SetOrderMatters(false).
		SetOnConnectHandler(func(c mqtt.Client) {
			lost.Store(false)
			// Clean session: subscribe on every (re)connect, without
			// blocking paho's connection goroutine.
			go l.subscribe(c)
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			if !lost.Swap(true) {
				log.Warn("lost the MQTT broker; polling continues, reconnecting in the background", "err", err)
			}
		})
	l.c = mqtt.NewClient(opts)
	t := l.c.Connect()
	go func() {
		select {
		case <-t.Done():
			if err := t.Error(); err != nil {
				log.Warn("MQTT nudges unavailable; polling continues", "err", err)
			}
		case <-time.After(cfg.UnreachableAfter):
			if !l.c.IsConnectionOpen() {
				log.Warn("MQTT broker unreachable; polling continues, retrying in the background")
			}
		case <-l.done:
		}
	}()
	return l, nil
}

func (l *Listener) subscribe(c mqtt.Client) {
	t := c.SubscribeMultiple(l.topics, l.handle)
	select {
	case <-t.Done():
	case <-time.After(30 * time.Second):
		l.log.Warn("MQTT subscription not acknowledged; polling continues")
		return
	case <-l.done:
		return
	}
	if err := t.Error(); err != nil {
		l.log.Warn("MQTT subscription refused; polling continues", "err", err)
		return
	}
	l.log.Info("listening for update nudges", "topics", len(l.topics))
}

// handle runs on paho's goroutine: it never blocks.
func (l *Listener) handle(_ mqtt.Client, m mqtt.Message) {
	msg, err := nudgemsg.Parse(m.Payload())
	if err != nil || msg.Model != l.model {
		if l.ignored.Add(1) == 1 {
			l.log.Warn("ignoring a malformed nudge (further ones are counted, not logged)", "topic", m.Topic(), "err", err)
		}
		return
	}
	l.log.Debug("nudge received", "topic", m.Topic(), "rollout", msg.Rollout, "version", msg.Version)
	select {
	case l.wake <- struct{}{}:
	default: // a wake is already pending
	}
}

// C receives a value when a nudge arrived (coalesced: one pending at most).
func (l *Listener) C() <-chan struct{} { return l.wake }

// Ignored counts messages dropped as malformed or for another model.
func (l *Listener) Ignored() int64 { return l.ignored.Load() }

// Close disconnects.
func (l *Listener) Close() {
	l.once.Do(func() {
		close(l.done)
		l.c.Disconnect(250)
	})
}
