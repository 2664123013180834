package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/foster-ota/foster/pkg/mqtttest"
	"github.com/foster-ota/foster/pkg/nudgemsg"
)

// "Update now" over MQTT with the real fosterd, foster and foster-agent
// binaries and a real Mosquitto (pkg/mqtttest: the machine's broker on
// 127.0.0.1:1883, else a private one). Every test uses a model of its own,
// since the broker may be shared with other test runs.

// newEnvWith starts fosterd with extra flags.
func newEnvWith(t *testing.T, args ...string) *Env {
	t.Helper()
	e := &Env{t: t, DataDir: filepath.Join(t.TempDir(), "foster-data"), Addr: freeAddr(t), logs: &bytes.Buffer{}}
	e.URL = "https://" + e.Addr
	e.StartDaemonWith(args)
	return e
}

func uniqueModel(prefix string) string {
	b := make([]byte, 6)
	rand.Read(b)
	return prefix + "-" + hex.EncodeToString(b)
}

// syncBuffer collects a process's output for reading while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (s *syncBuffer) Count(substr string) int { return strings.Count(s.String(), substr) }

// agentDaemon is `foster-agent run` looping in the background.
type agentDaemon struct {
	dev  *Device
	logs *syncBuffer
}

// StartAgent runs the agent's loop with the file installer and extra flags.
func (d *Device) StartAgent(args ...string) *agentDaemon {
	t := d.env.t
	t.Helper()
	a := &agentDaemon{dev: d, logs: &syncBuffer{}}
	cmd := exec.Command(filepath.Join(binDir, "foster-agent"), append([]string{"--state-dir", d.StateDir, "run",
		"--installer", "file", "--target", d.Firmware}, args...)...)
	cmd.Stdout, cmd.Stderr = a.logs, a.logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("foster-agent %s output:\n%s", d.Serial, a.logs.String())
		}
	})
	return a
}

// waitFor polls cond for up to 90 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (d *Device) installed(want []byte) bool {
	got, err := os.ReadFile(d.Firmware)
	return err == nil && bytes.Equal(got, want)
}

// enrolledDevice: model added, release 1.0.0 published, device enrolled.
func enrolledDevice(t *testing.T, env *Env, model string) (*Device, []byte) {
	t.Helper()
	env.Admin("model", "add", model)
	fw, v1 := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", model, "--version", "1.0.0", fw)
	dev := env.NewDevice("SN-1", model)
	dev.Enroll(env.Token("SN-1", model))
	return dev, v1
}

// An agent polling once an hour installs a newly published release within
// seconds of `foster nudge`; auditors may not nudge.
func TestNudgeInstallsNewReleaseWithinSeconds(t *testing.T) {
	broker := "tcp://" + mqtttest.Broker(t)
	env := newEnvWith(t, "--mqtt-broker", broker)
	model := uniqueModel("nudge")
	dev, v1 := enrolledDevice(t, env, model)
	agent := dev.StartAgent("--interval", "1h", "--nudge-min-interval", "1s", "--mqtt-broker", broker)
	waitFor(t, "the first check to install 1.0.0 and the nudge subscription", func() bool {
		return dev.installed(v1) && agent.logs.Count("listening for update nudges") > 0
	})

	fw2, v2 := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", model, "--version", "1.1.0", fw2)
	start := time.Now()
	out := env.Admin("nudge", "--model", model).Stdout
	if want, _ := nudgemsg.ModelTopic(model); !strings.Contains(out, want) {
		t.Fatalf("foster nudge printed %q, want the topic %s", out, want)
	}
	waitFor(t, "1.1.0 installed after the nudge", func() bool { return dev.installed(v2) })
	t.Logf("installed %v after foster nudge (poll interval 1h)", time.Since(start).Round(time.Millisecond))
	if agent.logs.Count("nudged over MQTT") == 0 {
		t.Fatal("installed, but the agent did not log a nudged check")
	}

	// One device by serial: the device topic.
	env.Admin("nudge", "--model", model, "--serial", dev.Serial)
	waitFor(t, "the device nudge to run a check", func() bool { return agent.logs.Count("nudged over MQTT") >= 2 })
	env.MustFail("not found", "foster", "--instance", env.DataDir, "nudge", "--model", model, "--serial", "SN-NOPE")
	env.MustFail("unknown model", "foster", "--instance", env.DataDir, "nudge", "--model", "no-such-model")

	aud := filepath.Join(t.TempDir(), "aud.cred")
	env.Admin("admin", "create", "aud", "--role", "auditor", "--out", aud)
	env.MustFail("forbidden", "foster", "--cred", aud, "nudge", "--model", model)

	pair, err := tls.LoadX509KeyPair(filepath.Join(env.DataDir, "admin.crt"), filepath.Join(env.DataDir, "admin.key"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, _ := os.ReadFile(filepath.Join(env.DataDir, "ca.pem"))
	resp, err := env.HTTPClient(caPEM, &pair).Get(env.URL + "/v1/audit")
	if err != nil {
		t.Fatal(err)
	}
	var events []struct{ Actor, Action, Detail string }
	json.NewDecoder(resp.Body).Decode(&events)
	resp.Body.Close()
	nudges := 0
	for _, e := range events {
		if e.Action == "nudge" && e.Actor == "urn:foster:admin:admin" {
			nudges++
		}
	}
	if nudges != 2 {
		t.Fatalf("%d nudges by the admin in the audit trail, want 2: %+v", nudges, events)
	}
}

// The attack: anyone who can publish to the broker forges nudges, a flood
// of them, claiming a release that was never signed. The agent only runs
// its ordinary signed check (at most once per --nudge-min-interval), finds
// nothing new, and installs nothing.
func TestForgedNudgeFloodInstallsNothingUnsigned(t *testing.T) {
	broker := "tcp://" + mqtttest.Broker(t)
	env := newEnvWith(t, "--mqtt-broker", broker)
	model := uniqueModel("forged")
	dev, v1 := enrolledDevice(t, env, model)
	agent := dev.StartAgent("--interval", "1h", "--nudge-min-interval", "2s", "--mqtt-broker", broker)
	waitFor(t, "the first check and the nudge subscription", func() bool {
		return dev.installed(v1) && agent.logs.Count("listening for update nudges") > 0
	})
	checksBefore := agent.logs.Count("up to date")
	foundBefore := agent.logs.Count("update available")

	attacker := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(broker).SetClientID(uniqueModel("attacker")))
	if tok := attacker.Connect(); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
		t.Fatalf("attacker connecting: %v", tok.Error())
	}
	defer attacker.Disconnect(100)
	mt, _ := nudgemsg.ModelTopic(model)
	dt, _ := nudgemsg.DeviceTopic(model, dev.Serial)
	forged, _ := nudgemsg.Message{Model: model, Rollout: "ro-forged", Version: "9.9.9", At: time.Now()}.Marshal()
	payloads := [][]byte{forged, []byte(`{"model":"` + model + `","url":"http://evil.example/fw.bin","at":"2026-01-01T00:00:00Z"}`),
		[]byte("install 9.9.9 now"), bytes.Repeat([]byte("A"), 64<<10)}
	start := time.Now()
	for i := range 300 {
		topic := mt
		if i%2 == 1 {
			topic = dt
		}
		if tok := attacker.Publish(topic, 1, false, payloads[i%len(payloads)]); !tok.WaitTimeout(30*time.Second) || tok.Error() != nil {
			t.Fatalf("attacker publishing: %v", tok.Error())
		}
	}
	waitFor(t, "a check caused by the forged nudges", func() bool { return agent.logs.Count("up to date") > checksBefore })
	time.Sleep(3 * time.Second) // let any further (debounced) checks happen
	elapsed := time.Since(start)

	nudged := agent.logs.Count("nudged over MQTT")
	if limit := int(elapsed/(2*time.Second)) + 1; nudged > limit {
		t.Fatalf("%d nudged checks in %v: more than one per 2s (limit %d): a flood makes the agent hammer fosterd", nudged, elapsed.Round(time.Millisecond), limit)
	}
	if !dev.installed(v1) {
		t.Fatal("a forged nudge changed the installed firmware")
	}
	if n := agent.logs.Count("update available"); n != foundBefore {
		t.Fatalf("%d updates found after the forged nudges, want none", n-foundBefore)
	}
	if strings.Contains(agent.logs.String(), "9.9.9") {
		t.Fatal("the forged version reached the agent's decisions or logs")
	}
	t.Logf("%d forged messages: %d nudged checks in %v, nothing installed", 300, nudged, elapsed.Round(time.Millisecond))
}

// Polling stays the source of truth: with its broker unreachable the agent
// still finds and installs releases at its poll interval; a fosterd without
// a broker says so when asked to nudge.
func TestAgentPollsWithBrokerUnreachable(t *testing.T) {
	env := NewEnv(t) // no --mqtt-broker
	model := uniqueModel("nobroker")
	dev, v1 := enrolledDevice(t, env, model)
	env.MustFail("no MQTT broker configured", "foster", "--instance", env.DataDir, "nudge", "--model", model)

	agent := dev.StartAgent("--interval", "2s", "--mqtt-broker", mqtttest.Unreachable(t))
	waitFor(t, "1.0.0 installed by polling", func() bool { return dev.installed(v1) })
	fw2, v2 := writeFirmware(t, 64<<10)
	env.Admin("release", "add", "--model", model, "--version", "1.1.0", fw2)
	waitFor(t, "1.1.0 installed by polling", func() bool { return dev.installed(v2) })
	if n := agent.logs.Count("MQTT broker unreachable"); n > 1 {
		t.Fatalf("logged the unreachable broker %d times, want once", n)
	}
}
