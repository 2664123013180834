// Package tufwalk is the one search for a target through TUF delegations
// that Foster's server (attestation evidence), agent (updates), offline
// verifier (bundles) and publisher share, so that all of them answer "which
// role signs this target?" by the same rules.
//
// The rules are the TUF specification's (client workflow 5.7.7), as go-tuf's
// and python-tuf's updaters implement them: a pre-order depth-first search
// from the top-level targets role; at each role, the target if it lists it,
// else the roles it delegates the target's path to (path patterns, path hash
// prefixes or succinct hashed bins), in order; a terminating delegation
// stops all backtracking (roles still waiting to be visited are dropped); a
// role already visited is not visited again (cycles); besides the top-level
// role, at most maxDelegations roles are visited (a delegation graph is
// attacker-supplied when a delegated role's key is).
//
// What each caller supplies is how a role is loaded: Load must return the
// role's metadata verified against the delegating role (signature threshold,
// version pinned by snapshot, expiry) or an error, which ends the search.
// A role that cannot be loaded is never skipped: skipping it could hide a
// terminating delegation and change the answer (a mix-and-match attack).
package tufwalk

import (
	"errors"
	"fmt"
	"slices"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// DefaultMaxDelegations is go-tuf's and python-tuf's default bound on the
// delegated roles a search visits (their MaxDelegations).
const DefaultMaxDelegations = 32

// ErrNotFound: no role on the search's path lists the target. Callers branch
// on it with errors.Is; any other error is a loading or metadata failure.
var ErrNotFound = errors.New("target not found in signed targets metadata")

// Targets is a targets role's metadata.
type Targets = metadata.Metadata[metadata.TargetsType]

// Loader returns role, delegated by parent and verified against it. The
// top-level role is asked as ("targets", "root").
type Loader func(role, parent string) (*Targets, error)

// Step is one role visited on the way to a target.
type Step struct {
	Role   string
	Parent string
	Meta   *Targets
}

// Found is a search's answer: the target and the chain of roles from the
// top-level targets role (Chain[0]) down to the role that lists it (last).
type Found struct {
	Target *metadata.TargetFiles
	Chain  []Step
}

// Find searches for target by the specification's rules, visiting the
// top-level role and at most maxDelegations delegated roles
// (DefaultMaxDelegations when maxDelegations <= 0), as go-tuf's updater does.
func Find(target string, maxDelegations int, load Loader) (Found, error) {
	if maxDelegations <= 0 {
		maxDelegations = DefaultMaxDelegations
	}
	type visit struct {
		role, parent string
		depth        int // index in chain this role takes
	}
	stack := []visit{{metadata.TARGETS, metadata.ROOT, 0}}
	visited := map[string]bool{}
	// chain[i] is the role at depth i on the path to the role being
	// visited: pre-order DFS keeps that path as a prefix that is cut back
	// to a popped role's depth.
	var chain []Step
	for len(stack) > 0 && len(visited) <= maxDelegations {
		v := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if visited[v.role] {
			continue
		}
		md, err := load(v.role, v.parent)
		if err != nil {
			return Found{}, err // the loader names the role and the failure
		}
		if md == nil {
			return Found{}, fmt.Errorf("loading role %s delegated by %s: no metadata", v.role, v.parent)
		}
		chain = append(chain[:v.depth], Step{Role: v.role, Parent: v.parent, Meta: md})
		if tf, ok := md.Signed.Targets[target]; ok {
			return Found{Target: tf, Chain: slices.Clone(chain)}, nil
		}
		visited[v.role] = true
		d := md.Signed.Delegations
		if d == nil {
			continue
		}
		if s := d.SuccinctRoles; s != nil && (s.BitLength < 1 || s.BitLength > 32) {
			return Found{}, fmt.Errorf("role %s: succinct roles with bit length %d (want 1..32)", v.role, s.BitLength)
		}
		var children []visit
		for _, r := range d.GetRolesForTarget(target) {
			children = append(children, visit{r.Name, v.role, v.depth + 1})
			if r.Terminating {
				stack = nil // no backtracking past a terminating delegation
				break
			}
		}
		slices.Reverse(children)
		stack = append(stack, children...)
	}
	if len(stack) > 0 {
		return Found{}, fmt.Errorf("%w: %s (search stopped after %d delegated roles)", ErrNotFound, target, maxDelegations)
	}
	return Found{}, fmt.Errorf("%w: %s", ErrNotFound, target)
}
