package mqtttest

import (
	"testing"
	"time"
)

// The fallback used where no broker runs on 127.0.0.1:1883: a private
// Mosquitto on a free port.
func TestStartPrivateBroker(t *testing.T) {
	addr := Start(t)
	if addr == SharedAddr || !answers(addr, 5*time.Second) {
		t.Fatalf("private broker at %s does not answer", addr)
	}
}
