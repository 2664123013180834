package tufwalk

import (
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// role describes one delegated targets role of a test repository: its
// delegations (in order) and whether it lists the target under test.
type role struct {
	name      string
	delegates []delegation
	succinct  *metadata.SuccinctRoles
	lists     bool // lists the target
}

type delegation struct {
	to          string
	paths       []string // default: edge-gw/*
	hashPrefix  []string
	terminating bool
}

const target = "edge-gw/fw-1.2.0.bin"

// hashPrefix is the first character of the SHA-256 of target's path as
// go-tuf v2.4.2 encodes it for path_hash_prefixes: URL-safe base64, where the
// specification and python-tuf use hex. The walker takes go-tuf's matching
// as it is; Foster itself publishes succinct hashed bins (TAP 15), whose
// bin choice all implementations agree on, never path_hash_prefixes.
func hashPrefix(p string) string {
	h := sha256.Sum256([]byte(p))
	return base64.URLEncoding.EncodeToString(h[:])[:1]
}

func otherPrefix(d string) string {
	if d == "A" {
		return "B"
	}
	return "A"
}

// repo is a signed repository built from roles: every role signed by one
// ed25519 key, every role's version 1. The target each role lists has the
// role's index+1 as its length, so an answer names the role it came from.
type repo struct {
	files map[string][]byte // "1.targets.json", "timestamp.json", ...
	roles map[string]*metadata.Metadata[metadata.TargetsType]
	index map[string]int
	root  []byte
}

func buildRepo(t *testing.T, top role, delegated []role) *repo {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := signature.LoadSigner(priv, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	key, err := metadata.KeyFromPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyID, err := key.ID()
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(24 * time.Hour)
	r := &repo{files: map[string][]byte{}, roles: map[string]*metadata.Metadata[metadata.TargetsType]{}, index: map[string]int{}}
	sign := func(name string, md interface {
		Sign(signature.Signer) (*metadata.Signature, error)
		ToBytes(bool) ([]byte, error)
	}) []byte {
		if _, err := md.Sign(signer); err != nil {
			t.Fatal(err)
		}
		b, err := md.ToBytes(false)
		if err != nil {
			t.Fatal(err)
		}
		r.files[name] = b
		return b
	}
	root := metadata.Root(exp)
	for _, rn := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		if err := root.Signed.AddKey(key, rn); err != nil {
			t.Fatal(err)
		}
	}
	r.root = sign("1.root.json", root)
	snap := metadata.Snapshot(exp)
	all := append([]role{top}, delegated...)
	for i, rd := range all {
		md := metadata.Targets(exp)
		r.index[rd.name] = i
		if rd.lists {
			md.Signed.Targets[target] = &metadata.TargetFiles{Length: int64(i + 1), Hashes: metadata.Hashes{"sha256": make([]byte, 32)}, Path: target}
		}
		if len(rd.delegates) > 0 || rd.succinct != nil {
			d := &metadata.Delegations{Keys: map[string]*metadata.Key{keyID: key}}
			for _, dl := range rd.delegates {
				dr := metadata.DelegatedRole{Name: dl.to, KeyIDs: []string{keyID}, Threshold: 1, Terminating: dl.terminating}
				switch {
				case dl.hashPrefix != nil:
					dr.PathHashPrefixes = dl.hashPrefix
				case dl.paths != nil:
					dr.Paths = dl.paths
				default:
					dr.Paths = []string{"edge-gw/*"}
				}
				d.Roles = append(d.Roles, dr)
			}
			if rd.succinct != nil {
				s := *rd.succinct
				s.KeyIDs, s.Threshold = []string{keyID}, 1
				d.SuccinctRoles = &s
			}
			md.Signed.Delegations = d
		}
		r.roles[rd.name] = md
		name := rd.name
		if i == 0 {
			name = metadata.TARGETS
		}
		sign("1."+name+".json", md)
		snap.Signed.Meta[name+".json"] = metadata.MetaFile(1)
	}
	sign("1.snapshot.json", snap)
	ts := metadata.Timestamp(exp)
	ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(1)
	sign("timestamp.json", ts)
	return r
}

// DownloadFile serves the repository to go-tuf's updater.
func (r *repo) DownloadFile(u string, maxLength int64, _ time.Duration) ([]byte, error) {
	b, ok := r.files[u[strings.LastIndex(u, "/")+1:]]
	if !ok {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: http.StatusNotFound, URL: u}
	}
	if int64(len(b)) > maxLength {
		return nil, &metadata.ErrDownloadLengthMismatch{}
	}
	return b, nil
}

// loader loads roles from r, each verified against its delegator, and
// records the order roles were loaded in.
func (r *repo) loader(t *testing.T, order *[]string) Loader {
	return func(name, parent string) (*Targets, error) {
		*order = append(*order, name)
		if name == metadata.TARGETS {
			return r.roles[r.nameOfIndex(0)], nil
		}
		md, ok := r.roles[name]
		if !ok {
			return nil, fmt.Errorf("role %s is not in the repository", name)
		}
		p := r.roles[parent]
		if parent == metadata.TARGETS {
			p = r.roles[r.nameOfIndex(0)]
		}
		if err := p.VerifyDelegate(name, md); err != nil {
			return nil, err
		}
		return md, nil
	}
}

func (r *repo) nameOfIndex(i int) string {
	for n, j := range r.index {
		if j == i {
			return n
		}
	}
	return ""
}

// goTUF asks go-tuf's own updater for the target: the name of the role whose
// entry it returned, or "" when it found none.
func (r *repo) goTUF(t *testing.T, maxDelegations int) string {
	t.Helper()
	cfg, err := config.New("https://repo.invalid/metadata", r.root)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Fetcher, cfg.LocalMetadataDir, cfg.LocalTargetsDir, cfg.MaxDelegations = r, t.TempDir(), t.TempDir(), maxDelegations
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Refresh(); err != nil {
		t.Fatal(err)
	}
	tf, err := up.GetTargetInfo(target)
	if err != nil {
		if !strings.Contains(err.Error(), "not found") {
			t.Fatalf("go-tuf: %v", err)
		}
		return ""
	}
	return r.nameOfIndex(int(tf.Length) - 1)
}

func TestFindAnswersAsTheSpecAndGoTUF(t *testing.T) {
	all := func(to string) delegation { return delegation{to: to} }
	term := func(to string) delegation { return delegation{to: to, terminating: true} }
	chain := func(n int) []role {
		var rs []role
		for i := 0; i < n; i++ {
			rs = append(rs, role{name: fmt.Sprintf("r%d", i), delegates: []delegation{all(fmt.Sprintf("r%d", i+1))}})
		}
		return append(rs, role{name: fmt.Sprintf("r%d", n), lists: true})
	}
	tests := []struct {
		name      string
		top       role
		delegated []role
		max       int
		want      string   // role that lists the answer, "" for not found
		wantChain []string // roles from targets down to want
	}{{
		name:      "listed by the top-level role",
		top:       role{name: "top", lists: true, delegates: []delegation{all("a")}},
		delegated: []role{{name: "a", lists: true}},
		want:      "top", wantChain: []string{"targets"},
	}, {
		name:      "first matching delegation wins",
		top:       role{name: "top", delegates: []delegation{all("a"), all("b")}},
		delegated: []role{{name: "a", lists: true}, {name: "b", lists: true}},
		want:      "a", wantChain: []string{"targets", "a"},
	}, {
		name:      "backtracks past a non-terminating role that lacks it",
		top:       role{name: "top", delegates: []delegation{all("a"), all("b")}},
		delegated: []role{{name: "a"}, {name: "b", lists: true}},
		want:      "b", wantChain: []string{"targets", "b"},
	}, {
		name:      "pre-order: a child of the first role before its sibling",
		top:       role{name: "top", delegates: []delegation{all("a"), all("b")}},
		delegated: []role{{name: "a", delegates: []delegation{all("a1")}}, {name: "a1", lists: true}, {name: "b", lists: true}},
		want:      "a1", wantChain: []string{"targets", "a", "a1"},
	}, {
		name:      "terminating role that lacks it stops the search (no sibling)",
		top:       role{name: "top", delegates: []delegation{term("a"), all("b")}},
		delegated: []role{{name: "a"}, {name: "b", lists: true}},
		want:      "",
	}, {
		name:      "terminating role's own delegations are still searched",
		top:       role{name: "top", delegates: []delegation{term("a"), all("b")}},
		delegated: []role{{name: "a", delegates: []delegation{all("a1")}}, {name: "a1", lists: true}, {name: "b", lists: true}},
		want:      "a1", wantChain: []string{"targets", "a", "a1"},
	}, {
		name: "terminating grandchild drops its uncle too",
		top:  role{name: "top", delegates: []delegation{all("a"), all("b")}},
		delegated: []role{{name: "a", delegates: []delegation{term("a1")}}, {name: "a1"},
			{name: "b", lists: true}},
		want: "",
	}, {
		name:      "path pattern that does not match is not followed",
		top:       role{name: "top", delegates: []delegation{{to: "a", paths: []string{"other/*"}}, all("b")}},
		delegated: []role{{name: "a", lists: true}, {name: "b", lists: true}},
		want:      "b", wantChain: []string{"targets", "b"},
	}, {
		name:      "path pattern that matches is followed",
		top:       role{name: "top", delegates: []delegation{{to: "a", paths: []string{"edge-gw/*"}}, all("b")}},
		delegated: []role{{name: "a", lists: true}, {name: "b", lists: true}},
		want:      "a", wantChain: []string{"targets", "a"},
	}, {
		name: "path hash prefixes",
		top: role{name: "top", delegates: []delegation{
			{to: "a", hashPrefix: []string{otherPrefix(hashPrefix(target))}},
			{to: "b", hashPrefix: []string{hashPrefix(target)}}}},
		delegated: []role{{name: "a", lists: true}, {name: "b", lists: true}},
		want:      "b", wantChain: []string{"targets", "b"},
	}, {
		name: "succinct hashed bins",
		top:  role{name: "top", delegates: []delegation{all("m")}},
		delegated: func() []role {
			rs := []role{{name: "m", succinct: &metadata.SuccinctRoles{BitLength: 2, NamePrefix: "bin"}}}
			s := metadata.SuccinctRoles{BitLength: 2, NamePrefix: "bin"}
			for _, b := range s.GetRoles() {
				rs = append(rs, role{name: b, lists: true})
			}
			return rs
		}(),
		want: (&metadata.SuccinctRoles{BitLength: 2, NamePrefix: "bin"}).GetRolesForTarget(target)[0].Name,
		wantChain: []string{"targets", "m",
			(&metadata.SuccinctRoles{BitLength: 2, NamePrefix: "bin"}).GetRolesForTarget(target)[0].Name},
	}, {
		name:      "cycle without the target ends",
		top:       role{name: "top", delegates: []delegation{all("a")}},
		delegated: []role{{name: "a", delegates: []delegation{all("b")}}, {name: "b", delegates: []delegation{all("a")}}},
		want:      "",
	}, {
		name:      "a chain longer than the bound is not followed to its end",
		top:       role{name: "top", delegates: []delegation{all("r0")}},
		delegated: chain(40),
		max:       32,
		want:      "",
	}, {
		name:      "a chain within the bound is followed",
		top:       role{name: "top", delegates: []delegation{all("r0")}},
		delegated: chain(8),
		max:       32,
		want:      "r8",
		wantChain: []string{"targets", "r0", "r1", "r2", "r3", "r4", "r5", "r6", "r7", "r8"},
	}, {
		name:      "bound is go-tuf's: the top-level role plus max delegated roles",
		top:       role{name: "top", delegates: []delegation{all("r0")}},
		delegated: chain(3),
		max:       4,
		want:      "r3",
		wantChain: []string{"targets", "r0", "r1", "r2", "r3"},
	}, {
		name:      "one fewer than needed",
		top:       role{name: "top", delegates: []delegation{all("r0")}},
		delegated: chain(3),
		max:       3,
		want:      "",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := buildRepo(t, tt.top, tt.delegated)
			max := tt.max
			if max == 0 {
				max = DefaultMaxDelegations
			}
			if got := r.goTUF(t, max); got != tt.want {
				t.Fatalf("go-tuf's updater found %q, the test expects %q: the table is wrong", got, tt.want)
			}
			var order []string
			f, err := Find(target, max, r.loader(t, &order))
			if tt.want == "" {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("Find = %v, %v; want ErrNotFound", f, err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Find: %v (loaded %v)", err, order)
			}
			if got := r.nameOfIndex(int(f.Target.Length) - 1); got != tt.want {
				t.Fatalf("found in %q, want %q (loaded %v)", got, tt.want, order)
			}
			var names []string
			for i, s := range f.Chain {
				names = append(names, s.Role)
				if i > 0 && s.Parent != f.Chain[i-1].Role {
					t.Errorf("chain step %d: parent %q, previous step %q", i, s.Parent, f.Chain[i-1].Role)
				}
			}
			if strings.Join(names, ",") != strings.Join(tt.wantChain, ",") {
				t.Fatalf("chain %v, want %v", names, tt.wantChain)
			}
		})
	}
}

// A role that cannot be loaded ends the search with its error: skipping it
// could hide a terminating delegation that would change the answer.
func TestFindNeverSkipsARoleItCannotLoad(t *testing.T) {
	r := buildRepo(t, role{name: "top", delegates: []delegation{{to: "a", terminating: true}, {to: "b"}}},
		[]role{{name: "a"}, {name: "b", lists: true}})
	delete(r.roles, "a") // e.g. missing from the snapshot, or a bad signature
	var order []string
	_, err := Find(target, 0, r.loader(t, &order))
	if err == nil || errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "role a") {
		t.Fatalf("Find = %v; want the load error of role a", err)
	}
}

// A role signed by a key its delegator did not name is refused by the
// loader, and the search reports that, not a target from it.
func TestFindRefusesARoleSignedByTheWrongKey(t *testing.T) {
	r := buildRepo(t, role{name: "top", delegates: []delegation{{to: "a"}}}, []role{{name: "a", lists: true}})
	_, other, _ := ed25519.GenerateKey(nil)
	s, _ := signature.LoadSigner(other, crypto.Hash(0))
	r.roles["a"].Signatures = nil
	if _, err := r.roles["a"].Sign(s); err != nil {
		t.Fatal(err)
	}
	var order []string
	if _, err := Find(target, 0, r.loader(t, &order)); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("Find = %v; want a verification error", err)
	}
}

// Each role is loaded at most once, even when several delegators name it.
func TestFindLoadsEachRoleOnce(t *testing.T) {
	r := buildRepo(t, role{name: "top", delegates: []delegation{{to: "a"}, {to: "b"}, {to: "c"}}},
		[]role{{name: "a", delegates: []delegation{{to: "b"}}}, {name: "b", delegates: []delegation{{to: "a"}}}, {name: "c", lists: true}})
	var order []string
	f, err := Find(target, 0, r.loader(t, &order))
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(order, ","); got != "targets,a,b,c" {
		t.Fatalf("loaded %s, want targets,a,b,c", got)
	}
	if len(f.Chain) != 2 || f.Chain[1].Role != "c" {
		t.Fatalf("chain %+v", f.Chain)
	}
}
