#!/usr/bin/env bash
# GET /snapshot against a loaded leader (issue 14): a client's write latency
# on the leader with and without backups downloading from it at the same
# time. Before, /snapshot built the whole map on the node's reactor thread
# (three copies) and stalled it; now it streams the newest snapshot file
# from disk on a helper thread.
#
#   benches/snapshot_download.sh                       this build
#   RAFTFS=/path/to/other/raftfs benches/snapshot_download.sh   another build (before/after)
#
# Knobs (environment):
#   SD_FILES      files to fill (default 1000000, 60-byte values)
#   SD_SECS       seconds of each measured phase (default 10)
#   SD_DOWNLOADS  most downloads run back to back during the loaded phase
#                 (default 1000: as many as fit in SD_SECS)
#   SD_BASE_PORT  first port (default 17600): clients P.., peers P+10.., metrics P+20..
#   SD_KEEP       set: keep the temp dir
#
# Prints one table: phase, probe ops, p50/p99/max latency (µs), errors,
# downloads finished and their bytes, and the leader's peak RSS (VmHWM)
# after the phase. Everything it starts is killed on exit;
# every wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=${SD_FILES:-1000000}
SECS=${SD_SECS:-10}
DOWNLOADS=${SD_DOWNLOADS:-1000}
BASE_PORT=${SD_BASE_PORT:-17600}
NODES=3

cargo build --release --workspace --quiet
RAFTFS=${RAFTFS:-target/release/raftfs}
LOADGEN=target/release/loadgen

WORK=$(mktemp -d -t raftfs-snapshot-download-XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${SD_KEEP:-}" ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT INT TERM

client_port() { echo $((BASE_PORT + $1 - 1)); }
metrics_port() { echo $((BASE_PORT + 20 + $1 - 1)); }
{
    echo "fsync = false"
    for id in $(seq 1 $NODES); do
        echo "[[node]]"
        echo "id = $id"
        echo "client = \"127.0.0.1:$(client_port "$id")\""
        echo "peer = \"127.0.0.1:$((BASE_PORT + 10 + id - 1))\""
        echo "metrics = \"127.0.0.1:$(metrics_port "$id")\""
    done
} >"$WORK/cluster.toml"
for id in $(seq 1 $NODES); do
    RUST_LOG=info "$RAFTFS" node --config "$WORK/cluster.toml" --id "$id" \
        --data-dir "$WORK/data/$id" >"$WORK/node$id.log" 2>&1 &
    PIDS+=($!)
done
metric() { curl -s --max-time 2 "http://127.0.0.1:$(metrics_port "$1")/metrics" | awk -v n="$2" '$1 == n { print $2 }'; }
leader() {
    for id in $(seq 1 $NODES); do
        [ "$(metric "$id" 'raftfs_role{role="leader"}')" = "1" ] && { echo "$id"; return; }
    done
    echo ""
}
for _ in $(seq 1 100); do LEADER=$(leader); [ -n "$LEADER" ] && break; sleep 0.2; done
[ -n "$LEADER" ] || { echo "no leader after 20 s" >&2; exit 1; }

echo "filling $FILES files ..." >&2
timeout $((FILES / 1000 + 300)) "$LOADGEN" --addr "127.0.0.1:$(client_port "$LEADER")" --clients 64 \
    --pipeline 16 --mix read=1 --duration 0.1 --size 60 --keys "$FILES" --json \
    >"$WORK/fill.json" 2>"$WORK/fill.log" || { tail -5 "$WORK/fill.log" >&2; exit 1; }
# Bounded: until the leader serves a snapshot covering the fill.
LEADER=$(leader)
URL="http://127.0.0.1:$(metrics_port "$LEADER")/snapshot"
for _ in $(seq 1 120); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 60 "$URL" || true)
    [ "$code" = "200" ] && break
    sleep 1
done
[ "$code" = "200" ] || { echo "no snapshot served after 120 s" >&2; exit 1; }
sleep 3

probe() { # probe NAME: one client, one write at a time, on the leader
    "$LOADGEN" --addr "127.0.0.1:$(client_port "$LEADER")" --clients 1 --pipeline 1 \
        --mix write=1 --duration "$SECS" --size 60 --keys 1000 --no-prefill --json \
        >"$WORK/$1.json" 2>"$WORK/$1.log"
}
row() { # row NAME DOWNLOADS BYTES PEAK_KIB
    tail -1 "$WORK/$1.json" | python3 -c "
import json, sys
r = json.load(sys.stdin)
print('| $1 | %d | %d | %d | %d | %d | $2 | $3 | %.0f |' % (r['ops'], r['p50_us'], r['p99_us'], r['max_us'], r['errors'], $4 / 1024))"
}
peak_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/${PIDS[$((LEADER - 1))]}/status"; }

probe idle
idle_peak=$(peak_kib)
: >"$WORK/downloads"
(
    end=$(($(date +%s) + SECS))
    for _ in $(seq 1 "$DOWNLOADS"); do
        [ "$(date +%s)" -lt "$end" ] || break
        curl -s -o /dev/null -w '%{size_download}\n' --max-time 120 "$URL" >>"$WORK/downloads" || true
    done
) &
DOWNLOADER=$!
PIDS+=("$DOWNLOADER")
probe downloading
wait "$DOWNLOADER" || true
downloading_peak=$(peak_kib)
finished=$(grep -c . "$WORK/downloads" || true)
bytes=$(awk '{ s += $1 } END { printf "%.0f", s }' "$WORK/downloads")

echo
echo "## Write latency on the leader ($FILES files), one client, ${SECS} s per phase"
echo
echo "| phase | ops | p50 µs | p99 µs | max µs | errors | downloads | bytes | leader peak RSS MiB |"
echo "|---|---|---|---|---|---|---|---|---|"
row idle 0 0 "$idle_peak"
row downloading "$finished" "$bytes" "$downloading_peak"
echo
echo "leader $(metric "$LEADER" raftfs_leader_id) term $(metric "$LEADER" raftfs_term)" >&2
