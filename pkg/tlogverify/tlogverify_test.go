package tlogverify_test

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/transparency-dev/merkle/rfc6962"
	"github.com/transparency-dev/merkle/testonly"
	"golang.org/x/mod/sumdb/note"

	"github.com/foster-ota/foster/pkg/tlogverify"
)

// Throwaway test keys (fixed so the fuzz corpus verifies). Never use elsewhere.
const (
	testOrigin = "foster.test/log"
	testSKey   = "PRIVATE+KEY+foster.test/log+f4152ea6+AW9tsXrjbyD0kdkXcwMmXhqH677TYAN4M/OVz37NfqbY"
	testVKey   = "foster.test/log+f4152ea6+AWzsSbn5RF1sVaSwxgnofPAQeKbrTnblFYiavgS7t9tw"
	// A second key with the same name: an attacker's key for the same origin.
	otherSKey = "PRIVATE+KEY+foster.test/log+9bf29259+Ab48O1PKmU+1kr9nNnBe9w06BxEWuOGRAsYUtd3BX9oW"
)

func signer(t testing.TB, skey string) note.Signer {
	t.Helper()
	s, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func verifier(t testing.TB) note.Verifier {
	t.Helper()
	v, err := note.NewVerifier(testVKey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// signBody signs an arbitrary checkpoint body.
func signBody(t testing.TB, skey, body string) []byte {
	t.Helper()
	cp, err := note.Sign(&note.Note{Text: body}, signer(t, skey))
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

func body(origin string, size uint64, root []byte) string {
	return fmt.Sprintf("%s\n%d\n%s\n", origin, size, base64.StdEncoding.EncodeToString(root))
}

// tree builds a reference tree of n leaves "leaf-0", "leaf-1", ...
func tree(n int) *testonly.Tree {
	tr := testonly.New(rfc6962.DefaultHasher)
	for i := range n {
		tr.AppendData(leaf(i))
	}
	return tr
}

func leaf(i int) []byte { return fmt.Appendf(nil, "leaf-%d", i) }

func checkpoint(tr *testonly.Tree, size uint64) tlogverify.Checkpoint {
	return tlogverify.Checkpoint{Origin: testOrigin, Size: int64(size), Root: tr.HashAt(size)}
}

func TestParseCheckpointAcceptsLogSignedCheckpoint(t *testing.T) {
	tr := tree(5)
	cp, err := tlogverify.ParseCheckpoint(signBody(t, testSKey, body(testOrigin, 5, tr.Hash())), verifier(t))
	if err != nil {
		t.Fatal(err)
	}
	if cp.Origin != testOrigin || cp.Size != 5 || string(cp.Root) != string(tr.Hash()) {
		t.Fatalf("parsed %+v", cp)
	}
	// C2SP allows extension lines and extra signatures (witness cosignatures).
	ext := signBody(t, testSKey, body(testOrigin, 5, tr.Hash())+"extension line\n")
	if _, err := tlogverify.ParseCheckpoint(ext, verifier(t)); err != nil {
		t.Fatalf("extension line: %v", err)
	}
	n, err := note.Open(signBody(t, testSKey, body(testOrigin, 5, tr.Hash())), note.VerifierList(verifier(t)))
	if err != nil {
		t.Fatal(err)
	}
	cosigned, err := note.Sign(n, signer(t, testSKey), mustSigner(t, "witness.example"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tlogverify.ParseCheckpoint(cosigned, verifier(t)); err != nil {
		t.Fatalf("cosigned: %v", err)
	}
}

func mustSigner(t *testing.T, name string) note.Signer {
	skey, _, err := note.GenerateKey(nil, name)
	if err != nil {
		t.Fatal(err)
	}
	return signer(t, skey)
}

func TestForgedCheckpoint(t *testing.T) {
	tr := tree(8)
	good := signBody(t, testSKey, body(testOrigin, 8, tr.Hash()))
	// Edit the signed body, keeping the signature lines.
	edit := func(from, to string) []byte {
		return []byte(strings.Replace(string(good), from, to, 1))
	}
	rootB64 := base64.StdEncoding.EncodeToString(tr.Hash())
	otherRoot := base64.StdEncoding.EncodeToString(tr.HashAt(7))
	tests := []struct {
		name    string
		signed  []byte
		wantErr error
	}{
		{"signed by another key of the same name", signBody(t, otherSKey, body(testOrigin, 8, tr.Hash())), tlogverify.ErrBadCheckpointSignature},
		{"signed by an unrelated key", mustSign(t, "evil.example", body("evil.example", 8, tr.Hash())), tlogverify.ErrBadCheckpointSignature},
		{"size altered", edit("\n8\n", "\n9\n"), tlogverify.ErrBadCheckpointSignature},
		{"size shrunk", edit("\n8\n", "\n7\n"), tlogverify.ErrBadCheckpointSignature},
		{"root altered", edit(rootB64, otherRoot), tlogverify.ErrBadCheckpointSignature},
		{"origin altered", edit(testOrigin+"\n", "foster.test/log2\n"), tlogverify.ErrBadCheckpointSignature},
		{"log key signs another origin", signBody(t, testSKey, body("other.log", 8, tr.Hash())), tlogverify.ErrBadCheckpointSignature},
		{"signature stripped", []byte(body(testOrigin, 8, tr.Hash()) + "\n"), tlogverify.ErrMalformed},
		{"signature bytes flipped", flipSig(good), tlogverify.ErrBadCheckpointSignature},
		{"oversized", append(good, make([]byte, tlogverify.MaxCheckpointSize)...), tlogverify.ErrMalformed},
		{"size with leading zero", signBody(t, testSKey, testOrigin+"\n08\n"+rootB64+"\n"), tlogverify.ErrMalformed},
		{"size with sign", signBody(t, testSKey, testOrigin+"\n+8\n"+rootB64+"\n"), tlogverify.ErrMalformed},
		{"negative size", signBody(t, testSKey, testOrigin+"\n-8\n"+rootB64+"\n"), tlogverify.ErrMalformed},
		{"size overflows", signBody(t, testSKey, testOrigin+"\n99999999999999999999\n"+rootB64+"\n"), tlogverify.ErrMalformed},
		{"short root", signBody(t, testSKey, testOrigin+"\n8\nAAAA\n"), tlogverify.ErrMalformed},
		{"missing root", signBody(t, testSKey, testOrigin+"\n8\n"), tlogverify.ErrMalformed},
		{"empty tree with a root", signBody(t, testSKey, body(testOrigin, 0, tr.Hash())), tlogverify.ErrMalformed},
		{"empty", nil, tlogverify.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tlogverify.ParseCheckpoint(tt.signed, verifier(t))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func mustSign(t *testing.T, name, text string) []byte {
	cp, err := note.Sign(&note.Note{Text: text}, mustSigner(t, name))
	if err != nil {
		t.Fatal(err)
	}
	return cp
}

// flipSig changes one byte of the signature (after the 4-byte key hash).
func flipSig(cp []byte) []byte {
	s := string(cp)
	i := strings.LastIndex(s, " ")
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimSuffix(s[i+1:], "\n"))
	raw[10] ^= 1
	return []byte(s[:i+1] + base64.StdEncoding.EncodeToString(raw) + "\n")
}

func TestSplitView(t *testing.T) {
	// The log shows one party tree A and another tree B, both of size 6,
	// sharing the first 4 leaves.
	a := tree(6)
	b := tree(4)
	b.AppendData([]byte("forged-4"), []byte("forged-5"))
	cpA, cpB := checkpoint(a, 6), checkpoint(b, 6)

	t.Run("same size different roots", func(t *testing.T) {
		for _, p := range [][][]byte{nil, {}, {a.Hash()}} {
			if err := tlogverify.VerifyConsistency(cpA, cpB, p); !errors.Is(err, tlogverify.ErrInconsistent) {
				t.Fatalf("split view accepted: %v", err)
			}
		}
	})
	t.Run("fork does not extend the other branch", func(t *testing.T) {
		b.AppendData([]byte("forged-6"))
		cpB7 := checkpoint(b, 7)
		// The honest proof from B's tree for 6 -> 7 ties B's roots, not A's.
		p, err := b.ConsistencyProof(6, 7)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlogverify.VerifyConsistency(cpB, cpB7, p); err != nil {
			t.Fatalf("honest proof on one branch: %v", err)
		}
		if err := tlogverify.VerifyConsistency(cpA, cpB7, p); !errors.Is(err, tlogverify.ErrInconsistent) {
			t.Fatalf("fork accepted: %v", err)
		}
	})
	t.Run("rollback", func(t *testing.T) {
		p, _ := a.ConsistencyProof(5, 6)
		if err := tlogverify.VerifyConsistency(cpA, checkpoint(a, 5), p); !errors.Is(err, tlogverify.ErrInconsistent) {
			t.Fatalf("shrunk tree accepted: %v", err)
		}
	})
	t.Run("identical checkpoints are consistent", func(t *testing.T) {
		if err := tlogverify.VerifyConsistency(cpA, cpA, nil); err != nil {
			t.Fatal(err)
		}
	})
}

func TestProofForDifferentLeafRefused(t *testing.T) {
	tr := tree(11)
	cp := checkpoint(tr, 11)
	p3, err := tr.InclusionProof(3, 11)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlogverify.VerifyInclusion(leaf(3), 3, cp, p3); err != nil {
		t.Fatalf("honest proof: %v", err)
	}
	p4, _ := tr.InclusionProof(4, 11)
	tests := []struct {
		name    string
		leaf    []byte
		index   int64
		proof   [][]byte
		wantErr error
	}{
		{"another leaf with leaf 3's proof", leaf(4), 3, p3, tlogverify.ErrNotInLog},
		{"unlogged leaf", []byte("never logged"), 3, p3, tlogverify.ErrNotInLog},
		{"leaf 3 claimed at index 4", leaf(3), 4, p3, tlogverify.ErrNotInLog},
		{"leaf 3 with leaf 4's proof", leaf(3), 3, p4, tlogverify.ErrNotInLog},
		{"leaf hash passed as data", rfc6962.DefaultHasher.HashLeaf(leaf(3)), 3, p3, tlogverify.ErrNotInLog},
		{"index beyond tree", leaf(3), 11, p3, tlogverify.ErrNotInLog},
		{"negative index", leaf(3), -1, p3, tlogverify.ErrMalformed},
		{"truncated proof", leaf(3), 3, p3[:len(p3)-1], tlogverify.ErrMalformed},
		{"short hash in proof", leaf(3), 3, [][]byte{p3[0][:31], p3[1], p3[2], p3[3]}, tlogverify.ErrMalformed},
		{"endless proof", leaf(3), 3, make([][]byte, tlogverify.MaxProofLength+1), tlogverify.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tlogverify.VerifyInclusion(tt.leaf, tt.index, cp, tt.proof); !errors.Is(err, tt.wantErr) {
				t.Fatalf("got %v, want %v", err, tt.wantErr)
			}
		})
	}
	// The same proof against another checkpoint of the log is refused too.
	if err := tlogverify.VerifyInclusion(leaf(3), 3, checkpoint(tr, 10), p3); err == nil {
		t.Fatal("proof for size 11 accepted against size 10")
	}
}

func TestConsistencyAcrossSizes(t *testing.T) {
	const n = 70
	tr := tree(n)
	for from := uint64(0); from <= n; from++ {
		for to := from; to <= n; to++ {
			p, err := tr.ConsistencyProof(from, to)
			if err != nil {
				t.Fatal(err)
			}
			if err := tlogverify.VerifyConsistency(checkpoint(tr, from), checkpoint(tr, to), p); err != nil {
				t.Fatalf("%d -> %d: %v", from, to, err)
			}
			if from > 0 && from < to {
				bad := checkpoint(tr, from)
				bad.Root = tr.HashAt(from - 1)
				if err := tlogverify.VerifyConsistency(bad, checkpoint(tr, to), p); !errors.Is(err, tlogverify.ErrInconsistent) {
					t.Fatalf("%d -> %d with a wrong old root: %v", from, to, err)
				}
			}
		}
	}
}

func TestMalformedCheckpointValues(t *testing.T) {
	tr := tree(3)
	good := checkpoint(tr, 3)
	bad := good
	bad.Root = bad.Root[:16]
	if err := tlogverify.VerifyInclusion(leaf(0), 0, bad, nil); !errors.Is(err, tlogverify.ErrMalformed) {
		t.Fatalf("short root: %v", err)
	}
	other := good
	other.Origin = "other"
	if err := tlogverify.VerifyConsistency(good, other, nil); !errors.Is(err, tlogverify.ErrMalformed) {
		t.Fatalf("different logs: %v", err)
	}
	if _, err := tlogverify.ParseCheckpoint(signBody(t, testSKey, body(testOrigin, 3, tr.Hash())), nil); !errors.Is(err, tlogverify.ErrMalformed) {
		t.Fatalf("nil verifier: %v", err)
	}
}

// FuzzParseCheckpoint feeds arbitrary bytes to the checkpoint parser: it must
// never panic, and whatever it accepts must be a well-formed checkpoint that
// the log key really signed.
func FuzzParseCheckpoint(f *testing.F) {
	tr := tree(5)
	f.Add(signBody(f, testSKey, body(testOrigin, 5, tr.Hash())))
	f.Add(signBody(f, testSKey, body(testOrigin, 0, rfc6962.DefaultHasher.EmptyRoot())))
	f.Add(signBody(f, otherSKey, body(testOrigin, 5, tr.Hash())))
	v := verifier(f)
	f.Fuzz(func(t *testing.T, signed []byte) {
		cp, err := tlogverify.ParseCheckpoint(signed, v)
		if err != nil {
			if !errors.Is(err, tlogverify.ErrMalformed) && !errors.Is(err, tlogverify.ErrBadCheckpointSignature) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if cp.Origin != testOrigin || cp.Size < 0 || len(cp.Root) != tlogverify.HashSize {
			t.Fatalf("accepted %+v", cp)
		}
		if _, err := note.Open(signed, note.VerifierList(v)); err != nil {
			t.Fatalf("accepted a note that does not verify: %v", err)
		}
	})
}

// FuzzCheckpointBody fuzzes the checkpoint body behind a valid signature (a
// compromised or buggy log signing garbage): the parser must reject it with
// ErrMalformed or return exactly what the body's first three lines say.
func FuzzCheckpointBody(f *testing.F) {
	tr := tree(5)
	f.Add(body(testOrigin, 5, tr.Hash()))
	f.Add(body(testOrigin, 5, tr.Hash()) + "extension\n")
	f.Add(body(testOrigin, 0, rfc6962.DefaultHasher.EmptyRoot()))
	f.Add(testOrigin + "\n007\n" + base64.StdEncoding.EncodeToString(tr.Hash()) + "\n")
	s, v := signer(f, testSKey), verifier(f)
	f.Fuzz(func(t *testing.T, text string) {
		signed, err := note.Sign(&note.Note{Text: text}, s)
		if err != nil {
			return // not a note body at all
		}
		cp, err := tlogverify.ParseCheckpoint(signed, v)
		if err != nil {
			if !errors.Is(err, tlogverify.ErrMalformed) && !errors.Is(err, tlogverify.ErrBadCheckpointSignature) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		if want := body(cp.Origin, uint64(cp.Size), cp.Root); !strings.HasPrefix(text, want) || cp.Origin != testOrigin {
			t.Fatalf("body %q parsed as %+v", text, cp)
		}
	})
}

// FuzzVerifyProofs feeds arbitrary indexes, sizes and proofs to the proof
// verifiers: no panics, only typed errors, and nothing verifies against a
// root that no tree has.
func FuzzVerifyProofs(f *testing.F) {
	tr := tree(9)
	p, _ := tr.InclusionProof(2, 9)
	c, _ := tr.ConsistencyProof(3, 9)
	f.Add(int64(2), int64(3), int64(9), join(p), join(c))
	f.Add(int64(0), int64(0), int64(1), []byte{}, []byte{})
	f.Add(int64(-1), int64(-5), int64(1<<62), []byte{1, 2, 3}, make([]byte, 64))
	root := make([]byte, tlogverify.HashSize) // all zeros: no tree hashes to it
	f.Fuzz(func(t *testing.T, index, size1, size2 int64, incl, cons []byte) {
		a := tlogverify.Checkpoint{Origin: testOrigin, Size: size1, Root: root}
		b := tlogverify.Checkpoint{Origin: testOrigin, Size: size2, Root: root}
		if err := tlogverify.VerifyInclusion([]byte("x"), index, b, split(incl)); err == nil {
			t.Fatalf("inclusion verified against a root no tree has: %d %d", index, size2)
		} else if !typed(err) {
			t.Fatalf("untyped error: %v", err)
		}
		err := tlogverify.VerifyConsistency(a, b, split(cons))
		if err == nil && size1 != size2 && size1 != 0 { // equal trees, or anything extends the empty tree
			t.Fatalf("consistency verified against a root no tree has: %d %d", size1, size2)
		}
		if err != nil && !typed(err) {
			t.Fatalf("untyped error: %v", err)
		}
	})
}

func typed(err error) bool {
	return errors.Is(err, tlogverify.ErrMalformed) || errors.Is(err, tlogverify.ErrNotInLog) || errors.Is(err, tlogverify.ErrInconsistent)
}

func join(hs [][]byte) []byte {
	var b []byte
	for _, h := range hs {
		b = append(b, h...)
	}
	return b
}

// split cuts b into hash-sized pieces (the last may be short).
func split(b []byte) [][]byte {
	var out [][]byte
	for len(b) > 0 {
		n := min(len(b), tlogverify.HashSize)
		out = append(out, b[:n])
		b = b[n:]
	}
	return out
}
