package e2e

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/foster-ota/foster/ca"
	"github.com/foster-ota/foster/pkg/store"
	"github.com/foster-ota/foster/pkg/x5ctoken"
	_ "modernc.org/sqlite" // registers "sqlite", to count spent token ids
)

// crashEnrollment is one device of TestEnrollmentsSurviveKillDuringGroupCommit:
// its key, CSR and station token, and what fosterd answered it.
type crashEnrollment struct {
	serial, id string
	token      string
	csr        string // PEM
	keySHA256  string
	answered   bool   // a 201 reached the device before the kill
	chain      string // the PEM chain it received
	certSerial string // hex, of the leaf it received
}

type enrollAnswer struct {
	status int
	code   string // API error code
	chain  string
	serial string
}

// enroll posts e's enrollment; err is a lost answer (no HTTP response).
func (e *crashEnrollment) enroll(c *http.Client, base string) (enrollAnswer, error) {
	body, _ := json.Marshal(map[string]string{"token": e.token, "serial": e.serial, "model": "edge-gw", "csr": e.csr})
	resp, err := c.Post(base+"/v1/enroll", "application/json", bytes.NewReader(body))
	if err != nil {
		return enrollAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return enrollAnswer{}, err // the response was cut: the device has nothing
	}
	a := enrollAnswer{status: resp.StatusCode}
	if resp.StatusCode != http.StatusCreated {
		var apiErr struct{ Code string }
		json.Unmarshal(b, &apiErr)
		a.code = apiErr.Code + ": " + string(b)
		return a, nil
	}
	var ok struct{ DeviceID, Certificate string }
	if err := json.Unmarshal(b, &ok); err != nil {
		return enrollAnswer{}, err
	}
	blk, _ := pem.Decode([]byte(ok.Certificate))
	if blk == nil {
		return enrollAnswer{}, fmt.Errorf("201 without a certificate: %s", b)
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return enrollAnswer{}, err
	}
	a.chain, a.serial = ok.Certificate, leaf.SerialNumber.Text(16)
	return a, nil
}

// TestEnrollmentsSurviveKillDuringGroupCommit is a power cut of fosterd
// (SIGKILL, embedded SQLite) while 32 devices enroll at once, so that their
// writes share group-commit transactions (pkg/store/group.go). After the
// restart: no acknowledged enrollment is lost or changed, no enrollment is
// half recorded (device without certificate, token id or quota unit spent
// without a device), and every device left without an answer finishes with
// its same token and key (docs/CA.md, "Lost responses").
func TestEnrollmentsSurviveKillDuringGroupCommit(t *testing.T) {
	const (
		devices   = 300
		clients   = 32
		killAfter = 50 // 201s received before the power cut
	)
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	stationFile := filepath.Join(t.TempDir(), "line-1.station")
	env.Admin("station", "create", "line-1", "--quota", fmt.Sprint(devices), "--models", "edge-gw", "--out", stationFile)
	enrollments := stationEnrollments(t, stationFile, devices)

	caPEM, err := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	anon := env.HTTPClient(caPEM, nil)
	anon.Transport.(*http.Transport).MaxIdleConnsPerHost = clients
	admin := env.adminClient(caPEM)

	// Enroll everything from 32 clients; the 50th 201 pulls the plug.
	var (
		acked   atomic.Int64
		killed  = make(chan struct{})
		kill    sync.Once
		mu      sync.Mutex
		refused []string
	)
	work := make(chan *crashEnrollment)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for e := range work {
				a, err := e.enroll(anon, env.URL)
				if err != nil {
					continue // lost with the power cut
				}
				if a.status != http.StatusCreated {
					mu.Lock()
					refused = append(refused, fmt.Sprintf("%s: %d %s", e.serial, a.status, a.code))
					mu.Unlock()
					continue
				}
				e.answered, e.chain, e.certSerial = true, a.chain, a.serial
				if acked.Add(1) == killAfter {
					kill.Do(func() { env.KillDaemon(); close(killed) })
				}
			}
		})
	}
	for _, e := range enrollments {
		work <- e
	}
	close(work)
	wg.Wait()
	select {
	case <-killed:
	default:
		t.Fatalf("only %d of %d enrollments answered 201 before the kill: %v", acked.Load(), devices, refused)
	}
	if len(refused) > 0 {
		t.Fatalf("enrollments refused under load, before any crash: %v", refused)
	}
	lost := devices - int(acked.Load())
	t.Logf("%d enrollments acknowledged, %d without an answer when fosterd was killed", acked.Load(), lost)
	if lost == 0 {
		// The kill cannot land after 250 more enrollments; if it ever did, the
		// checks below still hold, but the crash tested nothing.
		t.Fatalf("every enrollment was answered: the kill landed after the load")
	}

	env.StartDaemon()
	recorded := env.checkEnrollmentStore(t, admin, enrollments, "after the power cut")

	// Acknowledged: lost writes or a changed certificate.
	for _, e := range enrollments {
		if !e.answered {
			continue
		}
		if got := recorded[e.id]; got != e.certSerial {
			t.Errorf("acknowledged enrollment lost by the power cut: %s got certificate %s, the store has %q", e.serial, e.certSerial, got)
		}
	}

	// Every device retries with its token and key; the acknowledged ones
	// too, as a device would whose answer was lost on the way back.
	var replayed, fresh atomic.Int64
	var errs sync.Map
	retry := make(chan *crashEnrollment)
	for range clients {
		wg.Go(func() {
			for e := range retry {
				a, err := e.enroll(anon, env.URL)
				switch {
				case err != nil:
					errs.Store(e.serial, fmt.Sprintf("no answer after the restart: %v", err))
				case a.status != http.StatusCreated:
					errs.Store(e.serial, fmt.Sprintf("token refused on retry after the power cut (spent without its device?): %d %s", a.status, a.code))
				case e.answered && a.chain != e.chain:
					errs.Store(e.serial, fmt.Sprintf("the retry of an acknowledged enrollment got another chain:\n%s\nwant:\n%s", a.chain, e.chain))
				case recorded[e.id] != "" && a.serial != recorded[e.id]:
					errs.Store(e.serial, fmt.Sprintf("the retry of a committed enrollment got certificate %s, not the recorded %s (double issuance)", a.serial, recorded[e.id]))
				default:
					if recorded[e.id] != "" {
						replayed.Add(1)
					} else {
						fresh.Add(1)
					}
					e.answered, e.chain, e.certSerial = true, a.chain, a.serial
				}
			}
		})
	}
	for _, e := range enrollments {
		retry <- e
	}
	close(retry)
	wg.Wait()
	errs.Range(func(k, v any) bool { t.Errorf("%s: %s", k, v); return true })
	if t.Failed() {
		return
	}
	t.Logf("after the restart: %d replays of committed enrollments (%d of them unanswered before the kill), %d fresh enrollments",
		replayed.Load(), int(replayed.Load())-int(acked.Load()), fresh.Load())

	final := env.checkEnrollmentStore(t, admin, enrollments, "after the retries")
	for _, e := range enrollments {
		if final[e.id] != e.certSerial {
			t.Errorf("%s: the store has certificate %q, the device got %s", e.serial, final[e.id], e.certSerial)
		}
	}
	if len(final) != devices {
		t.Errorf("%d devices recorded after every retry succeeded, want %d", len(final), devices)
	}
	if s := env.stations()["line-1"]; s.Used != devices || s.Remaining != 0 {
		t.Errorf("station quota after every device enrolled once: %+v, want used %d, remaining 0", s, devices)
	}
}

// stationEnrollments mints n offline station tokens (as `foster --station
// FILE token create` does, without n processes) and prepares a key and CSR
// for each device.
func stationEnrollments(t *testing.T, stationFile string, n int) []*crashEnrollment {
	t.Helper()
	serials := make([]string, n)
	for i := range serials {
		serials[i] = fmt.Sprintf("SN-%06d", i)
	}
	tokens := stationTokens(t, stationFile, "line-1", "edge-gw", serials, time.Hour)
	out := make([]*crashEnrollment, n)
	for i, serial := range serials {
		id := "urn:foster:device:edge-gw:" + serial
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		u, _ := url.Parse(id)
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: serial}, URIs: []*url.URL{u}}, key)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = &crashEnrollment{serial: serial, id: id, token: tokens[i], keySHA256: ca.PublicKeySHA256(key.Public()),
			csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))}
	}
	return out
}

// stationTokens mints, with the station credential in stationFile (`foster
// station create NAME --out FILE`), one offline enrollment token per serial
// of model, valid for ttl: what `foster --station FILE token create` does,
// without a process per token.
func stationTokens(t *testing.T, stationFile, station, model string, serials []string, ttl time.Duration) []string {
	t.Helper()
	raw, err := os.ReadFile(stationFile)
	if err != nil {
		t.Fatal(err)
	}
	var b struct{ Certificate, Key string }
	if err := json.Unmarshal(raw, &b); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair([]byte(b.Certificate), []byte(b.Key))
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range pair.Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	now := time.Now()
	out := make([]string, len(serials))
	for i, serial := range serials {
		tok, err := x5ctoken.Sign(chain, pair.PrivateKey.(*ecdsa.PrivateKey), x5ctoken.Claims{
			Issuer: "urn:foster:station:" + station, Subject: "urn:foster:device:" + model + ":" + serial, Audience: x5ctoken.EnrollAudience,
			IssuedAt: now, Expiry: now.Add(ttl),
		})
		if err != nil {
			t.Fatal(err)
		}
		out[i] = tok
	}
	return out
}

func (e *Env) adminClient(caPEM []byte) *http.Client {
	e.t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(e.DataDir, "admin.crt"), filepath.Join(e.DataDir, "admin.key"))
	if err != nil {
		e.t.Fatal(err)
	}
	return e.HTTPClient(caPEM, &pair)
}

func (e *Env) getJSON(c *http.Client, path string, v any) {
	e.t.Helper()
	resp, err := c.Get(e.URL + path)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		e.t.Fatalf("GET %s: %d %s", path, resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		e.t.Fatalf("GET %s: %v", path, err)
	}
}

// checkEnrollmentStore checks, through the API and the SQLite file, that
// every enrollment is recorded whole or not at all, and returns each
// recorded device's certificate serial by device id.
func (e *Env) checkEnrollmentStore(t *testing.T, admin *http.Client, all []*crashEnrollment, when string) map[string]string {
	t.Helper()
	byID := map[string]*crashEnrollment{}
	for _, en := range all {
		byID[en.id] = en
	}
	var list []store.Device
	e.getJSON(admin, "/v1/devices", &list)
	recorded := map[string]string{}
	for _, d := range list {
		en := byID[d.ID]
		if en == nil {
			t.Errorf("%s: unknown device %s recorded", when, d.ID)
			continue
		}
		var detail struct {
			store.Device
			Certificates []store.Certificate `json:"certificates"`
		}
		e.getJSON(admin, "/v1/devices/"+url.PathEscape(d.ID), &detail)
		c := detail.Certificates
		if len(c) != 1 || c[0].Serial != d.CertSerial || c[0].KeySHA256 != en.keySHA256 || d.KeySHA256 != en.keySHA256 ||
			!c[0].RevokedAt.IsZero() || c[0].IssuedVia != "station:line-1" || d.Status != store.DeviceActive {
			t.Errorf("%s: partial or double enrollment of %s (want one unrevoked certificate, the device's current one, for the device's key %s): device %+v, certificates %+v",
				when, d.ID, en.keySHA256, d, c)
		}
		recorded[d.ID] = d.CertSerial
	}

	// Spent without its device: every token id and quota unit spent has a
	// device, and every device certificate belongs to a recorded device.
	if s := e.stations()["line-1"]; s.Used != int64(len(recorded)) {
		t.Errorf("%s: station charged %d units for %d devices", when, s.Used, len(recorded))
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(e.DataDir, "foster.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var jtis, certs int
	if err := db.QueryRow(`SELECT count(*) FROM used_token_ids WHERE issuer = 'urn:foster:station:line-1'`).Scan(&jtis); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(`SELECT count(*) FROM certificates WHERE subject LIKE 'urn:foster:device:%'`).Scan(&certs); err != nil {
		t.Fatal(err)
	}
	if jtis != len(recorded) || certs != len(recorded) {
		t.Errorf("%s: %d station token ids spent and %d device certificates recorded for %d devices", when, jtis, certs, len(recorded))
	}
	return recorded
}
