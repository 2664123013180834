package outbox

import (
	"fmt"
	"log/slog"
	"os"
	"testing"

	"github.com/foster-ota/foster/client/internal/statedir"
)

// A device offline for years keeps a bounded outbox and sent/ directory.
func TestOutboxIsBounded(t *testing.T) {
	l := statedir.Layout{Dir: t.TempDir()}
	if err := l.Ensure(); err != nil {
		t.Fatal(err)
	}
	o := &Outbox{Layout: l, Log: slog.New(slog.DiscardHandler)}
	for seq := int64(1); seq <= MaxQueued+10; seq++ {
		if err := o.Put(seq, []byte(fmt.Sprintf(`{"seq":%d}`, seq))); err != nil {
			t.Fatal(err)
		}
	}
	q, _ := o.Queued()
	if len(q) != MaxQueued || q[0] != 11 || q[len(q)-1] != MaxQueued+10 {
		t.Fatalf("queued %d, from %d", len(q), q[0])
	}
	if r, _ := list(l.Rejected()); len(r) != 10 || r[0] != 1 {
		t.Fatalf("set aside %v", r)
	}
	for seq := int64(1); seq <= KeepSent+5; seq++ {
		os.WriteFile(l.Sent()+"/"+name(seq), []byte("{}"), 0o600)
	}
	if err := o.PruneSent(); err != nil {
		t.Fatal(err)
	}
	if s, _ := list(l.Sent()); len(s) != KeepSent || s[0] != 6 {
		t.Fatalf("sent %v", s)
	}
}
