package tufrepo_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"testing"
	"time"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/tufrepo"
	"github.com/foster-ota/foster/pkg/signing"
	"github.com/sigstore/sigstore/pkg/signature"
)

// FuzzStagedMetadata: staged ceremony files come from people and disks,
// and the publish API takes them from the network. Whatever the bytes,
// inspecting, combining, signing and publishing them never panics, and
// publishing either refuses them or leaves a repository that still loads.
func FuzzStagedMetadata(f *testing.F) {
	ctx := context.Background()
	store, err := blob.NewFS(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	keys := tufrepo.Keys{}
	for _, k := range []*signature.Signer{&keys.Root, &keys.Targets, &keys.Snapshot, &keys.Timestamp} {
		_, priv, _ := ed25519.GenerateKey(rand.Reader)
		*k, _ = signing.FromPrivateKey(priv)
	}
	root, err := tufrepo.Init(ctx, store, keys, tufrepo.Options{})
	if err != nil {
		f.Fatal(err)
	}
	repo, err := tufrepo.Open(ctx, store, keys, tufrepo.Options{})
	if err != nil {
		f.Fatal(err)
	}
	staged, _ := tufrepo.StageRoot(root, tufrepo.RootChange{}, time.Now())
	signed, _ := tufrepo.SignStaged(ctx, staged, keys.Root)
	targets, _ := tufrepo.StageTargets(repo.CurrentTargets(), tufrepo.TargetsChange{}, time.Now())
	for _, s := range [][]byte{root, staged, signed, targets, []byte(`{"signed":{"_type":"root"},"signatures":[]}`), []byte(`{}`), nil} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		tufrepo.Inspect(raw, repo.RootJSON())
		tufrepo.CombineStaged(raw, raw)
		tufrepo.SignStaged(ctx, raw, keys.Root)
		for _, pub := range []func() error{
			func() error { return repo.PublishStaged(ctx, raw, nil) },
			func() error { return repo.PublishStaged(ctx, nil, raw) },
		} {
			r0, t0, s0, ts0 := repo.Versions()
			if err := pub(); err != nil {
				if r1, t1, s1, ts1 := repo.Versions(); r1 != r0 || t1 != t0 || s1 != s0 || ts1 != ts0 {
					t.Fatalf("refused publish changed versions: %v", err)
				}
				continue
			}
			if _, err := tufrepo.Open(ctx, store, keys, tufrepo.Options{}); err != nil {
				t.Fatalf("accepted staged metadata left a repository that does not load: %v", err)
			}
		}
	})
}
