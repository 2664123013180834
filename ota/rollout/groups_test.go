package rollout_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/foster-ota/foster/ota/rollout"
	termspkg "github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/store"
)

func TestTagsAndGroupsSignMemberships(t *testing.T) {
	e := newEnv(t, 4)
	a := "urn:foster:admin:alice"
	member := func(serial string) []string {
		e.pub.mu.Lock()
		defer e.pub.mu.Unlock()
		return e.pub.members[model+"/"+serial]
	}
	if err := e.ctl.TagDevice(e.ctx, a, e.devices[0], []string{"eu"}); err != nil {
		t.Fatal(err)
	}
	if member("SN-0000") != nil {
		t.Fatal("a tag no group uses signed a membership")
	}
	if _, err := e.ctl.CreateGroup(e.ctx, a, store.Group{Name: "europe", Kind: store.GroupTag, Tag: "eu"}); err != nil {
		t.Fatal(err)
	}
	if _, err := e.ctl.CreateGroup(e.ctx, a, store.Group{Name: "pilot", Kind: store.GroupStatic, Serials: []string{"SN-0001", "SN-0000"}}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(member("SN-0000"), []string{"europe", "pilot"}) || !slices.Equal(member("SN-0001"), []string{"pilot"}) || member("SN-0002") != nil {
		t.Fatalf("memberships %v", e.pub.members)
	}
	if err := e.ctl.TagDevice(e.ctx, a, e.devices[2], []string{"eu"}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(member("SN-0002"), []string{"europe"}) {
		t.Fatalf("tagging into a group: %v", member("SN-0002"))
	}
	if err := e.ctl.UntagDevice(e.ctx, a, e.devices[2], []string{"eu"}); err != nil {
		t.Fatal(err)
	}
	if member("SN-0002") != nil {
		t.Fatal("untagged device keeps its signed membership")
	}
	if _, err := e.ctl.CreateGroup(e.ctx, a, store.Group{Name: termspkg.DefaultGroup, Kind: store.GroupTag, Tag: "x"}); !errors.Is(err, rollout.ErrInvalid) {
		t.Fatalf("group named default: %v", err)
	}
	// A rollout to pilot offers the release to pilot devices only, by the
	// signed memberships.
	s := e.create(rollout.CreateRequest{Groups: []string{"pilot"}, Waves: []int{100}})
	if s.Health.Eligible != 2 {
		t.Fatalf("eligible %d, want the 2 pilot devices", s.Health.Eligible)
	}
	terms := e.pub.current(e.rel.TargetPath)
	for i, id := range e.devices {
		serial := []string{"SN-0000", "SN-0001", "SN-0002", "SN-0003"}[i]
		if got, want := terms.Decide(id, member(serial)).Eligible, i < 2; got != want {
			t.Errorf("%s eligible %v, want %v", id, got, want)
		}
	}
	if err := e.ctl.DeleteGroup(e.ctx, a, "pilot"); !errors.Is(err, rollout.ErrTransition) {
		t.Fatalf("deleting a group an active rollout uses: %v", err)
	}
	if err := e.ctl.DeleteGroup(e.ctx, a, "europe"); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(member("SN-0000"), []string{"pilot"}) {
		t.Fatalf("after deleting europe: %v", member("SN-0000"))
	}
	if err := e.ctl.SyncMemberships(e.ctx, model); err != nil {
		t.Fatal(err)
	}
	if a := e.auditActions(); a["group.create"] != 2 || a["device.tag"] != 2 || a["group.delete"] != 1 {
		t.Fatalf("audit %v", a)
	}
}
