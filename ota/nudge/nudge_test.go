package nudge_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/foster-ota/foster/ota/nudge"
	"github.com/foster-ota/foster/pkg/mqtttest"
	"github.com/foster-ota/foster/pkg/nudgemsg"
)

func unique(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

func TestPublishesToModelAndDeviceTopics(t *testing.T) {
	broker := "tcp://" + mqtttest.Broker(t)
	model := unique("pub")
	got := make(chan mqtt.Message, 10)
	sub := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(unique("sub")))
	if tok := sub.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("subscriber: %v", tok.Error())
	}
	defer sub.Disconnect(100)
	if tok := sub.Subscribe("foster/v1/#", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m }); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribing: %v", tok.Error())
	}

	p, err := nudge.New(nudge.Config{Broker: broker, ClientID: unique("fosterd")})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	deadline := time.Now().Add(60 * time.Second)
	for !p.Connected() {
		if time.Now().After(deadline) {
			t.Fatal("publisher did not connect")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx := context.Background()
	if err := p.Nudge(ctx, model); err != nil {
		t.Fatal(err)
	}
	if err := p.NudgeDevice(ctx, model, "SN-9"); err != nil {
		t.Fatal(err)
	}
	mt, _ := nudgemsg.ModelTopic(model)
	dt, _ := nudgemsg.DeviceTopic(model, "SN-9")
	for _, want := range []string{mt, dt} {
		for {
			select {
			case m := <-got:
				if m.Topic() != want {
					continue // another test's traffic on a shared broker
				}
				msg, err := nudgemsg.Parse(m.Payload())
				if err != nil || msg.Model != model || m.Retained() {
					t.Fatalf("on %s: %+v %v (retained %v)", want, msg, err, m.Retained())
				}
			case <-time.After(30 * time.Second):
				t.Fatalf("nothing received on %s", want)
			}
			break
		}
	}
	if err := p.Nudge(ctx, "bad/#"); err == nil {
		t.Fatal("nudged a wildcard topic")
	}
}

// With the broker down a nudge is dropped at once: the caller (a rollout
// action, an admin request) is never held up.
func TestBrokerDownDropsNudgeWithoutBlocking(t *testing.T) {
	p, err := nudge.New(nudge.Config{Broker: mqtttest.Unreachable(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	start := time.Now()
	if err := p.Nudge(context.Background(), "m"); !errors.Is(err, nudge.ErrUnavailable) {
		t.Fatalf("got %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a dropped nudge took %v", d)
	}
	var nilp *nudge.Publisher // no broker configured
	if err := nilp.Nudge(context.Background(), "m"); err != nil {
		t.Fatalf("nil publisher: %v", err)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, c := range []nudge.Config{
		{},
		{Broker: "http://127.0.0.1:1883"},
		{Broker: "tcp://127.0.0.1:1883", CAFile: "ca.pem"},
		{Broker: "ssl://127.0.0.1:8883", CAFile: "/nonexistent/ca.pem"},
		{Broker: "ssl://127.0.0.1:8883", CertFile: "c.pem"},
	} {
		if p, err := nudge.New(c); err == nil {
			p.Close()
			t.Errorf("New(%+v) accepted", c)
		}
	}
}
