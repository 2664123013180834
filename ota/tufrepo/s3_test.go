package tufrepo_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/foster-ota/foster/ota/blob"
	"github.com/foster-ota/foster/ota/blob/s3test"
	"github.com/foster-ota/foster/ota/tufrepo"
)

// TestStockClientOverS3 publishes into a real S3 server (versitygw) and has
// go-tuf's stock client verify and download through the same Range-capable
// serving path as the file store; a restarted repository continues from
// what is in the bucket, and a tampered blob there is refused.
func TestStockClientOverS3(t *testing.T) {
	store, err := blob.Open(context.Background(), s3test.Start(t))
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, store: store, keys: ed25519Keys(t), clock: newClock()}
	f.opts = tufrepo.Options{Now: f.clock.Now}
	if f.root, err = tufrepo.Init(t.Context(), store, f.keys, f.opts); err != nil {
		t.Fatalf("Init: %v", err)
	}
	if f.repo, err = tufrepo.Open(t.Context(), store, f.keys, f.opts); err != nil {
		t.Fatalf("Open: %v", err)
	}
	f.srv = serveStore(t, store)
	dev := f.newDevice()

	body := randomBytes(6<<20+3, 7) // several upload parts
	tgt := f.add(fwPath, body, fwCustom)
	up := dev.refresh()
	if blobs, err := store.List(t.Context(), "targets/"); err != nil || len(blobs) != 1 || blobs[0] != tufrepo.TargetKey(fwPath, tgt.SHA256) {
		t.Fatalf("target objects = %q, %v; want only the sha256-named one", blobs, err)
	}
	for range 2 {
		data, err := dev.download(up, fwPath)
		if err != nil || !bytes.Equal(data, body) {
			t.Fatalf("DownloadTarget: %d bytes, %v", len(data), err)
		}
	}
	if staged, err := store.List(t.Context(), "staging/"); err != nil || len(staged) != 0 {
		t.Fatalf("staging objects left behind: %q, %v", staged, err)
	}

	// A restarted fosterd continues from the bucket.
	before := versionsOf(f.repo)
	if f.repo, err = tufrepo.Open(t.Context(), store, f.keys, f.opts); err != nil {
		t.Fatalf("reopening: %v", err)
	}
	if got := versionsOf(f.repo); got != before {
		t.Fatalf("versions after reopening = %v, want %v", got, before)
	}
	f.add("edge-gw/1.0.2/fw.bin", []byte("next release"), `{"model":"edge-gw","version":"1.0.2","release_counter":2,"hardware_ids":[]}`)
	up = dev.refresh()
	if data, err := dev.download(up, "edge-gw/1.0.2/fw.bin"); err != nil || string(data) != "next release" {
		t.Fatalf("second release: %q, %v", data, err)
	}

	// Someone with write access to the bucket swaps the image: refused.
	evil := bytes.Clone(body)
	evil[4<<20] ^= 1
	if err := store.Put(t.Context(), tufrepo.TargetKey(fwPath, tgt.SHA256), bytes.NewReader(evil), int64(len(evil))); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if _, err := dev.download(up, fwPath); !errors.Is(err, &metadata.ErrLengthOrHashMismatch{}) {
			t.Fatalf("DownloadTarget of a tampered S3 object: %v, want ErrLengthOrHashMismatch", err)
		}
	}
}
