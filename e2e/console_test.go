package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// startConsole runs `foster <conn...> console --listen 127.0.0.1:0` and
// returns the URL it prints.
func startConsole(t *testing.T, conn ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "foster"), append(conn, "console", "--listen", "127.0.0.1:0")...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("console log:\n%s", logs.String())
		}
	})
	line := make(chan string, 1)
	go func() {
		l, _ := bufio.NewReader(out).ReadString('\n')
		line <- l
		io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		m := regexp.MustCompile(`open (http://127\.0\.0\.1:\d+/)`).FindStringSubmatch(l)
		if m == nil {
			t.Fatalf("foster console printed %q, want the URL to open", l)
		}
		return m[1]
	case <-time.After(60 * time.Second):
		t.Fatal("foster console printed no URL within 60 s")
		return ""
	}
}

// browser starts Debian's chromium headless with a fresh profile.
func browser(t *testing.T) context.Context {
	t.Helper()
	const chromium = "/usr/bin/chromium"
	if _, err := os.Stat(chromium); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s missing: make test installs it (scripts/install-chromium.sh)", chromium)
		}
		t.Skipf("%s missing: run scripts/install-chromium.sh", chromium)
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 800),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(ctx); err != nil { // starts the browser, without a timeout
		t.Fatalf("starting chromium: %v", err)
	}
	ctx, cancelTimeout := context.WithTimeout(ctx, 3*time.Minute)
	t.Cleanup(cancelTimeout)
	return ctx
}

// screenshots saves the current page at desktop and phone width under
// e2e/testdata/out/console/.
func screenshots(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := filepath.Join(moduleRoot(), "e2e", "testdata", "out", "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, s := range []struct {
		suffix string
		w, h   int64
		mobile bool
	}{{"1280x800", 1280, 800, false}, {"390x844", 390, 844, true}} {
		vp := chromedp.EmulateViewport(s.w, s.h)
		if s.mobile {
			vp = chromedp.EmulateViewport(s.w, s.h, chromedp.EmulateMobile, chromedp.EmulateScale(2))
		}
		if err := chromedp.Do(ctx, vp, chromedp.Reload(), chromedp.WaitReady(chromedp.CSS("main"))); err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+"-"+s.suffix+".png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		t.Fatal(err)
	}
}

// text reads the text of the element sel on the current page.
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(sel))); err != nil {
		t.Fatalf("waiting for %s: %v", sel, err)
	}
	s, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("reading %s: %v", sel, err)
	}
	return strings.TrimSpace(s)
}

// count counts the elements matching sel on the current page.
func count(t *testing.T, ctx context.Context, sel string) int {
	t.Helper()
	n, err := chromedp.Run(ctx, chromedp.Evaluate[int](fmt.Sprintf("document.querySelectorAll(%q).length", sel)))
	if err != nil {
		t.Fatalf("counting %s: %v", sel, err)
	}
	return n
}

// TestConsoleInABrowser: a fleet of real devices enrolls and attests two
// releases; a rollout of a third runs. An admin opens `foster console` in
// headless Chromium: every page loads and shows what the API says, pausing
// the rollout with its confirmation pauses it in fosterd. An auditor's
// console shows no action, and fosterd refuses one forged through it.
func TestConsoleInABrowser(t *testing.T) {
	env := NewEnvWith(t, []string{"--public-repository"})
	env.Admin("model", "add", "edge-gw")
	f := enrollFleet(env, "C", "edge-gw", 4)
	fw1, body1 := writeFirmware(t, 16<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "1.0.0", fw1)
	f.runUntil(t, f.devs, "every device runs 1.0.0", func() bool { return len(installedBy(f.devs, body1)) == len(f.devs) })
	fw2, _ := writeFirmware(t, 16<<10)
	env.Admin("release", "add", "--model", "edge-gw", "--version", "2.0.0", "--hold", fw2)
	id := strings.TrimSpace(env.Admin("rollout", "create", "--model", "edge-gw", "--version", "2.0.0", "--waves", "50,100").Stdout)
	env.Admin("admin", "create", "eve", "--role", "auditor", "--out", filepath.Join(env.DataDir, "eve.cred"))
	// An identity's history: one device renews its certificate, another's
	// serial is claimed by a clone (refused), a third is revoked.
	renewed, twin, gone := f.devs[0], f.devs[1], f.devs[3]
	env.MustRun("foster-agent", "--state-dir", renewed.StateDir, "renew", "--force")
	clone := env.NewDevice(twin.Serial, "edge-gw")
	env.MustFail("clone", "foster-agent", clone.enrollArgs(env.Token(twin.Serial, "edge-gw"))...)
	env.Admin("device", "revoke", gone.Serial)
	caPEM, err := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	admin := env.adminClient(caPEM)

	var sum struct {
		Active   int `json:"active"`
		OnLatest int `json:"on_latest"`
		Behind   int `json:"behind"`
		Silent   int `json:"silent"`
		Revoked  int `json:"revoked"`
		Cloned   int `json:"cloned"`
	}
	env.getJSON(admin, "/v1/reports/fleet/summary?stale_days=30", &sum)
	// 2.0.0 is signed (held for the rollout), so it is the latest: nobody is on it yet.
	if sum.Active != 3 || sum.OnLatest != 0 || sum.Behind != 3 || sum.Revoked != 1 || sum.Cloned != 1 {
		t.Fatalf("the API's fleet summary %+v: want 3 active, all behind, 1 revoked, 1 cloned", sum)
	}

	base := startConsole(t, "--instance", env.DataDir)
	ctx := browser(t)
	start := time.Now()

	// Fleet: the numbers are the API's.
	if err := chromedp.Do(ctx, chromedp.Navigate(base)); err != nil {
		t.Fatal(err)
	}
	for sel, want := range map[string]string{"#active-devices": fmt.Sprint(sum.Active), "#on-latest": fmt.Sprintf("%.1f%%", 100*float64(sum.OnLatest)/float64(sum.Active)),
		"#behind-count": fmt.Sprint(sum.Behind), "#stale-count": fmt.Sprint(sum.Silent), "#revoked-count": fmt.Sprint(sum.Revoked), "#cloned-count": fmt.Sprint(sum.Cloned)} {
		if got := text(t, ctx, sel); got != want {
			t.Fatalf("fleet page shows %s %s, the API %s", sel, got, want)
		}
	}
	for sel, want := range map[string]int{"table.devlist.behind tbody tr": sum.Behind, "table.devlist.revoked tbody tr": 1, "table.devlist.cloned tbody tr": 1} {
		if n := count(t, ctx, sel); n != want {
			t.Fatalf("fleet page lists %d rows of %s, want %d", n, sel, want)
		}
	}
	screenshots(t, ctx, "fleet")

	// Rollouts: pause with its confirmation.
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"rollouts")); err != nil {
		t.Fatal(err)
	}
	screenshots(t, ctx, "rollouts")
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"rollouts/"+id)); err != nil {
		t.Fatal(err)
	}
	if got := text(t, ctx, "#rollout-state"); got != "running" {
		t.Fatalf("rollout page says %q, want running", got)
	}
	if got, want := text(t, ctx, "#offered"), fmt.Sprint(env.rollout(id).Health.Offered); got != want {
		t.Fatalf("rollout page shows %s offered, the API %s", got, want)
	}
	screenshots(t, ctx, "rollout")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("a.button.pause")), chromedp.WaitVisible(chromedp.CSS("#confirm"))); err != nil {
		t.Fatalf("pause button: %v", err)
	}
	if st := env.rollout(id).State; st != "running" {
		t.Fatalf("the pause button alone changed the state to %s: no confirmation", st)
	}
	screenshots(t, ctx, "confirm-pause")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS(".flash"))); err != nil {
		t.Fatalf("confirming: %v", err)
	}
	if got := text(t, ctx, "#rollout-state"); got != "paused" {
		t.Fatalf("after confirming, the page says %q, want paused", got)
	}
	if st := env.rollout(id).State; st != "paused" {
		t.Fatalf("fosterd says the rollout is %s after the console paused it", st)
	}

	// Device, releases, stations and log.
	serial := f.devs[0].Serial
	if err := chromedp.Do(ctx, chromedp.Navigate(base), chromedp.WaitVisible(chromedp.CSS("input[name=q]")),
		chromedp.SendKeys(chromedp.CSS("input[name=q]"), serial+"\n"), chromedp.WaitVisible(chromedp.CSS("#installed"))); err != nil {
		t.Fatalf("search by serial: %v", err)
	}
	if got := text(t, ctx, "#installed"); !strings.HasPrefix(got, "1.0.0") {
		t.Fatalf("device page says installed %q, want 1.0.0", got)
	}
	if n := count(t, ctx, "table.attestations a[download]"); n < 1 {
		t.Fatalf("device page lists %d attestation bundles", n)
	}
	// Its identity's history: the enrollment and the renewal, newest first.
	type deviceJSON struct {
		ID                   string    `json:"id"`
		CertificatesTotal    int       `json:"certificates_total"`
		RefusalsTotal        int       `json:"refusals_total"`
		ReprovisionAllowedAt time.Time `json:"reprovision_allowed_at"`
	}
	device := func(serial string) (d deviceJSON) {
		env.getJSON(admin, "/v1/devices/"+serial, &d)
		return d
	}
	dev := device(serial)
	if got := kinds(t, ctx); dev.CertificatesTotal != 2 || len(got) != 2 || got[0] != "renewal" || !strings.HasPrefix(got[1], "first enrollment") {
		t.Fatalf("renewed device's history shows %q, the API has %d certificates; want renewal, first enrollment", got, dev.CertificatesTotal)
	}
	screenshots(t, ctx, "device")

	// The clone: from the fleet page's list to the device, whose refusal
	// shows; an admin allows re-provisioning through the confirmation, and
	// the replacement enrolls with its new key.
	if err := chromedp.Do(ctx, chromedp.Navigate(base), chromedp.Click(chromedp.CSS("table.devlist.cloned a")), chromedp.WaitVisible(chromedp.CSS("table.refusals"))); err != nil {
		t.Fatalf("cloned device from the fleet page: %v", err)
	}
	dev = device(twin.Serial)
	if n := count(t, ctx, "table.refusals tbody tr"); n != dev.RefusalsTotal || n != 1 {
		t.Fatalf("cloned device page lists %d refusals, the API %d", n, dev.RefusalsTotal)
	}
	screenshots(t, ctx, "device-cloned")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("a.button.reprovision")), chromedp.WaitVisible(chromedp.CSS("#confirm"))); err != nil {
		t.Fatalf("reprovision button: %v", err)
	}
	if dev = device(twin.Serial); !dev.ReprovisionAllowedAt.IsZero() {
		t.Fatal("the reprovision button alone allowed re-provisioning: no confirmation")
	}
	screenshots(t, ctx, "confirm-reprovision")
	if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#confirm")), chromedp.WaitVisible(chromedp.CSS("#reprovision-allowed"))); err != nil {
		t.Fatalf("confirming re-provisioning: %v", err)
	}
	if dev = device(twin.Serial); dev.ReprovisionAllowedAt.IsZero() {
		t.Fatal("fosterd did not record the re-provisioning the console confirmed")
	}
	clone.Enroll(env.Token(twin.Serial, "edge-gw"))
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"devices/"+url.PathEscape(dev.ID)), chromedp.WaitVisible(chromedp.CSS("table.certs"))); err != nil {
		t.Fatal(err)
	}
	dev = device(twin.Serial)
	if got := kinds(t, ctx); len(got) != dev.CertificatesTotal || len(got) != 2 || !strings.HasPrefix(got[0], "re-provisioning") || count(t, ctx, "table.certs tr.current") != 1 {
		t.Fatalf("re-provisioned device's history shows %q, the API has %d certificates", got, dev.CertificatesTotal)
	}
	screenshots(t, ctx, "device-reprovisioned")
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"fleet/cloned"), chromedp.WaitVisible(chromedp.CSS("table.devlist"))); err != nil {
		t.Fatal(err)
	}
	screenshots(t, ctx, "fleet-cloned")
	for _, p := range []struct{ path, sel string }{{"releases", "table.roles"}, {"stations", "#log-size"}, {"devices", "table"}} {
		if err := chromedp.Do(ctx, chromedp.Navigate(base+p.path), chromedp.WaitVisible(chromedp.CSS(p.sel))); err != nil {
			t.Fatalf("%s: %v", p.path, err)
		}
		screenshots(t, ctx, p.path)
	}
	if rows := count(t, ctx, "main tbody tr"); rows != len(f.devs) { // revoked ones too
		t.Fatalf("device list shows %d rows, want %d", rows, len(f.devs))
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(base+"stations")); err != nil {
		t.Fatal(err)
	}
	if got := text(t, ctx, "#log-size"); got != fmt.Sprint(len(f.devs)) {
		t.Fatalf("log size %q after %d attestations", got, len(f.devs))
	}

	// The auditor: no actions shown; a forged one is refused by fosterd.
	audit := startConsole(t, "--cred", filepath.Join(env.DataDir, "eve.cred"))
	if err := chromedp.Do(ctx, chromedp.Navigate(audit+"rollouts/"+id), chromedp.WaitVisible(chromedp.CSS("#rollout-state"))); err != nil {
		t.Fatal(err)
	}
	if n := count(t, ctx, "a[href*='/confirm/'], form[method=post]"); n != 0 {
		t.Fatalf("the auditor's rollout page offers %d actions", n)
	}
	screenshots(t, ctx, "auditor-rollout")
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Get(audit + "rollouts/" + id + "/confirm/resume")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindSubmatch(page)
	if m == nil {
		t.Fatalf("no form token on the auditor's confirmation page:\n%s", page)
	}
	req, _ := http.NewRequest(http.MethodPost, audit+"rollouts/"+id+"/resume", strings.NewReader(url.Values{"csrf": {string(m[1])}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", strings.TrimSuffix(audit, "/"))
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(page), "auditor may not") {
		t.Fatalf("auditor's forged resume: %d\n%s", resp.StatusCode, page)
	}
	if st := env.rollout(id).State; st != "paused" {
		t.Fatalf("an auditor's console changed the rollout to %s", st)
	}
	// Nor may an auditor allow re-provisioning: no button, and fosterd
	// refuses the forged form.
	if err := chromedp.Do(ctx, chromedp.Navigate(audit+"devices/"+url.PathEscape(renewed.Serial)), chromedp.WaitVisible(chromedp.CSS("table.certs"))); err != nil {
		t.Fatal(err)
	}
	if n := count(t, ctx, "a[href*='/confirm/'], form[method=post]"); n != 0 {
		t.Fatalf("the auditor's device page offers %d actions", n)
	}
	screenshots(t, ctx, "auditor-device")
	req, _ = http.NewRequest(http.MethodPost, audit+"devices/"+url.PathEscape(renewed.Serial)+"/reprovision", strings.NewReader(url.Values{"csrf": {string(m[1])}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", strings.TrimSuffix(audit, "/"))
	resp, err = hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	page, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(page), "auditor may not") {
		t.Fatalf("auditor's forged reprovision: %d\n%s", resp.StatusCode, page)
	}
	if !device(renewed.Serial).ReprovisionAllowedAt.IsZero() {
		t.Fatal("an auditor's console allowed re-provisioning")
	}
	t.Logf("browser part took %s", time.Since(start).Round(time.Millisecond))
}

// kinds reads the device page's certificate history: what issued each.
func kinds(t *testing.T, ctx context.Context) []string {
	t.Helper()
	ks, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("table.certs td.kind")).map(e => e.textContent.trim())`))
	if err != nil {
		t.Fatalf("reading the certificate history: %v", err)
	}
	return ks
}
