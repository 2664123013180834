// Package journal is the device agent's crash-safe install state machine,
// persisted in DIR/state.json. Every transition is written (temp file, fsync,
// rename, directory fsync) before the side effect it announces, so that after
// a power cut the agent knows exactly what it was doing and can resume or
// abandon it:
//
//	idle | committed -> downloading -> verified -> installing -> committed
//	downloading | verified | installing -> idle   (failure: pending work abandoned)
//
// "committed" and "idle" are both at rest; committed means the last install
// succeeded. A Journal is not safe for concurrent use; the state dir lock
// (statedir.Layout.Lock) keeps other processes out.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/foster-ota/foster/client/internal/statedir"
	"github.com/foster-ota/foster/pkg/atomicfile"
)

// Phase is a state of the install state machine.
type Phase string

const (
	PhaseIdle        Phase = "idle"
	PhaseDownloading Phase = "downloading"
	PhaseVerified    Phase = "verified"
	PhaseInstalling  Phase = "installing"
	PhaseCommitted   Phase = "committed"
)

// transitions is the whole state machine.
var transitions = map[Phase][]Phase{
	PhaseIdle:        {PhaseDownloading},
	PhaseCommitted:   {PhaseDownloading},
	PhaseDownloading: {PhaseVerified, PhaseIdle},
	PhaseVerified:    {PhaseInstalling, PhaseIdle},
	PhaseInstalling:  {PhaseCommitted, PhaseIdle},
}

// FormatVersion is the state.json format this package writes.
const FormatVersion = 1

// maxStateFile bounds state.json.
const maxStateFile = 1 << 20 // bytes

// ErrBadTransition is returned for a transition the state machine does not allow.
var ErrBadTransition = errors.New("invalid state transition")

// Target identifies a firmware target as signed in TUF metadata.
type Target struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"` // hex
	// SHA512 is set when the signed metadata lists one (hex).
	SHA512         string `json:"sha512,omitempty"`
	Length         int64  `json:"length"` // bytes
	Version        string `json:"version,omitempty"`
	ReleaseCounter int64  `json:"release_counter"`
}

// Pending is the install in flight.
type Pending struct {
	Target Target `json:"target"`
	// TargetsVersion and SnapshotVersion are the TUF versions the target was selected from.
	TargetsVersion  int64 `json:"targets_version"`
	SnapshotVersion int64 `json:"snapshot_version"`
	// Installer and Staged say which installer the install was for and where the
	// image is downloaded to, so a resumed run can tell whether it still applies.
	Installer string    `json:"installer"`
	Staged    string    `json:"staged"`
	Since     time.Time `json:"since"`
}

// Attestation is an install outcome whose sequence number is reserved but
// whose envelope is not in the outbox yet. It is persisted in the same write
// as the outcome so a crash between the two cannot lose the attestation.
type Attestation struct {
	Sequence        int64     `json:"sequence"`
	Previous        *Target   `json:"previous,omitempty"`
	New             Target    `json:"new"`
	TargetsVersion  int64     `json:"targets_version"`
	SnapshotVersion int64     `json:"snapshot_version"`
	Outcome         string    `json:"outcome"`
	Reason          string    `json:"reason,omitempty"`
	Time            time.Time `json:"time"`
}

// State is the content of state.json.
type State struct {
	Format    int     `json:"format"`
	Phase     Phase   `json:"phase"`
	Installed *Target `json:"installed,omitempty"`
	// Pending is set in downloading, verified and installing.
	Pending *Pending `json:"pending,omitempty"`
	// AttestSequence is the last attestation sequence number used (monotonic per device).
	AttestSequence int64 `json:"attest_sequence"`
	// Unqueued lists attestations whose envelope must still be signed and queued.
	Unqueued    []Attestation `json:"unqueued_attestations,omitempty"`
	LastCheck   time.Time     `json:"last_check,omitzero"`
	LastError   string        `json:"last_error,omitempty"`
	LastErrorAt time.Time     `json:"last_error_at,omitzero"`
	UpdatedAt   time.Time     `json:"updated_at,omitzero"`
}

// Journal owns state.json.
type Journal struct {
	path string
	now  func() time.Time
	st   State
}

// Open loads path, or starts idle when it does not exist.
func Open(path string) (*Journal, error) {
	j := &Journal{path: path, now: time.Now, st: State{Format: FormatVersion, Phase: PhaseIdle}}
	st, err := Read(path)
	if errors.Is(err, os.ErrNotExist) {
		return j, nil
	}
	if err != nil {
		return nil, err
	}
	j.st = *st
	return j, nil
}

// Read parses and validates path without opening a journal (for status).
func Read(path string) (*State, error) {
	b, err := statedir.ReadBounded(path, maxStateFile)
	if err != nil {
		return nil, err
	}
	var st State
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("parsing %s: %w", path, err)
	}
	if err := st.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &st, nil
}

func (st *State) validate() error {
	if st.Format != FormatVersion {
		return fmt.Errorf("unsupported state format %d (this agent writes %d)", st.Format, FormatVersion)
	}
	if _, ok := transitions[st.Phase]; !ok {
		return fmt.Errorf("unknown phase %q", st.Phase)
	}
	inFlight := st.Phase == PhaseDownloading || st.Phase == PhaseVerified || st.Phase == PhaseInstalling
	if inFlight != (st.Pending != nil) {
		return fmt.Errorf("phase %s with pending=%v is inconsistent", st.Phase, st.Pending != nil)
	}
	return nil
}

// State returns a deep copy of the current state: mutating it (or the
// argument of a mutate func) never touches the persisted state by accident.
func (j *Journal) State() State {
	st := j.st
	st.Unqueued = append([]Attestation(nil), j.st.Unqueued...)
	if st.Installed != nil {
		t := *st.Installed
		st.Installed = &t
	}
	if st.Pending != nil {
		p := *st.Pending
		st.Pending = &p
	}
	return st
}

// Transition moves to phase to after applying mutate, and persists the result
// before returning. On error the in-memory state is unchanged.
func (j *Journal) Transition(to Phase, mutate func(*State)) error {
	from := j.st.Phase
	allowed := false
	for _, p := range transitions[from] {
		allowed = allowed || p == to
	}
	if !allowed {
		return fmt.Errorf("%w: %s -> %s", ErrBadTransition, from, to)
	}
	return j.Update(func(st *State) {
		st.Phase = to
		if mutate != nil {
			mutate(st)
		}
	})
}

// Update applies mutate without a phase change (bookkeeping: last check,
// errors, queued attestations) and persists it.
func (j *Journal) Update(mutate func(*State)) error {
	next := j.State()
	mutate(&next)
	next.Format = FormatVersion
	next.UpdatedAt = j.now().UTC()
	if err := next.validate(); err != nil {
		return fmt.Errorf("refusing to write state: %w", err)
	}
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(j.path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("persisting state: %w", err)
	}
	j.st = next
	return nil
}
