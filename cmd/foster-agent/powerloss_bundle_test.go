package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/foster-ota/foster/client/clienttest"
	"github.com/foster-ota/foster/pkg/offline"
)

// writeBundle writes an offline bundle of target name (img) from srv's repository.
func writeBundle(t *testing.T, srv *clienttest.Server, name, version string, counter int64, img []byte) string {
	t.Helper()
	var meta, blobs map[string][]byte
	srv.Lock(func() {
		meta = srv.Repo.BundleMeta(t, time.Now().Add(30*24*time.Hour), time.Now(), offline.SignedAtField)
		blobs = maps.Clone(srv.Repo.Blobs)
	})
	sum := sha256.Sum256(img)
	h := hex.EncodeToString(sum[:])
	m := offline.Manifest{Format: offline.FormatVersion, Model: "edge-gw", Target: name, Image: offline.ImageName(name, h),
		Version: version, ReleaseCounter: counter, Length: int64(len(img)), SHA256: h, HardwareIDs: []string{}}
	p := filepath.Join(t.TempDir(), "bundle.tar")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := offline.NewWriter(f, time.Now())
	mb, _ := json.Marshal(m)
	errs := []error{w.Add(offline.ManifestName, mb)}
	for _, n := range slices.Sorted(maps.Keys(meta)) {
		errs = append(errs, w.Add("tuf/"+n, meta[n]))
	}
	errs = append(errs, w.Add(m.Image, blobs[m.Image[len(offline.TargetsDir):]]), w.Close())
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// TestPowerLossInstallBundle cuts the power at every kill point an offline
// install-bundle passes on a simulated A/B device (the journal and state
// machine are the online ones): verification, streaming into the slot,
// install, reboot, health check, commit or rollback, signing the
// attestation. The device always boots a valid image, ends committed or
// rolled back as the release deserves with its attestation queued, and the
// next online run delivers exactly one attestation of that outcome.
func TestPowerLossInstallBundle(t *testing.T) {
	start := time.Now()
	srv := clienttest.NewServer(t, clienttest.NewRepo(t, "edge-gw"))
	scs := []scenario{scenarios[0], scenarios[1]}
	images := make([][]byte, len(scs))
	bundles := make([]string, len(scs))
	srv.Lock(func() {
		for i, sc := range scs {
			images[i] = clienttest.SimImage(fmt.Sprintf("3.0.%d", i), sc.behaviour, plImageSize)
			srv.Repo.AddTarget(t, fmt.Sprintf("edge-gw/3.0.%d/firmware.bin", i), images[i], clienttest.Custom{
				Model: "edge-gw", Version: fmt.Sprintf("3.0.%d", i), ReleaseCounter: int64(20 + i), HardwareIDs: []string{"hw-" + strconv.Itoa(i)}})
		}
		srv.Repo.Publish(t)
	})
	for i := range scs {
		bundles[i] = writeBundle(t, srv, fmt.Sprintf("edge-gw/3.0.%d/firmware.bin", i), fmt.Sprintf("3.0.%d", i), int64(20+i), images[i])
	}
	newDev := func(sc int, serial string) *plDevice {
		d := newPLDevice(t, srv, serial)
		d.sim.AddValid(images[sc], scs[sc].behaviour)
		setHardware(t, d.state, "hw-"+strconv.Itoa(sc)) // the online run offers nothing else
		d.bundle = bundles[sc]
		return d
	}
	// finish takes the device back online: one run delivers the attestation.
	finish := func(d *plDevice, sc int, want, label string) {
		t.Helper()
		d.bundle = ""
		if _, err := d.runAgent("", ""); err != nil {
			t.Fatalf("%s: online run: %v\n%s", label, err, d.logs.String())
		}
		d.check(want, images[sc], label)
	}

	var points []killPoint
	for i, sc := range scs {
		d := newDev(i, fmt.Sprintf("BTRACE-%d", i))
		traces, _ := d.lifecycle(nil, t.TempDir())
		finish(d, i, sc.outcome, "trace "+sc.name)
		for run, names := range traces {
			seen := map[string]int{}
			for _, n := range names {
				seen[n]++
				points = append(points, killPoint{scenario: i, run: run, name: n, n: seen[n]})
			}
		}
	}
	if len(points) < 20 {
		t.Fatalf("only %d kill points traced", len(points))
	}
	work := make(chan int)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for i := range work {
				kp := points[i]
				d := newDev(kp.scenario, "BPL-"+strconv.Itoa(i))
				_, killed := d.lifecycle(map[int]killPoint{kp.run: kp}, "")
				label := fmt.Sprintf("bundle trial %d (%s, power cut at %v)", i, scs[kp.scenario].name, kp)
				if killed == 0 {
					t.Errorf("%s: the agent never reached its kill point\n%s", label, d.logs.String())
					continue
				}
				finish(d, kp.scenario, scs[kp.scenario].outcome, label)
			}
		})
	}
	for i := range points {
		work <- i
	}
	close(work)
	wg.Wait()
	t.Logf("%d power cuts at every kill point of install-bundle (%d scenarios), %s", len(points), len(scs), time.Since(start).Round(time.Second))
}
