#!/bin/sh
# Peak RSS of the real foster-agent binary while it downloads, verifies and
# installs a large image from a real fosterd (docs/BENCHMARKS.md).
#
#   cmd/foster-agent/testdata/footprint.sh [SIZE_MIB]    (default 512; run from the repository root)
#
# It builds fosterd, foster and a stripped foster-agent, starts fosterd on a
# fresh data dir, publishes a SIZE_MIB random release, enrolls a device and
# installs the release twice, each under /usr/bin/time -v: with the A/B
# installer (streamed into a slot file, U-Boot-style file boot env; the run
# ends with the reboot request; a simulated boot into the new slot and a
# second, unmeasured run then commit and attest it) and with the file
# installer.
set -eu
SIZE=${1:-512}
W=$(mktemp -d)
trap 'kill $FOSTERD 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/bin"
go build -o "$W/bin/" ./cmd/fosterd ./cmd/foster
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$W/bin/foster-agent" ./cmd/foster-agent
PATH=$W/bin:$PATH
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
fosterd --data-dir "$W/data" --init --listen "127.0.0.1:$PORT" >"$W/fosterd.log" 2>&1 &
FOSTERD=$!
for i in $(seq 1 600); do
  [ -f "$W/data/ca.pem" ] && curl -sf --cacert "$W/data/ca.pem" "https://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
foster --instance "$W/data" model add edge-gw >/dev/null
head -c "$((SIZE << 20))" /dev/urandom >"$W/fw.bin"
foster --instance "$W/data" release add --model edge-gw --version 2.0.0 "$W/fw.bin" >/dev/null 2>&1

measure() { # NAME STATE-DIR ARGS...
  name=$1; state=$2; shift 2
  TOKEN=$(foster --instance "$W/data" token create --serial "$name" --model edge-gw 2>/dev/null)
  foster-agent --state-dir "$state" enroll --server "https://127.0.0.1:$PORT" --token "$TOKEN" \
    --serial "$name" --model edge-gw --ca-root "$W/data/ca.pem" --tuf-root "$W/data/root.json" >/dev/null
  env ${FOOTPRINT_ENV:-} /usr/bin/time -v foster-agent --state-dir "$state" --log-level warn run --once "$@" 2>"$W/$name.time"
  echo "$name: peak RSS $(sed -n 's/.*Maximum resident set size (kbytes): //p' "$W/$name.time") KiB," \
    "wall $(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$W/$name.time")"
}

# A/B: slot a runs, slot b receives the image.
S=$W/ab
mkdir -p "$S"
: >"$S/slot-a"; : >"$S/slot-b"
printf 'boot_part=a\nbootlimit=3\n' >"$S/bootenv"
echo "root=$S/slot-a foster.slot=a" >"$S/cmdline"
echo boot-1 >"$S/boot_id"
cat >"$S/config.json" <<JSON
{"installer": "ab",
 "ab": {"slots": {"a": "$S/slot-a", "b": "$S/slot-b"}, "env": {"backend": "file", "file": "$S/bootenv"}, "cmdline": "$S/cmdline"},
 "reboot": {"command": ["touch", "$S/reboot-requested"], "boot_id_file": "$S/boot_id"}}
JSON
measure ab "$W/state-ab" --config "$S/config.json"
cmp "$W/fw.bin" "$S/slot-b" && grep -q upgrade_available=1 "$S/bootenv" && echo "ab: slot b holds the release, trial boot armed"
# The bootloader boots slot b on trial; the agent health-checks, commits and attests.
echo "root=$S/slot-b foster.slot=b" >"$S/cmdline"; echo boot-2 >"$S/boot_id"
foster-agent --state-dir "$W/state-ab" --log-level warn run --once --config "$S/config.json"
grep -q upgrade_available=0 "$S/bootenv" && grep -q boot_part=b "$S/bootenv" && echo "ab: committed on slot b"
foster --instance "$W/data" device list 2>/dev/null | grep -E "SERIAL|^ab " || true

measure file "$W/state-file" --installer file --target "$W/firmware.bin"
cmp "$W/fw.bin" "$W/firmware.bin" && echo "file: installed"

# For comparison: a run that finds nothing to do (same device, up to date).
/usr/bin/time -v foster-agent --state-dir "$W/state-file" --log-level warn run --once --installer file --target "$W/firmware.bin" 2>"$W/idle.time"
echo "idle run: peak RSS $(sed -n 's/.*Maximum resident set size (kbytes): //p' "$W/idle.time") KiB"
