package client_test

import (
	"context"
	"testing"
	"time"
)

// TestClosedAgentsDoNotHoldConnectionsOpen: a process that makes an agent
// per check for many devices (the fleet simulator) would pile idle mTLS
// connections up on the server, against its connection limit, until their
// idle timeout. After Close none of this agent's connections stay open,
// the target download's included.
func TestClosedAgentsDoNotHoldConnectionsOpen(t *testing.T) {
	srv := newEnv(t, false)
	d := newDevice(t, srv)
	publish(t, srv, model, "1.0.1", 1, []byte("new firmware"))
	a := d.agent()
	if rep, err := a.RunOnce(context.Background()); err != nil || rep.Installed == nil {
		t.Fatalf("a check with an update: %+v, %v", rep, err)
	}
	if n := srv.OpenConnections(); n < 1 {
		t.Fatalf("%d connections open after a check: the test cannot see the agent's keep-alive connection", n)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for srv.OpenConnections() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections still open 60 s after Close", srv.OpenConnections())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
