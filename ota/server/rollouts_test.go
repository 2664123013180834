package server_test

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/pkg/attest"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/rollout"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/foster-ota/foster/pkg/store"
)

// heldRelease publishes version of edge-gw with --hold.
func (f *fixture) heldRelease(version string) server.Release {
	f.t.Helper()
	r := f.do(f.admin, "POST", "/v1/releases?hold=true&model=edge-gw&version="+version+"&name=fw.bin", []byte("firmware "+version))
	if r.status != 201 {
		f.t.Fatalf("release --hold: %d %s", r.status, r.body)
	}
	var rel server.Release
	json.Unmarshal(r.body, &rel)
	return rel
}

// signedTerms are the rollout terms the repository signs for target.
func (f *fixture) signedTerms(target string) (rollout.Terms, bool) {
	f.t.Helper()
	t, _, ok := f.in.Repo.Lookup(target)
	if !ok {
		f.t.Fatalf("%s is not in the repository", target)
	}
	terms, ok, err := rollout.FromCustom(t.Custom)
	if err != nil {
		f.t.Fatal(err)
	}
	return terms, ok
}

func (f *fixture) rollout(id string) server.RolloutView {
	f.t.Helper()
	var v server.RolloutView
	if err := json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/rollouts/"+id, nil, 200), &v); err != nil {
		f.t.Fatal(err)
	}
	return v
}

func (f *fixture) auditActions() []string {
	f.t.Helper()
	var ev []store.AuditEvent
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/audit", nil, 200), &ev)
	var out []string
	for _, e := range ev {
		out = append(out, e.Action+" "+e.Actor)
	}
	return out
}

func TestHeldReleaseIsSignedButOfferedToNone(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	open := f.release("1.0.0", []byte("offered to all"))
	if terms, ok := f.signedTerms(open.TargetPath); ok {
		t.Fatalf("a release without --hold carries terms %+v: existing scripts would stop reaching devices", terms)
	}
	held := f.heldRelease("1.0.1")
	terms, ok := f.signedTerms(held.TargetPath)
	if !ok || terms.Share != 0 || terms.State != rollout.StateHeld || terms.Validate() != nil {
		t.Fatalf("held release signed with terms %+v (present %v), want share 0, state held", terms, ok)
	}
	if held.Rollout == nil || held.Rollout.Share != 0 {
		t.Fatalf("the API does not show the held terms: %+v", held.Rollout)
	}
	if r := f.do(f.admin, "POST", "/v1/releases?hold=maybe&model=edge-gw&version=1.0.2", []byte("x")); r.status != 400 {
		t.Fatalf("hold=maybe: %d %s, want 400", r.status, r.body)
	}
}

func TestRolloutAPILifecycle(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	rel := f.heldRelease("1.0.0")

	bad := []struct {
		name string
		body string
		want int
	}{
		{"waves not increasing", `{"model":"edge-gw","version":"1.0.0","waves":[10,5,100]}`, 400},
		{"last wave not 100", `{"model":"edge-gw","version":"1.0.0","waves":[10,50]}`, 400},
		{"empty waves", `{"model":"edge-gw","version":"1.0.0","waves":[]}`, 400},
		{"bad interval", `{"model":"edge-gw","version":"1.0.0","wave_interval":"soon"}`, 400},
		{"rate above 1", `{"model":"edge-gw","version":"1.0.0","max_failure_rate":1.5}`, 400},
		{"negative sample", `{"model":"edge-gw","version":"1.0.0","min_sample":-1}`, 400},
		{"bad group", `{"model":"edge-gw","version":"1.0.0","groups":["../x"]}`, 400},
		{"unknown field", `{"model":"edge-gw","version":"1.0.0","share":10000}`, 400},
		{"not a version", `{"model":"edge-gw","version":"latest"}`, 400},
		{"unpublished release", `{"model":"edge-gw","version":"9.9.9"}`, 404},
		{"huge body", `{"model":"edge-gw","version":"1.0.0","groups":["` + strings.Repeat("a", 20<<10) + `"]}`, 413},
	}
	for _, b := range bad {
		if r := f.do(f.admin, "POST", "/v1/rollouts", []byte(b.body)); r.status != b.want {
			t.Fatalf("%s: %d %s, want %d", b.name, r.status, r.body, b.want)
		}
	}
	if terms, _ := f.signedTerms(rel.TargetPath); terms.Share != 0 || terms.ID != "" {
		t.Fatalf("refused requests changed the signed terms: %+v", terms)
	}

	var v server.RolloutView
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts", map[string]any{"model": "edge-gw", "version": "1.0.0", "waves": []int{50, 100}, "wave_interval": "1h"}, 201), &v)
	if v.State != store.RolloutRunning || v.Percent != 50 || v.Share != 5000 || v.WaveInterval != "1h0m0s" {
		t.Fatalf("created %+v", v)
	}
	if terms, _ := f.signedTerms(rel.TargetPath); terms.ID != v.ID || terms.Share != 5000 || terms.Seed != v.Seed {
		t.Fatalf("signed terms %+v, want rollout %s at share 5000", terms, v.ID)
	}
	// One active rollout per model and groups.
	if r := f.do(f.admin, "POST", "/v1/rollouts", []byte(`{"model":"edge-gw","version":"1.0.0"}`)); r.status != 409 || r.code() != "rollout_active" {
		t.Fatalf("second rollout: %d %s, want 409 rollout_active", r.status, r.body)
	}
	if r := f.do(f.admin, "GET", "/v1/rollouts/ro-nothere", nil); r.status != 404 {
		t.Fatalf("unknown rollout: %d, want 404", r.status)
	}
	if r := f.do(f.admin, "POST", "/v1/rollouts/"+v.ID+"/resume", nil); r.status != 409 || r.code() != "rollout_state" {
		t.Fatalf("resume a running rollout: %d %s, want 409", r.status, r.body)
	}
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts/"+v.ID+"/pause", nil, 200), &v)
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts/"+v.ID+"/promote", nil, 200), &v)
	if v.State != store.RolloutPaused || v.Share != 10000 {
		t.Fatalf("after promote: %s share %d", v.State, v.Share)
	}
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts/"+v.ID+"/promote", nil, 200), &v)
	if v.State != store.RolloutCompleted {
		t.Fatalf("promote from the last wave: %s, want completed", v.State)
	}
	if terms, _ := f.signedTerms(rel.TargetPath); terms.Share != rollout.Scale || terms.State != store.RolloutCompleted {
		t.Fatalf("completed rollout signed %+v", terms)
	}
	var list []server.RolloutView
	json.Unmarshal(f.mustJSON(f.admin, "GET", "/v1/rollouts?model=edge-gw", nil, 200), &list)
	if len(list) != 1 || list[0].ID != v.ID {
		t.Fatalf("list: %+v", list)
	}
	admin := "urn:foster:admin:" // the instance's first admin
	for _, want := range []string{"rollout.create", "rollout.pause", "rollout.promote"} {
		if !slices.ContainsFunc(f.auditActions(), func(a string) bool { return strings.HasPrefix(a, want+" "+admin) }) {
			t.Fatalf("audit trail lacks %s by an admin: %v", want, f.auditActions())
		}
	}
}

func TestNewerReleaseSupersedesOnlyExplicitly(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	old := f.heldRelease("1.0.0")
	f.heldRelease("1.0.1")
	var first, second server.RolloutView
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts", map[string]any{"model": "edge-gw", "version": "1.0.0"}, 201), &first)
	if r := f.do(f.admin, "POST", "/v1/rollouts", []byte(`{"model":"edge-gw","version":"1.0.1"}`)); r.status != 409 || !strings.Contains(string(r.body), first.ID) {
		t.Fatalf("newer release without supersede: %d %s, want 409 naming %s", r.status, r.body, first.ID)
	}
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts", map[string]any{"model": "edge-gw", "version": "1.0.1", "supersede": true}, 201), &second)
	if got := f.rollout(first.ID); got.State != store.RolloutAborted {
		t.Fatalf("superseded rollout is %s, want aborted", got.State)
	}
	if terms, _ := f.signedTerms(old.TargetPath); terms.Share != 0 {
		t.Fatalf("superseded release still offered: %+v", terms)
	}
	// An older release never supersedes a newer one's rollout.
	if r := f.do(f.admin, "POST", "/v1/rollouts", []byte(`{"model":"edge-gw","version":"1.0.0","supersede":true}`)); r.status != 409 {
		t.Fatalf("older release superseding a newer: %d %s, want 409", r.status, r.body)
	}
	if got := f.rollout(second.ID); got.State != store.RolloutRunning {
		t.Fatalf("newer rollout is %s after a refused supersede", got.State)
	}
}

func TestAuditorCannotChangeRollouts(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	f.enrolled("SN-1")
	rel := f.heldRelease("1.0.0")
	var v server.RolloutView
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts", map[string]any{"model": "edge-gw", "version": "1.0.0", "waves": []int{10, 100}}, 201), &v)
	f.mustJSON(f.admin, "POST", "/v1/groups", map[string]any{"name": "canary", "tag": "canary"}, 201)
	auditor := f.principalClient(identity.Principal{Role: identity.RoleAuditor, Name: "alice"})
	before := len(f.auditActions())

	for _, path := range []string{"/v1/rollouts", "/v1/rollouts/" + v.ID, "/v1/groups", "/v1/groups/canary", "/v1/devices/SN-1/tags"} {
		if r := f.do(auditor, "GET", path, nil); r.status != 200 {
			t.Fatalf("auditor reads %s: %d %s", path, r.status, r.body)
		}
	}
	changes := []struct{ method, path, body string }{
		{"POST", "/v1/rollouts", `{"model":"edge-gw","version":"1.0.0","supersede":true}`},
		{"POST", "/v1/rollouts/" + v.ID + "/promote", ""},
		{"POST", "/v1/rollouts/" + v.ID + "/pause", ""},
		{"POST", "/v1/rollouts/" + v.ID + "/abort", ""},
		{"POST", "/v1/devices/SN-1/tags", `{"tags":["canary"]}`},
		{"POST", "/v1/devices/SN-1/untag", `{"tags":["canary"]}`},
		{"POST", "/v1/groups", `{"name":"g2","tag":"x"}`},
		{"DELETE", "/v1/groups/canary", ""},
	}
	for _, c := range changes {
		r := f.do(auditor, c.method, c.path, []byte(c.body))
		if r.status != http.StatusForbidden || !strings.Contains(string(r.body), "auditor may not call "+c.method) {
			t.Fatalf("auditor %s %s: %d %s, want 403 saying auditors may not", c.method, c.path, r.status, r.body)
		}
	}
	if got := f.rollout(v.ID); got.State != store.RolloutRunning || got.Wave != 0 || got.Revision != v.Revision {
		t.Fatalf("an auditor changed the rollout: %+v", got)
	}
	if terms, _ := f.signedTerms(rel.TargetPath); terms.Share != 1000 {
		t.Fatalf("an auditor changed the signed terms: %+v", terms)
	}
	if after := len(f.auditActions()); after != before {
		t.Fatalf("refused auditor calls wrote %d audit events", after-before)
	}
}

func outcomeEnvelope(t testing.TB, key *ecdsa.PrivateKey, device string, rel server.Release, seq int64, outcome string) []byte {
	s, err := signing.FromPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	env, err := attest.Sign(s, attest.Install{
		Device: device, New: attest.Target{Name: rel.TargetPath, SHA256: rel.SHA256, Length: rel.Length, Version: rel.Version, ReleaseCounter: rel.Counter},
		Outcome: outcome, Sequence: seq, Time: time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	return env
}

// TestFailingAttestationsHaltTheRolloutWithoutWaitingForATick: the
// Controller ticks once an hour here, so only the attestation path
// (Notify) can halt the rollout within the test's deadline.
func TestFailingAttestationsHaltTheRolloutWithoutWaitingForATick(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.in.Rollouts.Run(ctx, time.Hour); close(done) }()
	t.Cleanup(func() { cancel(); <-done })

	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	rel := f.heldRelease("1.0.0")
	var v server.RolloutView
	json.Unmarshal(f.mustJSON(f.admin, "POST", "/v1/rollouts", map[string]any{"model": "edge-gw", "version": "1.0.0",
		"waves": []int{100}, "min_sample": 2, "max_failure_rate": 0.4}, 201), &v)
	var indices []int64
	for i := range 2 {
		serial := fmt.Sprintf("SN-%d", i)
		dev, key := f.enrolled(serial)
		var out struct {
			LeafIndex int64 `json:"leaf_index"`
		}
		env := outcomeEnvelope(t, key, identity.Device("edge-gw", serial).URI(), rel, 1, attest.OutcomeRolledBack)
		r := f.do(dev, "POST", "/v1/attestations", env)
		if r.status != 201 {
			t.Fatalf("attestation: %d %s", r.status, r.body)
		}
		json.Unmarshal(r.body, &out)
		indices = append(indices, out.LeafIndex)
	}
	deadline := time.Now().Add(30 * time.Second)
	for f.rollout(v.ID).State != store.RolloutHalted {
		if time.Now().After(deadline) {
			t.Fatalf("rollout still %s 30 s after the failing attestations", f.rollout(v.ID).State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	got := f.rollout(v.ID)
	slices.Sort(got.HaltIndices)
	if !slices.Equal(got.HaltIndices, indices) || got.HaltReason == "" || got.UpdatedBy != "fosterd" {
		t.Fatalf("halt record: indices %v (want %v), reason %q, by %q", got.HaltIndices, indices, got.HaltReason, got.UpdatedBy)
	}
	if terms, _ := f.signedTerms(rel.TargetPath); terms.Share != 0 || terms.State != store.RolloutHalted {
		t.Fatalf("halted rollout signed %+v, want share 0", terms)
	}
	// The audit record is written right after the halt commits: wait for it.
	for !slices.ContainsFunc(f.auditActions(), func(a string) bool { return a == "rollout.halt fosterd" }) {
		if time.Now().After(deadline) {
			t.Fatalf("halt not in the audit trail: %v", f.auditActions())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestTagsAndGroupsSignMemberships(t *testing.T) {
	f := newFixture(t)
	f.mustJSON(f.admin, "POST", "/v1/models", map[string]any{"name": "edge-gw"}, 201)
	f.enrolled("SN-1")
	f.mustJSON(f.admin, "POST", "/v1/groups", map[string]any{"name": "canary", "tag": "lab"}, 201)
	f.mustJSON(f.admin, "POST", "/v1/groups", map[string]any{"name": "line-7", "serials": []string{"SN-2", "SN-3"}}, 201)
	f.mustJSON(f.admin, "POST", "/v1/devices/SN-1/tags", map[string]any{"tags": []string{"lab"}}, 200)
	if g, ok := f.in.Repo.Membership("edge-gw", "SN-1"); !ok || !slices.Equal(g, []string{"canary"}) {
		t.Fatalf("tagged device's signed groups: %v %v", g, ok)
	}
	// Enrolled after its static group was made: signed at enrollment.
	f.enrolled("SN-2")
	if g, ok := f.in.Repo.Membership("edge-gw", "SN-2"); !ok || !slices.Equal(g, []string{"line-7"}) {
		t.Fatalf("device enrolled into a static group: signed groups %v %v", g, ok)
	}
	// A device in no group gets no record (the default group).
	f.enrolled("SN-9")
	if g, ok := f.in.Repo.Membership("edge-gw", "SN-9"); ok {
		t.Fatalf("device in no group has a signed record %v", g)
	}
	f.mustJSON(f.admin, "POST", "/v1/devices/SN-1/untag", map[string]any{"tags": []string{"lab"}}, 200)
	if g, _ := f.in.Repo.Membership("edge-gw", "SN-1"); len(g) != 0 {
		t.Fatalf("untagged device still signed in %v", g)
	}
	for _, b := range []struct{ path, body string }{
		{"/v1/groups", `{"name":"both","tag":"t","serials":["a"]}`},
		{"/v1/groups", `{"name":"neither"}`},
		{"/v1/groups", `{"name":"default","tag":"t"}`},
		{"/v1/devices/SN-1/tags", `{"tags":[]}`},
		{"/v1/devices/SN-1/tags", `{"tags":["a b"]}`},
	} {
		if r := f.do(f.admin, "POST", b.path, []byte(b.body)); r.status != 400 {
			t.Fatalf("POST %s %s: %d %s, want 400", b.path, b.body, r.status, r.body)
		}
	}
	if r := f.do(f.admin, "POST", "/v1/groups", []byte(`{"name":"canary","tag":"x"}`)); r.status != 409 {
		t.Fatalf("duplicate group: %d, want 409", r.status)
	}
	if r := f.do(f.admin, "POST", "/v1/devices/SN-404/tags", []byte(`{"tags":["x"]}`)); r.status != 404 {
		t.Fatalf("tag unknown device: %d, want 404", r.status)
	}
	f.mustJSON(f.admin, "DELETE", "/v1/groups/line-7", nil, 200)
	if g, _ := f.in.Repo.Membership("edge-gw", "SN-2"); len(g) != 0 {
		t.Fatalf("group deleted, device still signed in %v", g)
	}
	if r := f.do(f.admin, "DELETE", "/v1/groups/line-7", nil); r.status != 404 {
		t.Fatalf("delete twice: %d, want 404", r.status)
	}
}
