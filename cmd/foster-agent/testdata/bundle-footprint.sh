#!/bin/sh
# Peak RSS and speed of the real foster-agent binary installing a large
# image from an offline bundle, with fosterd stopped (docs/BENCHMARKS.md).
#
#   cmd/foster-agent/testdata/bundle-footprint.sh [SIZE_MIB]    (default 512; run from the repository root)
#
# It builds fosterd, foster and a stripped foster-agent, starts fosterd on a
# fresh data dir, publishes a SIZE_MIB random release, enrolls two devices,
# exports the bundle (foster bundle export) and stops fosterd. Then, each
# under /usr/bin/time -v: install-bundle --verify-only (metadata, policy and
# the image's SHA-256, nothing changes), install-bundle with the A/B
# installer (verify, stream into the slot, reboot request; a simulated boot
# and a second install-bundle commit it), and with the file installer.
# For comparison, sha256sum and Go's SHA-256 (via the verify-only figure's
# CPU time) over the same bytes.
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
for D in ab file; do
  TOKEN=$(foster --instance "$W/data" token create --serial "$D" --model edge-gw 2>/dev/null)
  foster-agent --state-dir "$W/state-$D" enroll --server "https://127.0.0.1:$PORT" --token "$TOKEN" \
    --serial "$D" --model edge-gw --ca-root "$W/data/ca.pem" --tuf-root "$W/data/root.json" >/dev/null
done
foster --instance "$W/data" bundle export --model edge-gw --out "$W/bundle.tar" >/dev/null 2>&1
kill $FOSTERD; wait $FOSTERD 2>/dev/null || true     # offline from here on
echo "bundle: $(stat -c %s "$W/bundle.tar") bytes"

measure() { # NAME ARGS...
  name=$1; shift
  /usr/bin/time -v foster-agent --log-level warn "$@" 2>"$W/$name.time" >/dev/null
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$W/$name.time")
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$W/$name.time")
  user=$(sed -n 's/.*User time (seconds): //p' "$W/$name.time")
  sys=$(sed -n 's/.*System time (seconds): //p' "$W/$name.time")
  echo "$name: peak RSS $rss KiB, wall $wall, cpu ${user}s user + ${sys}s sys"
}

measure verify-only --state-dir "$W/state-file" install-bundle --verify-only "$W/bundle.tar"

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
measure ab --state-dir "$W/state-ab" install-bundle --config "$S/config.json" "$W/bundle.tar"
cmp "$W/fw.bin" "$S/slot-b" && grep -q upgrade_available=1 "$S/bootenv" && echo "ab: slot b holds the release, trial boot armed"
echo "root=$S/slot-b foster.slot=b" >"$S/cmdline"; echo boot-2 >"$S/boot_id"
foster-agent --state-dir "$W/state-ab" --log-level warn install-bundle --config "$S/config.json" "$W/bundle.tar"
grep -q upgrade_available=0 "$S/bootenv" && grep -q boot_part=b "$S/bootenv" && echo "ab: committed on slot b"

measure file --state-dir "$W/state-file" install-bundle --installer file --target "$W/firmware.bin" "$W/bundle.tar"
cmp "$W/fw.bin" "$W/firmware.bin" && echo "file: installed"
foster-agent --state-dir "$W/state-file" status | grep -E "installed|attestations"

/usr/bin/time -f "sha256sum: wall %e s, cpu %U s user + %S s sys" sha256sum "$W/fw.bin" >/dev/null
