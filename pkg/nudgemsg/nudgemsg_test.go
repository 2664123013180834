package nudgemsg

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	m := Message{Model: "sensor-v2", Rollout: "ro-0123456789ab", Version: "1.2.3", At: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if got != m {
		t.Fatalf("round trip: got %+v, want %+v", got, m)
	}
}

func TestParseRefusesMalformedAndOversized(t *testing.T) {
	tests := []struct {
		name string
		in   string
	}{
		{"empty", ""},
		{"not json", "update now!"},
		{"array", `["sensor"]`},
		{"no model", `{"at":"2026-01-02T03:04:05Z"}`},
		{"no time", `{"model":"sensor"}`},
		{"bad model", `{"model":"../etc","at":"2026-01-02T03:04:05Z"}`},
		{"wildcard model", `{"model":"#","at":"2026-01-02T03:04:05Z"}`},
		{"unknown field", `{"model":"sensor","at":"2026-01-02T03:04:05Z","url":"http://evil/fw.bin"}`},
		{"trailing data", `{"model":"sensor","at":"2026-01-02T03:04:05Z"}{"model":"x"}`},
		{"bad time", `{"model":"sensor","at":"yesterday"}`},
		{"long hint", `{"model":"sensor","version":"` + strings.Repeat("v", 129) + `","at":"2026-01-02T03:04:05Z"}`},
		{"control chars in hint", `{"model":"sensor","rollout":"a\u001b[31m","at":"2026-01-02T03:04:05Z"}`},
		{"oversized", `{"model":"sensor","at":"2026-01-02T03:04:05Z"}` + strings.Repeat(" ", MaxSize)},
		{"endless", strings.Repeat("[", 1<<20)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := Parse([]byte(tt.in)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%.60q) = %v, want ErrInvalid", tt.in, err)
			}
		})
	}
}

func TestMarshalRefusesInvalid(t *testing.T) {
	if _, err := (Message{Model: "a b", At: time.Now()}).Marshal(); !errors.Is(err, ErrInvalid) {
		t.Fatalf("got %v, want ErrInvalid", err)
	}
}

func TestTopics(t *testing.T) {
	if got, err := ModelTopic("sensor-v2"); err != nil || got != "foster/v1/models/sensor-v2/nudge" {
		t.Fatalf("ModelTopic = %q, %v", got, err)
	}
	if got, err := DeviceTopic("sensor-v2", "SN.001"); err != nil || got != "foster/v1/devices/sensor-v2:SN.001/nudge" {
		t.Fatalf("DeviceTopic = %q, %v", got, err)
	}
	for _, bad := range []string{"", "a/b", "+", "#", "a:b", strings.Repeat("x", 65)} {
		if _, err := ModelTopic(bad); err == nil {
			t.Errorf("ModelTopic(%q) accepted", bad)
		}
		if _, err := DeviceTopic("m", bad); err == nil {
			t.Errorf("DeviceTopic(m, %q) accepted", bad)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"model":"sensor","rollout":"ro-1","version":"1.0","at":"2026-01-02T03:04:05Z"}`))
	f.Add([]byte(`{"model":"sensor","at":"2026-01-02T03:04:05Z"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		if _, err := m.Marshal(); err != nil {
			t.Fatalf("parsed message %+v does not marshal: %v", m, err)
		}
	})
}
