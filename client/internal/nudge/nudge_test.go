package nudge

import (
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/foster-ota/foster/pkg/mqtttest"
	"github.com/foster-ota/foster/pkg/nudgemsg"
)

// publisher is a raw MQTT client: anyone who can reach the broker.
func publisher(t *testing.T, broker string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(fmt.Sprintf("test-pub-%d", time.Now().UnixNano())))
	if tok := c.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("connecting the test publisher: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func publish(t *testing.T, c mqtt.Client, topic string, payload []byte) {
	t.Helper()
	if tok := c.Publish(topic, 1, false, payload); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("publishing: %v", tok.Error())
	}
}

func woken(l *Listener, within time.Duration) bool {
	select {
	case <-l.C():
		return true
	case <-time.After(within):
		return false
	}
}

func TestListenerWakesOnModelAndDeviceNudgesOnly(t *testing.T) {
	broker := "tcp://" + mqtttest.Broker(t)
	// A model of its own: the shared broker may carry other tests' nudges.
	model := fmt.Sprintf("nudge-unit-%d", time.Now().UnixNano())
	l, err := Start(Config{Broker: broker, Model: model, Serial: "SN-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	pub := publisher(t, broker)
	mt, _ := nudgemsg.ModelTopic(model)
	dt, _ := nudgemsg.DeviceTopic(model, "SN-1")
	good, _ := nudgemsg.Message{Model: model, At: time.Now()}.Marshal()

	// Subscription happens in the background: publish until the first wake.
	deadline := time.Now().Add(60 * time.Second)
	for !woken(l, 200*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no wake from a model nudge within 60s")
		}
		publish(t, pub, mt, good)
	}
	for len(l.C()) > 0 { // drain retries that raced the first wake
		<-l.C()
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	for len(l.C()) > 0 {
		<-l.C()
	}

	publish(t, pub, dt, good)
	if !woken(l, 30*time.Second) {
		t.Fatal("no wake from a device nudge")
	}

	other, _ := nudgemsg.Message{Model: "someone-else", At: time.Now()}.Marshal()
	before := l.Ignored()
	for _, p := range [][]byte{[]byte("garbage"), []byte(strings.Repeat("{", nudgemsg.MaxSize+1)), other, []byte(`{"model":"` + model + `"}`)} {
		publish(t, pub, mt, p)
	}
	// Messages on one topic arrive in order: the marker comes last.
	publish(t, pub, mt, good)
	if !woken(l, 30*time.Second) {
		t.Fatal("no wake from the marker nudge")
	}
	if got := l.Ignored() - before; got != 4 {
		t.Fatalf("%d messages ignored, want 4 (malformed, oversized, another model, no time)", got)
	}
}

func TestStartDoesNotWaitForAnUnreachableBroker(t *testing.T) {
	start := time.Now()
	l, err := Start(Config{Broker: mqtttest.Unreachable(t), Model: "m", Serial: "s"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Start took %v with the broker down", d)
	}
	if woken(l, 200*time.Millisecond) {
		t.Fatal("woken with no broker")
	}
}

func TestStartRefusesBadConfig(t *testing.T) {
	for _, c := range []Config{
		{Broker: "http://127.0.0.1:1883", Model: "m", Serial: "s"},
		{Broker: "tcp://127.0.0.1", Model: "m", Serial: "s"},
		{Broker: "tcp://127.0.0.1:1883", Model: "m/#", Serial: "s"},
		{Broker: "tcp://127.0.0.1:1883", Model: "m", Serial: "+"},
		{Broker: "tcp://127.0.0.1:1883", CAFile: "ca.pem", Model: "m", Serial: "s"},
		{Broker: "ssl://127.0.0.1:8883", CertFile: "c.pem", Model: "m", Serial: "s"},
	} {
		if l, err := Start(c); err == nil {
			l.Close()
			t.Errorf("Start(%+v) accepted", c)
		}
	}
}
