// Package journal is the device agent's crash-safe install state machine,
// persisted in DIR/state.json. Every transition is written (temp file, fsync,
// rename, directory fsync) before the side effect it announces, so that after
// a power cut the agent knows exactly what it was doing and resumes it or
// rolls it back. The whole machine is the transitions table:
//
//	idle | attested -> downloading -> verified -> installing -> rebooting -> health-check -> committed -> attested
//	                   (abandon) -> idle                       \____________/              \-> rolled-back -> attested
//
//	downloading  streaming the target to its staging place; Pending.Downloaded is the durable resume offset
//	verified     the staged bytes match the signed length and hashes
//	installing   the installer activates the image (idempotent: repeated after a crash)
//	rebooting    a reboot into the new image was requested (Pending.BootID tells whether it happened)
//	health-check the new image runs; the configured health check decides
//	committed    decision to keep the new image; the installer's commit is (re)applied, then attested
//	rolled-back  decision to return to the old image; the installer's rollback (and a reboot) is (re)applied
//	attested     at rest: the outcome's attestation is reserved in the same write (Unqueued) and then queued
//
// "idle" is the state of a device that never installed anything or abandoned
// a download; nothing on the device changed. A Journal is not safe for
// concurrent use; the state dir lock (statedir.Layout.Lock) keeps other
// processes out.
package journal

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/foster-ota/foster/client/internal/killpoint"
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
	PhaseRebooting   Phase = "rebooting"
	PhaseHealthCheck Phase = "health-check"
	PhaseCommitted   Phase = "committed"
	PhaseRolledBack  Phase = "rolled-back"
	PhaseAttested    Phase = "attested"
)

// transitions is the whole state machine.
var transitions = map[Phase][]Phase{
	PhaseIdle:        {PhaseDownloading},
	PhaseAttested:    {PhaseDownloading},
	PhaseDownloading: {PhaseVerified, PhaseIdle},
	PhaseVerified:    {PhaseInstalling, PhaseIdle},
	PhaseInstalling:  {PhaseRebooting, PhaseHealthCheck, PhaseRolledBack},
	PhaseRebooting:   {PhaseHealthCheck, PhaseRolledBack},
	PhaseHealthCheck: {PhaseCommitted, PhaseRolledBack},
	PhaseCommitted:   {PhaseAttested, PhaseRolledBack},
	PhaseRolledBack:  {PhaseAttested},
}

// Allowed reports whether from -> to is a transition of the machine.
func Allowed(from, to Phase) bool { return slices.Contains(transitions[from], to) }

// InFlight reports whether p carries a pending install.
func (p Phase) InFlight() bool { return p != PhaseIdle && p != PhaseAttested }

// FormatVersion is the state.json format this package writes. Format 1 (the
// walking skeleton) is read and upgraded.
const FormatVersion = 2

// maxStateFile bounds state.json.
const maxStateFile = 1 << 20 // bytes

// MaxFailed bounds State.Failed.
const MaxFailed = 16

// MaxNotOffered bounds State.NotOffered.
const MaxNotOffered = 4

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
	// Installer names the installer the install is for; a resumed run with
	// another installer configured abandons (before installing) or finishes
	// with what was journalled.
	Installer string `json:"installer"`
	// Staged is where the download is streamed; Image is where the verified
	// image is handed to the installer (the same unless promoted by rename).
	Staged string `json:"staged"`
	Image  string `json:"image,omitempty"`
	// InPlace: Staged is a slot written in place (a partition); it is never
	// removed or created, only overwritten.
	InPlace bool `json:"in_place,omitempty"`
	// Downloaded is how many bytes of Staged are durable (fsynced): where a
	// resumed download continues with an HTTP Range request.
	Downloaded int64 `json:"downloaded,omitempty"`
	// From and To name what ran before and what will run (A/B slot names).
	From string `json:"from,omitempty"`
	To   string `json:"to,omitempty"`
	// BootID is the boot id when the last reboot was requested, Reboots how
	// many reboots the current phase requested.
	BootID  string `json:"boot_id,omitempty"`
	Reboots int    `json:"reboots,omitempty"`
	// BootCount is the bootloader's boot counter when the outcome was decided.
	BootCount int64 `json:"boot_count,omitempty"`
	// Reason says why the install was rolled back.
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since"`
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
	BootCounter     int64     `json:"boot_counter,omitempty"`
	Time            time.Time `json:"time"`
}

// Seen is the newest TUF metadata the device ever trusted. It is a second
// rollback floor next to go-tuf's cache: losing or corrupting the cache must
// not let older signed metadata back in.
type Seen struct {
	Root      int64 `json:"root,omitempty"`
	Timestamp int64 `json:"timestamp,omitempty"`
	Snapshot  int64 `json:"snapshot,omitempty"`
	Targets   int64 `json:"targets,omitempty"`
}

// Clock is the device's trusted-time floor (client/internal/clock).
type Clock struct {
	// Floor is the newest time the device has evidence for (never decreases).
	Floor time.Time `json:"floor,omitzero"`
	// BootID and Uptime are the boot and the uptime (seconds) when Floor was
	// recorded: within the same boot, time since then is known to have passed.
	BootID string  `json:"boot_id,omitempty"`
	Uptime float64 `json:"uptime,omitempty"`
}

// State is the content of state.json.
type State struct {
	Format    int     `json:"format"`
	Phase     Phase   `json:"phase"`
	Installed *Target `json:"installed,omitempty"`
	// Pending is set in every in-flight phase.
	Pending *Pending `json:"pending,omitempty"`
	// AttestSequence is the last attestation sequence number used (monotonic per device).
	AttestSequence int64 `json:"attest_sequence"`
	// Unqueued lists attestations whose envelope must still be signed and queued.
	Unqueued []Attestation `json:"unqueued_attestations,omitempty"`
	// Failed lists the sha256 of targets that were rolled back, newest last
	// (at most MaxFailed): the same image is not tried again.
	Failed []string `json:"failed,omitempty"`
	// NotOffered says why the last check passed over newer releases: their
	// signed rollout terms do not offer them to this device (newest first,
	// at most MaxNotOffered).
	NotOffered  []string  `json:"not_offered,omitempty"`
	Seen        Seen      `json:"seen_metadata,omitzero"`
	Clock       Clock     `json:"clock,omitzero"`
	LastCheck   time.Time `json:"last_check,omitzero"`
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
	UpdatedAt   time.Time `json:"updated_at,omitzero"`
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

// SetClock sets the clock used for UpdatedAt (the agent's trusted clock).
func (j *Journal) SetClock(now func() time.Time) { j.now = now }

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
	if st.Format == 1 {
		// The walking skeleton rested in "committed" once attested.
		if st.Phase == PhaseCommitted && st.Pending == nil {
			st.Phase = PhaseAttested
		}
		if st.Pending != nil && st.Pending.Image == "" {
			st.Pending.Image = st.Pending.Staged
		}
		st.Format = FormatVersion
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
	if st.Phase.InFlight() != (st.Pending != nil) {
		return fmt.Errorf("phase %s with pending=%v is inconsistent", st.Phase, st.Pending != nil)
	}
	if len(st.Failed) > MaxFailed {
		return fmt.Errorf("%d failed targets recorded, at most %d", len(st.Failed), MaxFailed)
	}
	if len(st.NotOffered) > MaxNotOffered {
		return fmt.Errorf("%d releases recorded as not offered, at most %d", len(st.NotOffered), MaxNotOffered)
	}
	return nil
}

// State returns a deep copy of the current state: mutating it (or the
// argument of a mutate func) never touches the persisted state by accident.
func (j *Journal) State() State {
	st := j.st
	st.Unqueued = slices.Clone(j.st.Unqueued)
	st.Failed = slices.Clone(j.st.Failed)
	st.NotOffered = slices.Clone(j.st.NotOffered)
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
	if !Allowed(from, to) {
		return fmt.Errorf("%w: %s -> %s", ErrBadTransition, from, to)
	}
	killpoint.Hit("journal-before:" + string(to))
	err := j.Update(func(st *State) {
		st.Phase = to
		if mutate != nil {
			mutate(st)
		}
	})
	if err == nil {
		killpoint.Hit("journal:" + string(to))
	}
	return err
}

// Update applies mutate without a phase change (bookkeeping: progress, last
// check, errors, queued attestations) and persists it.
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

// AddFailed returns failed with sha appended, keeping at most MaxFailed.
func AddFailed(failed []string, sha string) []string {
	failed = slices.DeleteFunc(slices.Clone(failed), func(s string) bool { return s == sha })
	failed = append(failed, sha)
	if len(failed) > MaxFailed {
		failed = failed[len(failed)-MaxFailed:]
	}
	return failed
}
