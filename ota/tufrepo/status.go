package tufrepo

import (
	"time"
)

// Status summarises the published repository for operators.
type Status struct {
	Versions struct {
		Root      int64 `json:"root"`
		Targets   int64 `json:"targets"`
		Snapshot  int64 `json:"snapshot"`
		Timestamp int64 `json:"timestamp"`
	} `json:"versions"`
	Expires struct {
		Root      time.Time `json:"root"`
		Targets   time.Time `json:"targets"`
		Snapshot  time.Time `json:"snapshot"`
		Timestamp time.Time `json:"timestamp"`
	} `json:"expires"`
	// Keys are the key IDs and threshold root assigns to each top-level role.
	Keys map[string]RoleKeys `json:"keys"`
	// Held are the roles this server can sign (its online keys).
	Held   []string `json:"held_keys"`
	Models []string `json:"models"`
	// Roles are the targets roles (top-level, model roles, bins).
	Roles         []RoleInfo `json:"roles"`
	Targets       int        `json:"targets"`
	SnapshotBytes int        `json:"snapshot_bytes"`
}

// RoleKeys are a role's trusted key IDs and threshold.
type RoleKeys struct {
	KeyIDs    []string `json:"keyids"`
	Threshold int      `json:"threshold"`
}

// Status returns the repository's status.
func (r *Repo) Status() Status {
	st := r.cur.Load()
	var s Status
	s.Versions.Root, s.Versions.Targets, s.Versions.Snapshot, s.Versions.Timestamp = st.root.Signed.Version, st.targets().Signed.Version, st.snapshot.Signed.Version, st.timestamp.Signed.Version
	s.Expires.Root, s.Expires.Targets, s.Expires.Snapshot, s.Expires.Timestamp = st.root.Signed.Expires, st.targets().Signed.Expires, st.snapshot.Signed.Expires, st.timestamp.Signed.Expires
	s.Keys = map[string]RoleKeys{}
	for _, role := range topRoles {
		rr := st.root.Signed.Roles[role]
		s.Keys[role] = RoleKeys{KeyIDs: rr.KeyIDs, Threshold: rr.Threshold}
		if len(r.sig.Load().ring.forRole(role, rr.KeyIDs)) > 0 {
			s.Held = append(s.Held, role)
		}
	}
	s.Models = r.Models()
	s.Roles = r.Roles()
	for _, ri := range s.Roles {
		s.Targets += ri.Targets
	}
	s.SnapshotBytes = len(st.snapshotRaw)
	return s
}
