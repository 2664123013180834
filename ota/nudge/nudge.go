// Package nudge is fosterd's "update now" publisher: it tells devices over
// MQTT to run their ordinary update check at once (pkg/nudgemsg has the
// message and topics).
//
// A nudge carries no authority: devices only check the signed TUF
// repository sooner, so a lost, late or forged nudge changes nothing but
// timing, and polling stays the source of truth. Hence the publisher never
// holds up its caller: when the broker is down a nudge is dropped with a
// log line (the client reconnects in the background), and a publish waits
// at most Config.Timeout for the broker's acknowledgement (QoS 1).
package nudge

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/foster-ota/foster/pkg/nudgemsg"
)

// Defaults.
const (
	DefaultTimeout  = 2 * time.Second // per publish, for the broker's PUBACK
	DefaultClientID = "fosterd"
	qos             = 1
)

// ErrUnavailable: the broker is not connected; the nudge was dropped.
var ErrUnavailable = errors.New("MQTT broker not connected: nudge dropped (devices still poll)")

// Config configures a Publisher.
type Config struct {
	// Broker is the broker URL: tcp://HOST:PORT, or ssl://HOST:PORT /
	// mqtts://HOST:PORT for TLS (required).
	Broker string
	// CAFile: CA certificates (PEM) the broker's certificate must chain to
	// (default: the system roots). CertFile and KeyFile: a client
	// certificate for brokers that require one.
	CAFile, CertFile, KeyFile string
	// ClientID is the MQTT client id (default "fosterd"); replicas need
	// distinct ids, or the broker disconnects one for the other.
	ClientID string
	// Timeout bounds one publish (default 2s).
	Timeout time.Duration
	Log     *slog.Logger
}

// Publisher publishes nudges. Safe for concurrent use.
type Publisher struct {
	c       mqtt.Client
	timeout time.Duration
	log     *slog.Logger
	now     func() time.Time
}

// New validates cfg and starts connecting in the background; it does not
// wait for the broker.
func New(cfg Config) (*Publisher, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.ClientID == "" {
		cfg.ClientID = DefaultClientID
	}
	opts, err := nudgemsg.ClientOptions(cfg.Broker, cfg.CAFile, cfg.CertFile, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("mqtt: %w", err)
	}
	log := cfg.Log.With("broker", cfg.Broker)
	opts.SetClientID(cfg.ClientID).
		SetCleanSession(true).
		SetConnectRetry(true).
		SetConnectRetryInterval(5 * time.Second).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(time.Minute).
		SetConnectTimeout(10 * time.Second).
		SetWriteTimeout(cfg.Timeout).
		SetOnConnectHandler(func(mqtt.Client) { log.Info("connected to the MQTT broker") }).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			log.Warn("lost the MQTT broker; nudges are dropped until it is back", "err", err)
		})
	p := &Publisher{c: mqtt.NewClient(opts), timeout: cfg.Timeout, log: log, now: time.Now}
	p.c.Connect() // retries in the background (ConnectRetry)
	return p, nil
}

// Nudge asks every device of model to check for updates now. A nil
// Publisher (no broker configured) sends nothing and returns nil.
func (p *Publisher) Nudge(ctx context.Context, model string) error {
	if p == nil {
		return nil
	}
	topic, err := nudgemsg.ModelTopic(model)
	if err != nil {
		return err
	}
	return p.publish(ctx, topic, nudgemsg.Message{Model: model})
}

// NudgeDevice asks one device to check for updates now.
func (p *Publisher) NudgeDevice(ctx context.Context, model, serial string) error {
	if p == nil {
		return nil
	}
	topic, err := nudgemsg.DeviceTopic(model, serial)
	if err != nil {
		return err
	}
	return p.publish(ctx, topic, nudgemsg.Message{Model: model})
}

func (p *Publisher) publish(ctx context.Context, topic string, m nudgemsg.Message) error {
	m.At = p.now().UTC().Truncate(time.Millisecond)
	b, err := m.Marshal()
	if err != nil {
		return err
	}
	if !p.c.IsConnectionOpen() {
		p.log.Warn("nudge dropped: MQTT broker not connected", "topic", topic)
		return ErrUnavailable
	}
	wait := p.timeout
	if d, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(d))
	}
	t := p.c.Publish(topic, qos, false, b)
	if !t.WaitTimeout(wait) {
		p.log.Warn("nudge not acknowledged in time", "topic", topic, "timeout", wait)
		return fmt.Errorf("%w: no acknowledgement within %v", ErrUnavailable, wait)
	}
	if err := t.Error(); err != nil {
		p.log.Warn("nudge not published", "topic", topic, "err", err)
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	p.log.Info("nudge published", "topic", topic)
	return nil
}

// Connected reports whether the broker connection is up.
func (p *Publisher) Connected() bool { return p.c.IsConnectionOpen() }

// Close disconnects, waiting at most 250 ms for in-flight publishes.
func (p *Publisher) Close() {
	if p != nil {
		p.c.Disconnect(250)
	}
}
