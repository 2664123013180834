package e2e

import (
	"bytes"
	"fmt"
	"os"
	"testing"
)

// TestOrphanedDeviceClimbsSteppingStone: a device installs 1.0.0 and goes
// dark. Meanwhile the manufacturer ships a full 2.0.0 and then 33 deltas
// that need at least 2.0.0, so 2.0.0 is older than the 32 newest releases
// the model's role lists. When the device comes back, fosterd still lists
// 2.0.0 in the model role (its newest full image), the real agent takes
// it, and on its next run the newest delta.
func TestOrphanedDeviceClimbsSteppingStone(t *testing.T) {
	env := NewEnv(t)
	env.Admin("model", "add", "edge-gw")
	release := func(version string, extra ...string) []byte {
		t.Helper()
		fw, body := writeFirmware(t, 4096)
		args := append([]string{"release", "add", "--model", "edge-gw", "--version", version}, extra...)
		env.Admin(append(args, fw)...)
		return body
	}
	installs := func(dev *Device, want []byte, what string) {
		t.Helper()
		if r := dev.RunOnce(); r.Code != 0 {
			t.Fatalf("agent run (%s): exit %d\n%s", what, r.Code, r.Stderr)
		}
		got, err := os.ReadFile(dev.Firmware)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("the device does not run %s (err %v)", what, err)
		}
	}

	v1 := release("1.0.0")
	dev := env.NewDevice("SN-ORPHAN", "edge-gw")
	dev.Enroll(env.Token("SN-ORPHAN", "edge-gw"))
	installs(dev, v1, "1.0.0")

	// The device is offline while these ship.
	stone := release("2.0.0")
	var newest []byte
	for i := 1; i <= 33; i++ {
		newest = release(fmt.Sprintf("2.0.%d", i), "--min-from-version", "2.0.0")
	}
	for _, r := range env.releases("edge-gw") {
		if r.Version == "2.0.0" && r.Role != "models/edge-gw" {
			t.Fatalf("2.0.0 is signed by %q, want the model role the agent loads", r.Role)
		}
	}

	installs(dev, stone, "the stepping stone 2.0.0")
	installs(dev, newest, "the newest release 2.0.33")
}
