package atomicfile

import (
	"os"
	"path/filepath"
	"testing"
)

// A power cut anywhere inside WritePair leaves, after RecoverPair, either
// the old pair or the new pair, never a new key beside an old certificate.
func TestPairSwitchInterruptedByPowerCutNeverMixesCertAndKey(t *testing.T) {
	tests := []struct {
		name    string
		crash   func(cert, key string) // the state a power cut left
		wantNew bool
	}{
		{"before anything", func(cert, key string) {}, false},
		{"after KEY.next", func(cert, key string) {
			must(t, WriteFile(key+nextSuffix, []byte("new key"), 0o600))
		}, false},
		{"after CERT.next", func(cert, key string) {
			must(t, WriteFile(key+nextSuffix, []byte("new key"), 0o600))
			must(t, WriteFile(cert+nextSuffix, []byte("new cert"), 0o644))
		}, true},
		{"after the key rename", func(cert, key string) {
			must(t, WriteFile(key, []byte("new key"), 0o600))
			must(t, WriteFile(cert+nextSuffix, []byte("new cert"), 0o644))
		}, true},
		{"after both renames", func(cert, key string) {
			must(t, WriteFile(key, []byte("new key"), 0o600))
			must(t, WriteFile(cert, []byte("new cert"), 0o644))
		}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cert, key := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
			must(t, WriteFile(cert, []byte("old cert"), 0o644))
			must(t, WriteFile(key, []byte("old key"), 0o600))
			tt.crash(cert, key)
			must(t, RecoverPair(cert, key))
			c, _ := os.ReadFile(cert)
			k, _ := os.ReadFile(key)
			want := [2]string{"old cert", "old key"}
			if tt.wantNew {
				want = [2]string{"new cert", "new key"}
			}
			if got := [2]string{string(c), string(k)}; got != want {
				t.Fatalf("after recovery: %q, want %q", got, want)
			}
			for _, p := range []string{cert + nextSuffix, key + nextSuffix} {
				if _, err := os.Stat(p); !os.IsNotExist(err) {
					t.Fatalf("%s left behind", p)
				}
			}
			if st, _ := os.Stat(key); st.Mode().Perm() != 0o600 {
				t.Fatalf("key mode %v", st.Mode().Perm())
			}
		})
	}
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "a.crt"), filepath.Join(dir, "a.key")
	must(t, WritePair(cert, []byte("c"), key, []byte("k")))
	if c, _ := os.ReadFile(cert); string(c) != "c" {
		t.Fatalf("WritePair wrote %q", c)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
