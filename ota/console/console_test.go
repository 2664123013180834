package console

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/rollout"
	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
)

// fakeFosterd answers the read API with a small fleet and records the
// actions it is asked for; as an auditor's server it refuses them, as
// fosterd does.
type fakeFosterd struct {
	mu      sync.Mutex
	auditor bool
	posts   []string
	state   string
	root    string // the log checkpoint's root hash (base64)
}

func (f *fakeFosterd) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now().UTC()
	reply := func(v any) { w.Header().Set("Content-Type", "application/json"); json.NewEncoder(w).Encode(v) }
	ro := func() server.RolloutView {
		return server.RolloutView{Status: rollout.Status{Rollout: store.Rollout{ID: "r-1", Model: "edge-gw", Version: "2.0.0", Waves: []int{10, 50, 100},
			State: f.state, MaxFailureRate: 0.05, MinSample: 20, CreatedAt: now}, Health: rollout.Health{Eligible: 40, Offered: 4, Succeeded: 3, Failed: 1, FailureRate: 0.25}}, Percent: 10}
	}
	switch {
	case r.Method == http.MethodPost:
		f.posts = append(f.posts, r.URL.Path)
		if f.auditor {
			w.WriteHeader(http.StatusForbidden)
			reply(map[string]string{"error": "auditor may not call POST " + r.URL.Path, "code": "forbidden"})
			return
		}
		if strings.HasSuffix(r.URL.Path, "/pause") {
			f.state = store.RolloutPaused
		}
		reply(ro())
	case r.URL.Path == "/v1/reports/fleet/summary":
		days, _ := strconv.Atoi(r.URL.Query().Get("stale_days"))
		reply(store.FleetSummary{GeneratedAt: now, StaleDays: days, Active: 3, OnLatest: 2, Behind: 1, Revoked: 1, Cloned: 1,
			Models: []store.ModelSummary{{Model: "edge-gw", Active: 3, OnLatest: 2, LatestVersion: "2.0.0", LatestCounter: 2,
				Versions: []store.VersionCount{{Version: "2.0.0", Counter: 2, Devices: 2, Latest: true}, {Version: "1.0.0", Counter: 1, Devices: 1}}}},
			Lists: map[string]store.FleetPage{
				store.ListBehind:  {Devices: []store.DeviceStatus{{ID: "urn:foster:device:edge-gw:SN-OLD", Model: "edge-gw", Serial: "SN-OLD", InstalledVersion: "1.0.0", LatestVersion: "2.0.0", ReleasesBehind: 1}}},
				store.ListSilent:  {Devices: []store.DeviceStatus{}},
				store.ListRevoked: {Devices: []store.DeviceStatus{{ID: "urn:foster:device:edge-gw:SN-GONE", Model: "edge-gw", Serial: "SN-GONE", Status: "revoked", RevokeReason: "keyCompromise", RevokedAt: now}}},
				store.ListCloned:  {Devices: []store.DeviceStatus{{ID: "urn:foster:device:edge-gw:SN-TWIN", Model: "edge-gw", Serial: "SN-TWIN", Status: "active", CloneAttempts: 2, LastCloneAttempt: now}}, Next: "cursor-2"},
			},
			Coverage: []store.CoveragePoint{{Day: now.Add(-24 * time.Hour), Patched: 1}, {Day: now, Patched: 2}}})
	case r.URL.Path == "/v1/reports/fleet/devices":
		q := r.URL.Query()
		if q.Get("list") != store.ListCloned || q.Get("after") != "cursor-2" {
			w.WriteHeader(http.StatusBadRequest)
			reply(map[string]string{"error": "after: malformed page cursor", "code": "bad_request"})
			return
		}
		reply(store.FleetPage{Devices: []store.DeviceStatus{{ID: "urn:foster:device:edge-gw:SN-TRIPLET", Model: "edge-gw", Serial: "SN-TRIPLET", Status: "revoked", CloneAttempts: 1, LastCloneAttempt: now}}})
	case r.URL.Path == "/v1/rollouts":
		reply([]server.RolloutView{ro()})
	case r.URL.Path == "/v1/rollouts/r-1":
		reply(ro())
	case r.URL.Path == "/v1/devices":
		reply([]store.Device{{ID: "urn:foster:device:edge-gw:SN-1", Serial: "SN-1", Model: "edge-gw", Status: "active"}})
	case r.URL.Path == "/v1/devices/SN-1" || r.URL.Path == "/v1/devices/urn:foster:device:edge-gw:SN-1":
		reply(deviceDetail{Device: store.Device{ID: "urn:foster:device:edge-gw:SN-1", Serial: "SN-1", Model: "edge-gw", Status: "active", InstalledVersion: "2.0.0", CertSerial: "abc", CertNotAfter: now.Add(90 * 24 * time.Hour)},
			Certificates: []store.Certificate{
				{Serial: "c1", IssuedAt: now.Add(-200 * 24 * time.Hour), NotAfter: now.Add(-110 * 24 * time.Hour), IssuedVia: "station:line-1", RevokedAt: now.Add(-140 * 24 * time.Hour), RevokeReason: "superseded by renewal"},
				{Serial: "c2", IssuedAt: now.Add(-140 * 24 * time.Hour), NotAfter: now.Add(-50 * 24 * time.Hour), IssuedVia: "renew", RevokedAt: now.Add(-20 * 24 * time.Hour), RevokeReason: "superseded by re-provisioning"},
				{Serial: "c3", IssuedAt: now.Add(-20 * 24 * time.Hour), NotAfter: now.Add(70 * 24 * time.Hour), IssuedVia: "reprovision:token"},
				{Serial: "abc", IssuedAt: now, NotAfter: now.Add(90 * 24 * time.Hour), IssuedVia: "renew-expired"}},
			CertificatesTotal: 4, RefusalsTotal: 1,
			Refusals: []store.Refusal{{Reason: "clone: another key for this serial", Via: "token", At: now}}})
	case r.URL.Path == "/v1/devices/urn:foster:device:edge-gw:SN-1/tags":
		reply([]string{"lab"})
	case r.URL.Path == "/v1/attestations":
		reply([]store.Attestation{{ID: 7, DeviceID: r.URL.Query().Get("device"), Sequence: 3, Outcome: "committed", Version: "2.0.0", LeafIndex: 41, ReceivedAt: now}})
	case r.URL.Path == "/v1/attestations/urn:foster:device:edge-gw:SN-1/3/bundle":
		io.WriteString(w, `{"bundle":true}`)
	case r.URL.Path == "/v1/releases":
		reply([]server.Release{{Release: store.Release{ID: 1, Model: "edge-gw", Version: "2.0.0", Counter: 2}, Status: "published", HardwareIDs: []string{"hw-a"}}})
	case r.URL.Path == "/v1/tuf":
		var st tufrepo.Status
		st.Versions.Root, st.Expires.Root = 1, now.Add(10*24*time.Hour) // offline, soon: warn
		st.Versions.Targets, st.Expires.Targets = 3, now.Add(300*24*time.Hour)
		st.Versions.Snapshot, st.Expires.Snapshot = 9, now.Add(2*24*time.Hour) // online: no warning
		st.Versions.Timestamp, st.Expires.Timestamp = 99, now.Add(24*time.Hour)
		st.Held = []string{"snapshot", "timestamp"}
		reply(st)
	case r.URL.Path == "/v1/stations":
		reply([]store.Station{{Name: "line-1", Status: "active", Quota: 100, Used: 7, Models: []string{"edge-gw"}}})
	case r.URL.Path == "/v1/log/checkpoint":
		root := f.root
		if root == "" {
			root = strings.Repeat("A", 43) + "="
		}
		io.WriteString(w, "foster.example/log\n5\n"+root+"\n\n— foster.example/log sig\n")
	default:
		w.WriteHeader(http.StatusNotFound)
		reply(map[string]string{"error": "not found", "code": "not_found"})
	}
}

func (f *fakeFosterd) actions() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.posts...)
}

type testConsole struct {
	URL  string
	host string
	api  *fakeFosterd
	c    *http.Client
}

func startConsole(t *testing.T, role identity.Role) *testConsole {
	t.Helper()
	api := &fakeFosterd{auditor: role == identity.RoleAuditor, state: store.RolloutRunning}
	back := httptest.NewServer(api)
	t.Cleanup(back.Close)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(back.URL)
	con, err := New(Config{Server: u, Client: back.Client(), Role: role, Who: "urn:foster:" + string(role) + ":alice", Addr: ln.Addr().String()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(con.Handler())
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	jar, _ := cookiejar.New(nil)
	cl := &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	return &testConsole{URL: srv.URL, host: ln.Addr().String(), api: api, c: cl}
}

func (tc *testConsole) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := tc.c.Get(tc.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (tc *testConsole) post(t *testing.T, path string, form url.Values, hdr map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, tc.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	if hdr["Host"] != "" {
		req.Host = hdr["Host"]
	}
	resp, err := tc.c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([0-9a-f]{64})"`)

// csrf loads a confirmation page and returns its form token.
func (tc *testConsole) csrf(t *testing.T) string {
	t.Helper()
	code, body := tc.get(t, "/rollouts/r-1/confirm/pause")
	m := csrfField.FindStringSubmatch(body)
	if code != 200 || m == nil {
		t.Fatalf("confirmation page: %d, no CSRF token:\n%s", code, body)
	}
	return m[1]
}

// TestEveryPageRendersWhatTheAPISays renders every page against the fake
// fosterd and checks the numbers it serves are on the page.
func TestEveryPageRendersWhatTheAPISays(t *testing.T) {
	tc := startConsole(t, identity.RoleAdmin)
	tests := []struct {
		path string
		want []string
	}{
		{"/", []string{`id="active-devices">3<`, `id="on-latest">66.7%<`, `id="revoked-count">1<`, `id="cloned-count">1<`, "SN-OLD", "SN-GONE", "keyCompromise", "SN-TWIN",
			`href="/fleet/cloned?after=cursor-2"`, "<svg class=\"plot\"", "2.0.0 <span class=\"tag ok\">latest</span>"}},
		{"/fleet/cloned?after=cursor-2", []string{"SN-TRIPLET", `href="/fleet/cloned"`}},
		{"/?stale_days=7", []string{"silent ≥ 7 days"}},
		{"/rollouts", []string{"r-1", "edge-gw 2.0.0", "25.0% / 5.0%", `href="/rollouts/r-1/confirm/pause"`, `href="/rollouts/r-1/confirm/promote"`}},
		{"/rollouts/r-1", []string{`id="rollout-state">running<`, `id="offered">4<`, `id="failed">1<`}},
		{"/rollouts/r-1/confirm/abort", []string{"Yes, abort", `action="/rollouts/r-1/abort"`}},
		{"/devices", []string{`href="/devices/urn:foster:device:edge-gw:SN-1"`}},
		{"/devices/SN-1", []string{"2.0.0", "clone: another key", `/devices/urn:foster:device:edge-gw:SN-1/bundle/3`, ">41<", "lab", "confirm/revoke", "confirm/reprovision",
			// the identity's history, newest first, the certificate in use marked
			`<tr class="current"><td class="kind">renewal after expiry</td>`,
			`re-provisioning (new key) <span class="muted">via admin token</span>`, `superseded by re-provisioning`,
			`<td class="kind">renewal</td>`, `first enrollment <span class="muted">via factory station line-1</span>`}},
		{"/devices/SN-1/confirm/reprovision", []string{"Yes, reprovision", `action="/devices/urn:foster:device:edge-gw:SN-1/reprovision"`, "may use a new key"}},
		{"/releases", []string{"hw-a", "expires in 10 days", `id="tuf-warning">1 role(s)`}},
		{"/stations", []string{"line-1", "7 / 100", `id="log-size">5<`, "first look"}},
	}
	for _, tt := range tests {
		code, body := tc.get(t, tt.path)
		if code != 200 {
			t.Errorf("GET %s: %d\n%s", tt.path, code, body)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(body, w) {
				t.Errorf("GET %s: page lacks %q", tt.path, w)
			}
		}
	}
	for path, want := range map[string]int{"/devices/nope": 404, "/devices/SN-1/confirm/explode": 404, "/nothing": 404, "/?stale_days=-1": 400, "/rollouts/r-1/confirm/explode": 404,
		"/fleet/everything": 404, "/fleet/cloned?after=forged": 400} {
		if code, _ := tc.get(t, path); code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
	}
	if _, body := tc.get(t, "/devices/SN-1"); !(strings.Index(body, "renewal after expiry") < strings.Index(body, "re-provisioning (new key)") &&
		strings.Index(body, "re-provisioning (new key)") < strings.Index(body, "first enrollment")) {
		t.Error("device page: certificates not newest first")
	}
	resp, err := tc.c.Get(tc.URL + "/devices/urn:foster:device:edge-gw:SN-1/bundle/3")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(b) != `{"bundle":true}` || !strings.Contains(resp.Header.Get("Content-Disposition"), "attachment") {
		t.Fatalf("bundle download: %d %q %q", resp.StatusCode, b, resp.Header.Get("Content-Disposition"))
	}
	if h := resp.Header.Get("X-Frame-Options"); h != "DENY" {
		t.Fatalf("X-Frame-Options %q", h)
	}
}

// TestDNSRebindingIsRefused: a page on evil.example that resolves to
// 127.0.0.1 reaches the console with its own name in Host; nothing is
// served and fosterd is not asked.
func TestDNSRebindingIsRefused(t *testing.T) {
	tc := startConsole(t, identity.RoleAdmin)
	_, port, _ := net.SplitHostPort(tc.host)
	for _, host := range []string{"evil.example:" + port, "evil.example", "127.0.0.1.evil.example:" + port, "localhost:1"} {
		req, _ := http.NewRequest(http.MethodGet, tc.URL+"/", nil)
		req.Host = host
		resp, err := tc.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(b), "DNS rebinding") {
			t.Errorf("Host %s: %d %s", host, resp.StatusCode, b)
		}
	}
	token := tc.csrf(t)
	if code, _ := tc.post(t, "/rollouts/r-1/pause", url.Values{"csrf": {token}}, map[string]string{"Host": "evil.example:" + port}); code != http.StatusForbidden {
		t.Errorf("POST with a rebinding Host: %d", code)
	}
	for _, h := range []string{"localhost:" + port, "127.0.0.1:" + port} {
		req, _ := http.NewRequest(http.MethodGet, tc.URL+"/", nil)
		req.Host = h
		resp, err := tc.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("own Host %s: %d", h, resp.StatusCode)
		}
	}
	if a := tc.api.actions(); len(a) != 0 {
		t.Fatalf("fosterd was asked %v", a)
	}
}

// TestCSRFIsRefused: forms posted from another origin, without the
// session's token, with another session's token, or announced cross-site
// by the browser change nothing; the console's own form does.
func TestCSRFIsRefused(t *testing.T) {
	tc := startConsole(t, identity.RoleAdmin)
	token := tc.csrf(t)
	other := startConsole(t, identity.RoleAdmin).csrf(t) // a token of another console's session
	own := "http://" + tc.host
	tests := []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"foreign Origin", url.Values{"csrf": {token}}, map[string]string{"Origin": "http://evil.example"}},
		{"foreign Origin, same host other port", url.Values{"csrf": {token}}, map[string]string{"Origin": "http://127.0.0.1:1"}},
		{"null Origin", url.Values{"csrf": {token}}, map[string]string{"Origin": "null"}},
		{"cross-site fetch", url.Values{"csrf": {token}}, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"no token", url.Values{}, map[string]string{"Origin": own}},
		{"wrong token", url.Values{"csrf": {strings.Repeat("0", 64)}}, map[string]string{"Origin": own}},
		{"another session's token", url.Values{"csrf": {other}}, map[string]string{"Origin": own}},
	}
	for _, tt := range tests {
		code, body := tc.post(t, "/rollouts/r-1/pause", tt.form, tt.hdr)
		if code != http.StatusForbidden || !strings.Contains(body, "CSRF") {
			t.Errorf("%s: %d %s", tt.name, code, body)
		}
	}
	if a := tc.api.actions(); len(a) != 0 {
		t.Fatalf("a forged form reached fosterd: %v", a)
	}
	if code, _ := tc.get(t, "/"); code != 200 {
		t.Fatal(code)
	}
	code, _ := tc.post(t, "/rollouts/r-1/pause", url.Values{"csrf": {token}}, map[string]string{"Origin": own, "Sec-Fetch-Site": "same-origin"})
	if code != http.StatusSeeOther {
		t.Fatalf("the console's own form: %d", code)
	}
	if a := tc.api.actions(); len(a) != 1 || a[0] != "/v1/rollouts/r-1/pause" {
		t.Fatalf("fosterd was asked %v", a)
	}
	if _, body := tc.get(t, "/rollouts/r-1?done=pause"); !strings.Contains(body, `id="rollout-state">paused<`) || !strings.Contains(body, "Rollout paused.") {
		t.Fatal("paused rollout not shown as paused")
	}
}

// TestAuditorSeesNoActionsAndIsRefused: an auditor's console shows no
// action, and fosterd's refusal of a forged one reaches the auditor.
func TestAuditorSeesNoActionsAndIsRefused(t *testing.T) {
	tc := startConsole(t, identity.RoleAuditor)
	for _, path := range []string{"/", "/rollouts", "/rollouts/r-1", "/devices/SN-1", "/releases", "/stations"} {
		code, body := tc.get(t, path)
		if code != 200 {
			t.Fatalf("GET %s: %d", path, code)
		}
		if strings.Contains(body, "/confirm/") || strings.Contains(body, `method="post"`) {
			t.Errorf("auditor's %s offers an action", path)
		}
		if !strings.Contains(body, "read-only") {
			t.Errorf("auditor's %s does not say read-only", path)
		}
	}
	token := tc.csrf(t)
	code, body := tc.post(t, "/rollouts/r-1/pause", url.Values{"csrf": {token}}, map[string]string{"Origin": "http://" + tc.host})
	if code != http.StatusForbidden || !strings.Contains(body, "auditor may not") {
		t.Fatalf("auditor's forged pause: %d %s", code, body)
	}
	code, _ = tc.post(t, "/devices/SN-1/revoke", url.Values{"csrf": {token}}, map[string]string{"Origin": "http://" + tc.host})
	if code != http.StatusForbidden {
		t.Fatalf("auditor's forged revoke: %d", code)
	}
	code, body = tc.post(t, "/devices/SN-1/reprovision", url.Values{"csrf": {token}}, map[string]string{"Origin": "http://" + tc.host})
	if code != http.StatusForbidden || !strings.Contains(body, "auditor may not") {
		t.Fatalf("auditor's forged reprovision: %d %s", code, body)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	u, _ := url.Parse("https://127.0.0.1:8443")
	for name, cfg := range map[string]Config{
		"no server":     {Client: http.DefaultClient, Role: identity.RoleAdmin, Addr: "127.0.0.1:8080"},
		"no client":     {Server: u, Role: identity.RoleAdmin, Addr: "127.0.0.1:8080"},
		"device role":   {Server: u, Client: http.DefaultClient, Role: identity.RoleDevice, Addr: "127.0.0.1:8080"},
		"unbound port":  {Server: u, Client: http.DefaultClient, Role: identity.RoleAdmin, Addr: "127.0.0.1:0"},
		"no listen set": {Server: u, Client: http.DefaultClient, Role: identity.RoleAdmin},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestLogSplitViewIsReported: the log answers a checkpoint of the same
// size with another root hash than the one the console saw before (a
// rewritten history or a split view): the stations page says so.
func TestLogSplitViewIsReported(t *testing.T) {
	tc := startConsole(t, identity.RoleAuditor)
	if _, body := tc.get(t, "/stations"); !strings.Contains(body, "first look") {
		t.Fatal("first view: no first-look verdict")
	}
	if _, body := tc.get(t, "/stations"); !strings.Contains(body, "consistent with the checkpoint seen before (5 entries)") {
		t.Fatalf("second view of the same checkpoint: %s", body)
	}
	tc.api.mu.Lock()
	tc.api.root = strings.Repeat("B", 43) + "="
	tc.api.mu.Unlock()
	_, body := tc.get(t, "/stations")
	if !strings.Contains(body, "INCONSISTENT") || !strings.Contains(body, `verdict bad`) {
		t.Fatalf("split view not reported:\n%s", body)
	}
	// It keeps saying so: the console does not adopt the forged checkpoint.
	if _, body := tc.get(t, "/stations"); !strings.Contains(body, "INCONSISTENT") {
		t.Fatal("the console forgot the split view on the next look")
	}
}

// TestReprovisionGoesThroughItsConfirmation: the device page's reprovision
// button only opens a confirmation; its form asks fosterd, then the page
// says what happened.
func TestReprovisionGoesThroughItsConfirmation(t *testing.T) {
	tc := startConsole(t, identity.RoleAdmin)
	code, body := tc.get(t, "/devices/SN-1/confirm/reprovision")
	m := csrfField.FindStringSubmatch(body)
	if code != 200 || m == nil {
		t.Fatalf("confirmation: %d\n%s", code, body)
	}
	if a := tc.api.actions(); len(a) != 0 {
		t.Fatalf("the confirmation page alone asked fosterd %v", a)
	}
	code, _ = tc.post(t, "/devices/urn:foster:device:edge-gw:SN-1/reprovision", url.Values{"csrf": {m[1]}}, map[string]string{"Origin": "http://" + tc.host})
	if code != http.StatusSeeOther {
		t.Fatalf("confirming: %d", code)
	}
	if a := tc.api.actions(); len(a) != 1 || a[0] != "/v1/devices/urn:foster:device:edge-gw:SN-1/reprovision" {
		t.Fatalf("fosterd was asked %v", a)
	}
	if _, body := tc.get(t, "/devices/SN-1?done=reprovision"); !strings.Contains(body, "Re-provisioning allowed: the next enrollment of SN-1 may use a new key.") {
		t.Fatal("no flash after re-provisioning")
	}
}

func TestThousands(t *testing.T) {
	for n, want := range map[int]string{0: "0", 999: "999", 1000: "1,000", 99500: "99,500", 1234567: "1,234,567", -4200: "-4,200"} {
		if got := thousands(n); got != want {
			t.Errorf("thousands(%d) = %q, want %q", n, got, want)
		}
	}
}
