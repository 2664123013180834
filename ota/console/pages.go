package console

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/foster-ota/foster/ota/server"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/identity"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/tlogverify"
)

// pages are the parsed templates: layout.html plus one file per page.
type pages struct {
	byName map[string]*template.Template
}

var pageNames = []string{"fleet", "fleetlist", "rollouts", "rollout", "confirm", "devices", "device", "releases", "stations", "error"}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "–"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
	"ago": ago,
	"pct": func(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" },
	"share": func(n, of int) string {
		if of == 0 {
			return "–"
		}
		return strconv.FormatFloat(100*float64(n)/float64(of), 'f', 1, 64) + "%"
	},
	"add":       func(a, b int) int { return a + b },
	"join":      func(s []string) string { return strings.Join(s, ", ") },
	"short":     func(s string) string { return shorten(s, 16) },
	"path":      url.PathEscape,
	"list":      func(l fleetList, days int) map[string]any { return map[string]any{"L": l, "StaleDays": days} },
	"remaining": func(quota, used int64) int64 { return max(quota-used, 0) },
	"n":         thousands,
}

func ago(t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	d := time.Since(t)
	if d < 0 {
		switch d = -d; {
		case d < time.Hour:
			return fmt.Sprintf("in %d min", int(d.Minutes()))
		case d < 48*time.Hour:
			return fmt.Sprintf("in %d h", int(d.Hours()))
		default:
			return fmt.Sprintf("in %d days", int(d.Hours()/24))
		}
	}
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return fmt.Sprintf("%d min ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d h ago", int(d.Hours()))
	default:
		return fmt.Sprintf("%d days ago", int(d.Hours()/24))
	}
}

// thousands writes n with comma-separated thousands (99,500).
func thousands(n int) string {
	s := strconv.Itoa(n)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		return "-" + s
	}
	return s
}

func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func parsePages() (*pages, error) {
	p := &pages{byName: map[string]*template.Template{}}
	for _, name := range pageNames {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/partials.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", name, err)
		}
		p.byName[name] = t
	}
	return p, nil
}

// view is what every page template gets.
type view struct {
	Title    string
	Nav      string // fleet, rollouts, devices, releases, stations
	Who      string
	Role     string
	ReadOnly bool
	CSRF     string
	Flash    string
	Data     any
}

// handlerFunc renders a page or returns an error shown as an error page.
type handlerFunc func(w http.ResponseWriter, r *http.Request, v *view) (page string, err error)

func (c *Console) page(fn handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		v := &view{Who: c.cfg.Who, Role: string(c.cfg.Role), ReadOnly: c.cfg.Role != identity.RoleAdmin, CSRF: c.token(c.session(w, r))}
		name, err := fn(w, r, v)
		if err != nil {
			c.renderError(w, r, status(err), err.Error())
			return
		}
		if name == "" { // the handler answered (redirect)
			return
		}
		c.render(w, http.StatusOK, name, v)
	}
}

func (c *Console) render(w http.ResponseWriter, code int, name string, v *view) {
	var buf bytes.Buffer
	if err := c.pages.byName[name].Execute(&buf, v); err != nil {
		c.log.Error("console: rendering a page", "page", name, "err", err)
		http.Error(w, "rendering the page failed", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	w.Write(buf.Bytes())
}

func (c *Console) renderError(w http.ResponseWriter, r *http.Request, code int, msg string) {
	v := &view{Title: http.StatusText(code), Who: c.cfg.Who, Role: string(c.cfg.Role), ReadOnly: c.cfg.Role != identity.RoleAdmin, CSRF: c.token(c.session(w, r)),
		Data: struct {
			Code int
			Msg  string
		}{code, msg}}
	c.render(w, code, "error", v)
}

// ---- Fleet ----

type versionRow struct {
	Version   string
	Installed int
	Latest    bool
}

type modelRow struct {
	Model    string
	Active   int
	OnLatest int
	Versions []versionRow
	Other    int // devices on versions not listed
	Bar      template.HTML
}

// fleetList is one device list of the fleet page: its first page and a
// link to the next.
type fleetList struct {
	Name, Title string
	Count       int
	Devices     []store.DeviceStatus
	More        string
}

type fleetData struct {
	S         *store.FleetSummary
	Models    []modelRow
	Coverage  template.HTML
	StaleDays int
	Lists     map[string]fleetList
}

// listShown is how many devices of each list the fleet page shows; the
// list pages page the rest.
const listShown = 20

// fleetListNotes say what each fleet list holds and what to do about it.
var fleetListNotes = map[string]string{
	store.ListBehind:  "Active devices below their model's latest release, the oldest installed release first, then the longest on it.",
	store.ListSilent:  "Active devices with no attestation (or, never attested, no enrollment) for this long: lost, offline, or stuck. The longest silent first.",
	store.ListRevoked: "Revoked devices: their certificates are refused and listed in the CRL. The latest revocation first.",
	store.ListCloned:  "Devices whose serial someone tried to enroll with another key, refused. A replaced board needs reprovision on its page; anything else is a clone to look into.",
}

// fleetListTitles name the fleet lists.
var fleetListTitles = map[string]string{
	store.ListBehind:  "Behind the latest release",
	store.ListSilent:  "Orphan candidates",
	store.ListRevoked: "Revoked devices",
	store.ListCloned:  "Cloned devices",
}

func staleDays(r *http.Request, def int) (int, error) {
	s := r.URL.Query().Get("stale_days")
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 36500 {
		return 0, badInput("stale_days must be a number of days between 1 and 36500")
	}
	return n, nil
}

func (c *Console) fleet(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	days, err := staleDays(r, c.cfg.StaleDays)
	if err != nil {
		return "", err
	}
	var s store.FleetSummary
	if err := c.api.get(r.Context(), "/v1/reports/fleet/summary", url.Values{"stale_days": {strconv.Itoa(days)}, "list": {strconv.Itoa(listShown)}}, &s); err != nil {
		return "", err
	}
	d := fleetData{S: &s, StaleDays: days, Lists: map[string]fleetList{}}
	for _, m := range s.Models {
		row := modelRow{Model: m.Model, Active: m.Active, OnLatest: m.OnLatest, Other: m.OtherVersions}
		for _, v := range m.Versions {
			name := v.Version
			if v.Counter == 0 {
				name = "nothing installed yet"
			}
			row.Versions = append(row.Versions, versionRow{Version: name, Installed: v.Devices, Latest: v.Latest})
		}
		row.Bar = versionBar(row.Versions)
		d.Models = append(d.Models, row)
	}
	d.Coverage = coveragePlot(s.Coverage, s.Active)
	counts := map[string]int{store.ListBehind: s.Behind, store.ListSilent: s.Silent, store.ListRevoked: s.Revoked, store.ListCloned: s.Cloned}
	for _, name := range store.FleetLists {
		p := s.Lists[name]
		l := fleetList{Name: name, Title: fleetListTitles[name], Count: counts[name], Devices: p.Devices}
		if p.Next != "" {
			l.More = listURL(name, p.Next, days)
		}
		d.Lists[name] = l
	}
	v.Title, v.Nav, v.Data = "Fleet", "fleet", d
	return "fleet", nil
}

func listURL(name, after string, days int) string {
	q := url.Values{}
	if after != "" {
		q.Set("after", after)
	}
	if name == store.ListSilent {
		q.Set("stale_days", strconv.Itoa(days))
	}
	u := "/fleet/" + name
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// listPage bounds a fleet list page.
const listPage = 50

type fleetListData struct {
	L         fleetList
	Note      string
	StaleDays int
	First     string // link to the first page, on later pages
}

// fleetListPage pages one of the fleet page's device lists.
func (c *Console) fleetListPage(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	name := r.PathValue("list")
	if !slices.Contains(store.FleetLists, name) {
		return "", notFound("no fleet list " + name)
	}
	days, err := staleDays(r, c.cfg.StaleDays)
	if err != nil {
		return "", err
	}
	after := r.URL.Query().Get("after")
	if len(after) > 1024 {
		return "", badInput("after is not a page cursor")
	}
	var p store.FleetPage
	q := url.Values{"list": {name}, "stale_days": {strconv.Itoa(days)}, "limit": {strconv.Itoa(listPage)}, "after": {after}}
	if err := c.api.get(r.Context(), "/v1/reports/fleet/devices", q, &p); err != nil {
		return "", err
	}
	d := fleetListData{L: fleetList{Name: name, Title: fleetListTitles[name], Devices: p.Devices}, Note: fleetListNotes[name], StaleDays: days}
	if p.Next != "" {
		d.L.More = listURL(name, p.Next, days)
	}
	if after != "" {
		d.First = listURL(name, "", days)
	}
	v.Title, v.Nav, v.Data = d.L.Title, "fleet", d
	return "fleetlist", nil
}

// ---- Rollouts ----

type rolloutRow struct {
	server.RolloutView
	Actions []string
	Rate    template.HTML
}

// actionsFor are the admin moves a rollout's state allows (ota/rollout's
// transitions; fosterd decides in the end).
func actionsFor(state string, wave, waves int) []string {
	switch state {
	case store.RolloutRunning:
		a := []string{"pause"}
		if wave < waves-1 {
			a = append(a, "promote")
		}
		return append(a, "abort")
	case store.RolloutPaused:
		a := []string{"resume"}
		if wave < waves-1 {
			a = append(a, "promote")
		}
		return append(a, "abort")
	case store.RolloutHalted:
		return []string{"abort"}
	}
	return nil
}

func row(rv server.RolloutView) rolloutRow {
	return rolloutRow{RolloutView: rv, Actions: actionsFor(rv.State, rv.Wave, len(rv.Waves)), Rate: rateBar(rv.Health.FailureRate, rv.MaxFailureRate)}
}

func (c *Console) rollouts(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	var rs []server.RolloutView
	if err := c.api.get(r.Context(), "/v1/rollouts", nil, &rs); err != nil {
		return "", err
	}
	rows := make([]rolloutRow, 0, len(rs))
	for _, rv := range rs {
		rows = append(rows, row(rv))
	}
	v.Title, v.Nav, v.Data = "Rollouts", "rollouts", rows
	return "rollouts", nil
}

func (c *Console) getRollout(ctx context.Context, id string) (server.RolloutView, error) {
	if id == "" || len(id) > 128 || strings.ContainsAny(id, "/?#") {
		return server.RolloutView{}, badInput("not a rollout id")
	}
	var rv server.RolloutView
	err := c.api.get(ctx, "/v1/rollouts/"+url.PathEscape(id), nil, &rv)
	return rv, err
}

func (c *Console) rolloutPage(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	rv, err := c.getRollout(r.Context(), r.PathValue("id"))
	if err != nil {
		return "", err
	}
	if done := r.URL.Query().Get("done"); isAction(done) {
		v.Flash = "Rollout " + done + "d."
		if done == "abort" {
			v.Flash = "Rollout aborted."
		}
	}
	v.Title, v.Nav, v.Data = "Rollout "+rv.ID, "rollouts", row(rv)
	return "rollout", nil
}

func isAction(a string) bool { return a == "promote" || a == "pause" || a == "resume" || a == "abort" }

type confirmData struct {
	What, Action, Post, Back string
	Details                  []string
	Danger                   bool
	Reason                   bool
}

func (c *Console) rolloutConfirm(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	action := r.PathValue("action")
	if !isAction(action) {
		return "", notFound("no rollout action " + action)
	}
	rv, err := c.getRollout(r.Context(), r.PathValue("id"))
	if err != nil {
		return "", err
	}
	id := url.PathEscape(rv.ID)
	d := confirmData{What: "rollout " + rv.ID + " (" + rv.Model + " " + rv.Version + ")", Action: action,
		Post: "/rollouts/" + id + "/" + action, Back: "/rollouts/" + id, Danger: action == "abort",
		Details: []string{
			fmt.Sprintf("state %s, wave %d of %d (%d%%)", rv.State, rv.Wave+1, len(rv.Waves), rv.Percent),
			fmt.Sprintf("offered %d, succeeded %d, failed %d, silent %d", rv.Health.Offered, rv.Health.Succeeded, rv.Health.Failed, rv.Health.Silent),
		}}
	switch action {
	case "promote":
		d.Details = append(d.Details, "Promoting signs new terms that offer the release to the next wave.")
	case "pause":
		d.Details = append(d.Details, "Pausing signs terms that offer the release to no new device.")
	case "resume":
		d.Details = append(d.Details, "Resuming offers the current wave again.")
	case "abort":
		d.Details = append(d.Details, "Aborting is final: the release is offered to no device of this rollout.")
	}
	v.Title, v.Nav, v.Data = "Confirm "+action, "rollouts", d
	return "confirm", nil
}

func (c *Console) rolloutAct(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	action, id := r.PathValue("action"), r.PathValue("id")
	if !isAction(action) {
		return "", notFound("no rollout action " + action)
	}
	if _, err := c.getRollout(r.Context(), id); err != nil {
		return "", err
	}
	var rv server.RolloutView
	if err := c.api.post(r.Context(), "/v1/rollouts/"+url.PathEscape(id)+"/"+action, nil, &rv); err != nil {
		return "", err
	}
	c.log.Info("console: rollout action", "rollout", id, "action", action, "state", rv.State)
	http.Redirect(w, r, "/rollouts/"+url.PathEscape(id)+"?done="+action, http.StatusSeeOther)
	return "", nil
}

// ---- Devices ----

// devicePage bounds the device list and attestation pages.
const devicePage = 50

type devicesData struct {
	Devices []store.Device
	Next    string
	Query   string
}

func (c *Console) devices(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	q := r.URL.Query()
	if s := strings.TrimSpace(q.Get("q")); s != "" {
		if len(s) > 256 || strings.ContainsAny(s, "/?#") {
			return "", badInput("not a serial or device URN")
		}
		http.Redirect(w, r, "/devices/"+url.PathEscape(s), http.StatusSeeOther)
		return "", nil
	}
	after := q.Get("after")
	if len(after) > 256 {
		return "", badInput("after is not a device id")
	}
	var ds []store.Device
	if err := c.api.get(r.Context(), "/v1/devices", url.Values{"after": {after}, "limit": {strconv.Itoa(devicePage)}}, &ds); err != nil {
		return "", err
	}
	d := devicesData{Devices: ds}
	if len(ds) == devicePage {
		d.Next = "/devices?after=" + url.QueryEscape(ds[len(ds)-1].ID)
	}
	v.Title, v.Nav, v.Data = "Devices", "devices", d
	return "devices", nil
}

type deviceDetail struct {
	store.Device
	Certificates      []store.Certificate `json:"certificates"`
	CertificatesTotal int                 `json:"certificates_total"`
	Refusals          []store.Refusal     `json:"refusals"`
	RefusalsTotal     int                 `json:"refusals_total"`
}

type deviceData struct {
	D            deviceDetail
	Attestations []store.Attestation
	Next         string
	Tags         []string
	CertExpires  string
	// Certs are the device's certificates, newest first, with what issued
	// each: its identity's history.
	Certs []certRow
}

// certRow is one certificate in a device's history.
type certRow struct {
	store.Certificate
	Kind    string // first enrollment, renewal, re-provisioning...
	Via     string // the token or factory station behind an enrollment
	Current bool   // the certificate the device uses now
}

// certHistory names what issued each certificate (oldest first in, newest
// first out): store.Certificate.IssuedVia is token, station:NAME, renew,
// renew-expired, or reprovision: before the enrollment's own.
func certHistory(certs []store.Certificate, current string) []certRow {
	out := make([]certRow, 0, len(certs))
	enrolled := false
	for _, c := range certs {
		r := certRow{Certificate: c, Current: c.Serial == current}
		via := c.IssuedVia
		switch {
		case strings.HasPrefix(via, "reprovision:"):
			r.Kind, r.Via = "re-provisioning (new key)", enrollVia(strings.TrimPrefix(via, "reprovision:"))
			enrolled = true
		case via == "renew":
			r.Kind = "renewal"
		case via == "renew-expired":
			r.Kind = "renewal after expiry"
		case via == "token" || strings.HasPrefix(via, "station:"):
			r.Kind, r.Via = "first enrollment", enrollVia(via)
			if enrolled {
				r.Kind = "enrollment again (same key)"
			}
			enrolled = true
		default:
			r.Kind = via
		}
		out = append(out, r)
	}
	slices.Reverse(out)
	return out
}

func enrollVia(via string) string {
	if name, ok := strings.CutPrefix(via, "station:"); ok {
		return "factory station " + name
	}
	return "admin token"
}

func (c *Console) getDevice(ctx context.Context, id string) (deviceDetail, error) {
	if id == "" || len(id) > 256 || strings.ContainsAny(id, "/?#") {
		return deviceDetail{}, badInput("not a serial or device URN")
	}
	var d deviceDetail
	err := c.api.get(ctx, "/v1/devices/"+url.PathEscape(id), nil, &d)
	return d, err
}

func (c *Console) device(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	dd, err := c.getDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return "", err
	}
	q := url.Values{"device": {dd.ID}, "limit": {strconv.Itoa(devicePage)}}
	if a := r.URL.Query().Get("after"); a != "" {
		if _, err := strconv.ParseInt(a, 10, 64); err != nil {
			return "", badInput("after must be an attestation id")
		}
		q.Set("after", a)
	}
	var as []store.Attestation
	if err := c.api.get(r.Context(), "/v1/attestations", q, &as); err != nil {
		return "", err
	}
	d := deviceData{D: dd, Attestations: as}
	if len(as) == devicePage {
		d.Next = fmt.Sprintf("/devices/%s?after=%d", url.PathEscape(dd.ID), as[len(as)-1].ID)
	}
	var tags []string
	if err := c.api.get(r.Context(), "/v1/devices/"+url.PathEscape(dd.ID)+"/tags", nil, &tags); err == nil {
		d.Tags = tags
	}
	if !dd.CertNotAfter.IsZero() {
		d.CertExpires = ago(dd.CertNotAfter)
	}
	d.Certs = certHistory(dd.Certificates, dd.CertSerial)
	switch r.URL.Query().Get("done") {
	case "revoke":
		v.Flash = "Device revoked."
	case "reprovision":
		v.Flash = "Re-provisioning allowed: the next enrollment of " + dd.Serial + " may use a new key."
	}
	v.Title, v.Nav, v.Data = "Device "+dd.Serial, "devices", d
	return "device", nil
}

func (c *Console) deviceConfirm(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	action := r.PathValue("action")
	if action != "revoke" && action != "reprovision" {
		return "", notFound("no device action " + action)
	}
	dd, err := c.getDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return "", err
	}
	id := url.PathEscape(dd.ID)
	d := confirmData{What: "device " + dd.ID, Action: action, Post: "/devices/" + id + "/" + action, Back: "/devices/" + id}
	switch action {
	case "revoke":
		d.Danger, d.Reason = true, true
		d.Details = []string{"Revocation is immediate: the device's certificate stops working at once and is listed in the CRL.",
			"The device cannot enroll again with the same key unless an admin allows re-provisioning."}
	case "reprovision":
		d.Details = []string{
			fmt.Sprintf("The next enrollment of serial %s (model %s) may use a new key: a replaced board or a wiped secure element enrolls again with a factory station or an admin token.", dd.Serial, dd.Model),
			"When it does, every certificate issued to the device before is revoked as superseded: whoever holds the old key is locked out. Allow it only for a device you know was replaced; the refusals on its page name the keys that tried.",
			"Until then the device keeps its current certificate, but its old key can no longer renew an expired one.",
		}
		if dd.Status == store.DeviceRevoked {
			d.Details = append(d.Details, "The device is revoked: this is how it may enroll again.")
		}
	}
	v.Title, v.Nav, v.Data = "Confirm "+action, "devices", d
	return "confirm", nil
}

// deviceReprovision allows the device's next enrollment to use a new key
// (foster device reprovision).
func (c *Console) deviceReprovision(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	dd, err := c.getDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return "", err
	}
	if err := c.api.post(r.Context(), "/v1/devices/"+url.PathEscape(dd.ID)+"/reprovision", map[string]string{}, nil); err != nil {
		return "", err
	}
	c.log.Info("console: device re-provisioning allowed", "device", dd.ID)
	http.Redirect(w, r, "/devices/"+url.PathEscape(dd.ID)+"?done=reprovision", http.StatusSeeOther)
	return "", nil
}

var revokeReasons = []string{"unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation"}

func (c *Console) deviceRevoke(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	dd, err := c.getDevice(r.Context(), r.PathValue("id"))
	if err != nil {
		return "", err
	}
	reason := r.PostFormValue("reason")
	if reason == "" {
		reason = "unspecified"
	}
	if !slices.Contains(revokeReasons, reason) {
		return "", badInput("unknown revocation reason " + reason)
	}
	if err := c.api.post(r.Context(), "/v1/devices/"+url.PathEscape(dd.ID)+"/revoke", map[string]string{"reason": reason}, nil); err != nil {
		return "", err
	}
	c.log.Info("console: device revoked", "device", dd.ID, "reason", reason)
	http.Redirect(w, r, "/devices/"+url.PathEscape(dd.ID)+"?done=revoke", http.StatusSeeOther)
	return "", nil
}

// bundle streams an attestation's offline evidence bundle as a download.
func (c *Console) bundle(w http.ResponseWriter, r *http.Request) {
	id, seq := r.PathValue("id"), r.PathValue("seq")
	if _, err := strconv.ParseInt(seq, 10, 64); err != nil || id == "" || len(id) > 256 || strings.ContainsAny(id, "/?#") {
		c.renderError(w, r, http.StatusBadRequest, "not a device and attestation sequence")
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.api.url("/v1/attestations/"+url.PathEscape(id)+"/"+seq+"/bundle", nil), nil)
	if err != nil {
		c.renderError(w, r, http.StatusBadRequest, err.Error())
		return
	}
	resp, err := c.api.http.Do(req)
	if err != nil {
		c.renderError(w, r, http.StatusBadGateway, "contacting fosterd: "+err.Error())
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.renderError(w, r, resp.StatusCode, "fosterd refused the bundle: "+resp.Status)
		return
	}
	name := "attestation-" + sanitize(id) + "-" + seq + ".bundle.json"
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	io.Copy(w, io.LimitReader(resp.Body, maxAPIBody))
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_' {
			return r
		}
		return '_'
	}, s)
}

// ---- Releases ----

type roleRow struct {
	Role      string
	Version   int64
	Expires   time.Time
	Keys      int
	Threshold int
	Online    bool
	Warn      string
}

type releasesData struct {
	Releases []server.Release
	Next     string
	Roles    []roleRow
	Warnings int
	TUF      tufrepo.Status
}

// expiryWarning is how early the console warns of an expiring offline role.
const expiryWarning = 30 * 24 * time.Hour

func (c *Console) releases(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	q := url.Values{"limit": {"100"}}
	if a := r.URL.Query().Get("after"); a != "" {
		if _, err := strconv.ParseInt(a, 10, 64); err != nil {
			return "", badInput("after must be a release id")
		}
		q.Set("after", a)
	}
	var rels []server.Release
	if err := c.api.get(r.Context(), "/v1/releases", q, &rels); err != nil {
		return "", err
	}
	var st tufrepo.Status
	if err := c.api.get(r.Context(), "/v1/tuf", nil, &st); err != nil {
		return "", err
	}
	d := releasesData{Releases: rels, TUF: st}
	if len(rels) == 100 {
		d.Next = fmt.Sprintf("/releases?after=%d", rels[len(rels)-1].ID)
	}
	now := time.Now()
	for _, role := range []struct {
		name    string
		version int64
		expires time.Time
	}{{"root", st.Versions.Root, st.Expires.Root}, {"targets", st.Versions.Targets, st.Expires.Targets},
		{"snapshot", st.Versions.Snapshot, st.Expires.Snapshot}, {"timestamp", st.Versions.Timestamp, st.Expires.Timestamp}} {
		rr := roleRow{Role: role.name, Version: role.version, Expires: role.expires, Keys: len(st.Keys[role.name].KeyIDs),
			Threshold: st.Keys[role.name].Threshold, Online: slices.Contains(st.Held, role.name)}
		switch left := role.expires.Sub(now); {
		case left <= 0:
			rr.Warn = "expired"
		case !rr.Online && left < expiryWarning:
			// Online roles are re-signed by fosterd before they expire;
			// offline ones need a ceremony.
			rr.Warn = fmt.Sprintf("expires in %d days: run a signing ceremony", int(math.Ceil(left.Hours()/24)))
		}
		if rr.Warn != "" {
			d.Warnings++
		}
		d.Roles = append(d.Roles, rr)
	}
	v.Title, v.Nav, v.Data = "Releases", "releases", d
	return "releases", nil
}

// ---- Stations and the log ----

type stationsData struct {
	Stations   []store.Station
	Checkpoint string
	Origin     string
	Size       int64
	Root       string
	Verdict    string
	Consistent bool
}

// monitor remembers the last checkpoint this console saw, to tell the
// operator whether the log stayed append-only since.
type monitor struct {
	mu   sync.Mutex
	last *tlogverify.Checkpoint
}

func parseCheckpointBody(text string) (tlogverify.Checkpoint, error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 3 {
		return tlogverify.Checkpoint{}, errors.New("malformed checkpoint")
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 {
		return tlogverify.Checkpoint{}, errors.New("malformed checkpoint size")
	}
	root, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(root) != 32 {
		return tlogverify.Checkpoint{}, errors.New("malformed checkpoint root")
	}
	return tlogverify.Checkpoint{Origin: lines[0], Size: size, Root: root}, nil
}

func (c *Console) stations(w http.ResponseWriter, r *http.Request, v *view) (string, error) {
	var ss []store.Station
	if err := c.api.get(r.Context(), "/v1/stations", nil, &ss); err != nil {
		return "", err
	}
	d := stationsData{Stations: ss}
	text, err := c.api.getText(r.Context(), "/v1/log/checkpoint")
	if err != nil {
		return "", err
	}
	d.Checkpoint = text
	cp, err := parseCheckpointBody(text)
	if err != nil {
		d.Verdict = "fosterd served a malformed checkpoint: " + err.Error()
	} else {
		d.Origin, d.Size, d.Root = cp.Origin, cp.Size, base64.StdEncoding.EncodeToString(cp.Root)
		d.Verdict, d.Consistent = c.checkConsistency(r.Context(), cp)
	}
	v.Title, v.Nav, v.Data = "Stations and log", "stations", d
	return "stations", nil
}

// checkConsistency compares cp with the last checkpoint this console saw.
func (c *Console) checkConsistency(ctx context.Context, cp tlogverify.Checkpoint) (string, bool) {
	c.mon.mu.Lock()
	defer c.mon.mu.Unlock()
	last := c.mon.last
	if last == nil || last.Size == 0 {
		c.mon.last = &cp
		return "first look: the console checks that the log stays append-only from now on", true
	}
	var proof struct {
		Hashes [][]byte `json:"hashes"`
	}
	if cp.Size > last.Size {
		q := url.Values{"from": {strconv.FormatInt(last.Size, 10)}, "to": {strconv.FormatInt(cp.Size, 10)}}
		if err := c.api.get(ctx, "/v1/log/consistency", q, &proof); err != nil {
			return "could not fetch a consistency proof: " + err.Error(), false
		}
	}
	if err := tlogverify.VerifyConsistency(*last, cp, proof.Hashes); err != nil {
		return "INCONSISTENT with the checkpoint seen before (" + strconv.FormatInt(last.Size, 10) + " entries): " + err.Error(), false
	}
	verdict := fmt.Sprintf("consistent with the checkpoint seen before (%d entries)", last.Size)
	c.mon.last = &cp
	return verdict, true
}

// ---- errors ----

type inputError struct {
	code int
	msg  string
}

func (e *inputError) Error() string { return e.msg }

func badInput(msg string) error { return &inputError{http.StatusBadRequest, msg} }
func notFound(msg string) error { return &inputError{http.StatusNotFound, msg} }
