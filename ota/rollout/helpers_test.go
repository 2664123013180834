package rollout_test

import (
	"context"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/ota/tufrepo"
	termspkg "github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/store/storetest"
)

// fakePublisher stands in for the TUF repository: it keeps the terms and
// memberships last signed, and every terms ever signed.
type fakePublisher struct {
	mu      sync.Mutex
	terms   map[string]*termspkg.Terms
	history []termspkg.Terms
	members map[string][]string // "<model>/<serial>" -> groups
	fail    error
	signed  chan struct{}
}

func newFakePublisher() *fakePublisher {
	return &fakePublisher{terms: map[string]*termspkg.Terms{}, members: map[string][]string{}, signed: make(chan struct{}, 100)}
}

func (p *fakePublisher) SetTerms(_ context.Context, target string, t *termspkg.Terms) (tufrepo.Target, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return tufrepo.Target{}, p.fail
	}
	if err := t.Validate(); err != nil {
		return tufrepo.Target{}, err
	}
	c := *t
	p.terms[target] = &c
	p.history = append(p.history, c)
	select {
	case p.signed <- struct{}{}:
	default:
	}
	return tufrepo.Target{Path: target}, nil
}

func (p *fakePublisher) SetMemberships(_ context.Context, model string, m map[string][]string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	for serial, gs := range m {
		if len(gs) == 0 {
			delete(p.members, model+"/"+serial)
		} else {
			p.members[model+"/"+serial] = gs
		}
	}
	return nil
}

func (p *fakePublisher) current(target string) termspkg.Terms {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t := p.terms[target]; t != nil {
		return *t
	}
	return termspkg.Terms{}
}

func (p *fakePublisher) signings() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.history)
}

// clock is a settable clock shared by the store and the controller.
type clock struct{ ns atomic.Int64 }

func newClock() *clock {
	c := &clock{}
	c.set(time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC))
	return c
}
func (c *clock) now() time.Time          { return time.Unix(0, c.ns.Load()).UTC() }
func (c *clock) set(t time.Time)         { c.ns.Store(t.UnixNano()) }
func (c *clock) advance(d time.Duration) { c.ns.Add(int64(d)) }

type env struct {
	t       *testing.T
	ctx     context.Context
	db      *store.DB
	pub     *fakePublisher
	clock   *clock
	ctl     *rollout.Controller
	devices []string // device URNs of model edge-gw
	rel     store.Release
	seq     map[string]int64
	leaf    int64
}

const model = "edge-gw"

// newEnv: a real SQLite store with n enrolled devices and release 1.0.0 of
// edge-gw, a fake publisher, and a controller on a test clock.
func newEnv(t *testing.T, n int) *env {
	return newEnvOn(t, storetest.SQLite(t), n)
}

func newEnvOn(t *testing.T, db *store.DB, n int) *env {
	t.Helper()
	e := &env{t: t, ctx: context.Background(), db: db, pub: newFakePublisher(), clock: newClock(), seq: map[string]int64{}}
	db.SetClock(e.clock.now)
	if _, err := db.CreateModel(e.ctx, store.Model{Name: model}); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		serial := fmt.Sprintf("SN-%04d", i)
		if err := db.CreateToken(e.ctx, store.Token{Hash: "h-" + serial, Serial: serial, Model: model, ExpiresAt: e.clock.now().Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		dv, err := db.EnrollDevice(e.ctx, store.EnrollRequest{Serial: serial, Model: model, KeySHA256: "k-" + serial, TokenHash: "h-" + serial}, func() (store.Issued, error) {
			return store.Issued{Serial: fmt.Sprintf("%x", 0x1000+i), NotBefore: e.clock.now(), NotAfter: e.clock.now().Add(90 * 24 * time.Hour), KeySHA256: "k-" + serial, ChainPEM: "pem"}, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		e.devices = append(e.devices, dv.ID)
	}
	e.rel = e.release("1.0.0")
	e.ctl = e.controller(db)
	return e
}

func (e *env) controller(db *store.DB) *rollout.Controller {
	c, err := rollout.New(rollout.Config{Store: db, Publisher: e.pub, Now: e.clock.now})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) release(version string) store.Release {
	e.t.Helper()
	r, err := e.db.AddRelease(e.ctx, store.Release{Model: model, Version: version, TargetPath: model + "/" + version + "/fw.bin", SHA256: "aa" + version, Length: 1}, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) create(req rollout.CreateRequest) rollout.Status {
	e.t.Helper()
	if req.Model == "" {
		req.Model, req.Version = model, e.rel.Version
	}
	s, err := e.ctl.Create(e.ctx, "urn:foster:admin:alice", req)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// offered splits the devices by the bucket formula under share.
func (e *env) offered(s rollout.Status, share int) (in, out []string) {
	seed, _ := hex.DecodeString(s.Seed)
	for _, id := range e.devices {
		if termspkg.Bucket(seed, id) < share {
			in = append(in, id)
		} else {
			out = append(out, id)
		}
	}
	return in, out
}

// attest records an install attestation of target by device id, logged at
// the next transparency-log index; it returns that index.
func (e *env) attest(id, target, outcome string) int64 {
	e.t.Helper()
	e.seq[id]++
	tx, err := e.db.SQL().BeginTx(e.ctx, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	leaf := e.leaf
	e.leaf++
	if _, err := e.db.AddAttestationTx(e.ctx, tx, store.Attestation{DeviceID: id, Sequence: e.seq[id], Outcome: outcome, TargetPath: target, SHA256: "aa", Version: "v", Counter: 1, Envelope: []byte("{}"), LeafIndex: leaf}); err != nil {
		tx.Rollback()
		e.t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		e.t.Fatal(err)
	}
	return leaf
}

func (e *env) tick() {
	e.t.Helper()
	if err := e.ctl.Tick(e.ctx); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) get(id string) rollout.Status {
	e.t.Helper()
	s, err := e.ctl.Get(e.ctx, id)
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) auditActions() map[string]int {
	e.t.Helper()
	ev, err := e.db.ListAudit(e.ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	n := map[string]int{}
	for _, a := range ev {
		n[a.Action]++
	}
	return n
}
