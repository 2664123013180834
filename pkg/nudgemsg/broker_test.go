package nudgemsg

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Bad broker settings are refused with a message naming what is wrong, the
// same for fosterd and the agent.
func TestBrokerSettingsAreCheckedAlike(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		broker, ca, cert, key, want string
	}{
		{"tcp://127.0.0.1:1883", "", "", "", ""},
		{"mqtts://broker.example:8883", "", "", "", ""},
		{"ssl://broker.example:8883", notPEM, "", "", "no PEM certificate"},
		{"tls://broker.example:8883", filepath.Join(dir, "missing.pem"), "", "", "MQTT broker CA"},
		{"ssl://broker.example:8883", "", "c.pem", "", "given together"},
		{"tcp://127.0.0.1:1883", notPEM, "", "", "plain tcp://"},
		{"http://127.0.0.1:1883", "", "", "", `scheme "http"`},
		{"tcp://127.0.0.1", "", "", "", "want tcp://HOST:PORT"},
		{"", "", "", "", "want tcp://HOST:PORT"},
	} {
		_, err := ClientOptions(tc.broker, tc.ca, tc.cert, tc.key)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.broker, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s (ca %q cert %q): err %v, want %q", tc.broker, tc.ca, tc.cert, err, tc.want)
		}
		if tc.ca == "" && tc.cert == "" {
			if cerr := CheckBroker(tc.broker); (cerr == nil) != (err == nil) {
				t.Errorf("%s: CheckBroker %v, ClientOptions %v", tc.broker, cerr, err)
			}
		}
	}
}
