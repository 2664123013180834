package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestWavesFlagParsesPercentages(t *testing.T) {
	tests := []struct {
		in      string
		want    []int
		wantErr bool
	}{
		{"1,10,50,100", []int{1, 10, 50, 100}, false},
		{"50%, 100%", []int{50, 100}, false},
		{"100", []int{100}, false},
		{"1,,100", nil, true},
		{"half,100", nil, true},
	}
	for _, tt := range tests {
		var l intList
		err := l.Set(tt.in)
		if (err != nil) != tt.wantErr || (!tt.wantErr && !slices.Equal(l, tt.want)) {
			t.Errorf("--waves %q: %v, %v; want %v (error %v)", tt.in, []int(l), err, tt.want, tt.wantErr)
		}
	}
}

func TestStaticGroupSerialsFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "serials.txt")
	os.WriteFile(p, []byte("# line 7\nSN-1\n\n  SN-2  \n#SN-3\n"), 0o600)
	got, err := readSerials(p)
	if err != nil || !slices.Equal(got, []string{"SN-1", "SN-2"}) {
		t.Fatalf("readSerials: %v, %v", got, err)
	}
}

// Bad invocations are usage errors before any connection is made.
func TestRolloutCommandsRefuseBadUsage(t *testing.T) {
	for _, args := range [][]string{
		{"rollout", "create", "--version", "1.0.0"},
		{"rollout", "create", "--model", "m", "--version", "1.0.0", "--wave-interval", "-1h"},
		{"rollout", "show"},
		{"rollout", "promote", "a", "b"},
		{"device", "tag", "SN-1"},
		{"group", "create", "g"},
		{"group", "create", "g", "--tag", "t", "--serials", "f"},
	} {
		var out, errb bytes.Buffer
		err := cmdFor(t, args)(context.Background(), nil, args[2:], &out, &errb)
		if !errors.Is(err, errUsage) {
			t.Errorf("foster %v: %v, want a usage error", args, err)
		}
	}
}

func cmdFor(t *testing.T, args []string) func(context.Context, *client, []string, io.Writer, io.Writer) error {
	switch args[0] + " " + args[1] {
	case "rollout create":
		return cmdRolloutCreate
	case "rollout show":
		return cmdRolloutShow
	case "rollout promote":
		return cmdRolloutAction("promote", "promoted")
	case "device tag":
		return cmdDeviceTag(false)
	case "group create":
		return cmdGroupCreate
	}
	t.Fatalf("no command %v", args)
	return nil
}
