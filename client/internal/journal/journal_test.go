package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

func pending() *Pending {
	return &Pending{Target: Target{Name: "m/1/fw", SHA256: strings.Repeat("ab", 32), Length: 1, ReleaseCounter: 1}, Installer: "file", Staged: "/x.unverified"}
}

func TestTransitionTable(t *testing.T) {
	tests := []struct {
		name    string
		path    []Phase
		wantErr bool
	}{
		{"file install", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseHealthCheck, PhaseCommitted, PhaseAttested, PhaseDownloading}, false},
		{"a/b install", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseRebooting, PhaseHealthCheck, PhaseCommitted, PhaseAttested}, false},
		{"health check fails", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseRebooting, PhaseHealthCheck, PhaseRolledBack, PhaseAttested}, false},
		{"bootloader fell back", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseRebooting, PhaseRolledBack, PhaseAttested}, false},
		{"fell back before commit applied", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseHealthCheck, PhaseCommitted, PhaseRolledBack, PhaseAttested}, false},
		{"install fails", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseRolledBack, PhaseAttested}, false},
		{"download fails", []Phase{PhaseDownloading, PhaseIdle}, false},
		{"staged image rots", []Phase{PhaseDownloading, PhaseVerified, PhaseIdle}, false},
		{"install unverified", []Phase{PhaseDownloading, PhaseInstalling}, true},
		{"commit without health check", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseCommitted}, true},
		{"forget an install", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseIdle}, true},
		{"un-roll-back", []Phase{PhaseDownloading, PhaseVerified, PhaseInstalling, PhaseRolledBack, PhaseCommitted}, true},
		{"attest without outcome", []Phase{PhaseDownloading, PhaseVerified, PhaseAttested}, true},
		{"skip download", []Phase{PhaseVerified}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			j, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			var last error
			for _, p := range tt.path {
				last = j.Transition(p, func(s *State) {
					switch p {
					case PhaseDownloading:
						s.Pending = pending()
					case PhaseIdle, PhaseAttested:
						s.Pending = nil
					}
				})
				if last != nil {
					break
				}
			}
			if tt.wantErr != errors.Is(last, ErrBadTransition) {
				t.Fatalf("err = %v, wantErr %v", last, tt.wantErr)
			}
			// What is on disk is what the journal holds.
			st, err := Read(path)
			if errors.Is(err, os.ErrNotExist) {
				st = &State{Phase: PhaseIdle} // nothing ever written
			} else if err != nil {
				t.Fatal(err)
			}
			if st.Phase != j.State().Phase {
				t.Fatalf("disk %s, memory %s", st.Phase, j.State().Phase)
			}
		})
	}
}

func TestUpdateRefusesInconsistentStateAndKeepsOld(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	j, _ := Open(path)
	if err := j.Transition(PhaseDownloading, nil); err == nil { // no pending
		t.Fatal("downloading without pending accepted")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("refused state was written")
	}
	if j.State().Phase != PhaseIdle {
		t.Fatal("memory state changed")
	}
}

// A reader must only ever see a complete old or complete new state.json,
// never a torn write, and no temp files may be left behind.
func TestStateFileIsWrittenAtomically(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	big := strings.Repeat("x", 200<<10) // a state larger than one write() makes torn reads likely without rename
	if err := j.Update(func(s *State) { s.LastError = big }); err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var torn atomic.Int64
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				b, err := os.ReadFile(path)
				if err != nil {
					torn.Add(1)
					continue
				}
				var st State
				if json.Unmarshal(b, &st) != nil || len(st.LastError) != len(big) {
					torn.Add(1)
				}
			}
		}()
	}
	for i := int64(1); i <= 40; i++ {
		if err := j.Update(func(s *State) { s.AttestSequence = i }); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if n := torn.Load(); n != 0 {
		t.Fatalf("%d reads saw a missing or partial state file", n)
	}
	st, err := Read(path)
	if err != nil || st.AttestSequence != 40 {
		t.Fatalf("final state %+v %v", st, err)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 {
		t.Fatalf("leftover files: %v", ents)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", fi.Mode().Perm())
	}
}

func TestReadRejectsCorruptState(t *testing.T) {
	tests := map[string]string{
		"not json":         `{"format":2,"phase":"idle"`,
		"unknown phase":    `{"format":2,"phase":"flashing"}`,
		"future format":    `{"format":3,"phase":"idle"}`,
		"pending mismatch": `{"format":2,"phase":"installing"}`,
		"pending at rest":  `{"format":2,"phase":"attested","pending":{"installer":"file"}}`,
		"too many failed":  `{"format":2,"phase":"idle","failed":["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16","17"]}`,
	}
	for name, content := range tests {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "state.json")
			os.WriteFile(path, []byte(content), 0o600)
			if _, err := Open(path); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// The walking skeleton's state.json (format 1, resting in "committed") is
// read as format 2 (resting in "attested").
func TestReadUpgradesFormat1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state.json")
	os.WriteFile(path, []byte(`{"format":1,"phase":"committed","installed":{"name":"m/1/fw","sha256":"ab","length":1,"release_counter":3},"attest_sequence":4}`), 0o600)
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st := j.State()
	if st.Phase != PhaseAttested || st.Installed.ReleaseCounter != 3 || st.AttestSequence != 4 {
		t.Fatalf("%+v", st)
	}
	if err := j.Transition(PhaseDownloading, func(s *State) { s.Pending = pending() }); err != nil {
		t.Fatal(err)
	}
}

func TestAddFailedIsBounded(t *testing.T) {
	var f []string
	for i := range 40 {
		f = AddFailed(f, fmt.Sprint(i%20))
	}
	if len(f) != MaxFailed || f[len(f)-1] != "19" {
		t.Fatalf("%v", f)
	}
}

// state.json may be damaged by a failing flash: any bytes are either a
// valid state or an error, never a panic.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"format":2,"phase":"attested","installed":{"name":"m/1/fw","sha256":"ab","length":1,"release_counter":3}}`))
	f.Add([]byte(`{"format":2,"phase":"downloading","pending":{"target":{"name":"x"},"installer":"ab","staged":"/dev/b","in_place":true,"downloaded":4096}}`))
	f.Add([]byte(`{"format":1,"phase":"committed"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "state.json")
		os.WriteFile(p, b, 0o600)
		st, err := Read(p)
		if err == nil && st.Phase.InFlight() != (st.Pending != nil) {
			t.Fatalf("inconsistent state accepted: %+v", st)
		}
	})
}
