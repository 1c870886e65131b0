#!/usr/bin/env bash
# Memory per node (issue 6): RSS of each node of a fresh 5-node cluster
# holding 1,000,000 files of 100 bytes with 16-byte names, measured after a
# snapshot, then RSS every 5 s under a sustained write+read load.
#
#   benches/memory.sh                 the full run (~3-5 min on 2 cores)
#   MEM_FILES=100000 benches/memory.sh   a quick look
#
# Knobs (environment):
#   MEM_FILES        files to fill (default 1000000; names key-<12 digits>, 16 bytes)
#   MEM_SIZE         content bytes per file (default 100)
#   MEM_FSYNC        true|false (default false: fsync does not change memory)
#   MEM_SUSTAIN_SECS seconds of sustained load (default 60)
#   MEM_LOAD_KEYS    keys the sustained load spreads over (default 10000;
#                    MEM_FILES = every file, the copy-on-write worst case:
#                    each arena chunk is changed while a snapshot is written)
#   MEM_SNAPSHOT_ENTRIES snapshot_entries of the cluster (default 100000, the
#                    default; a snapshot also comes every 16-64 MiB of log, so a
#                    1M fill takes several; a small fill needs a small value)
#   MEM_RAFTFS       the raftfs binary to measure (default target/release/raftfs;
#                    another build for a before/after)
#   MEM_KEEP         set: keep the temp dir (node logs, loadgen output)
#   MEM_BASE_PORT    first port (default 17500): clients P..P+4, peers
#                    P+10..P+14, metrics P+20..P+24, all on 127.0.0.1
#
# Every node is its own `raftfs node` process, so /proc/<pid>/status VmRSS
# is that node's RSS. The target is RSS <= 2x the raw data (files x (name +
# content)). Everything this script starts is killed on exit (trap); every
# wait is bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

FILES=${MEM_FILES:-1000000}
SIZE=${MEM_SIZE:-100}
FSYNC=${MEM_FSYNC:-false}
SUSTAIN_SECS=${MEM_SUSTAIN_SECS:-60}
LOAD_KEYS=${MEM_LOAD_KEYS:-10000}
BASE_PORT=${MEM_BASE_PORT:-17500}
SNAPSHOT_ENTRIES=${MEM_SNAPSHOT_ENTRIES:-100000}
NODES=5
NAME_BYTES=16 # "key-" + 12 digits
KEY_DIGITS=12

cargo build --release --workspace --quiet
RAFTFS=${MEM_RAFTFS:-target/release/raftfs}
LOADGEN=target/release/loadgen

WORK=$(mktemp -d -t raftfs-memory-XXXXXX)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # Bounded: a node that ignores SIGTERM for 10 s is killed.
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if [ -n "${MEM_KEEP:-}" ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT INT TERM

client_port() { echo $((BASE_PORT + $1 - 1)); }
peer_port() { echo $((BASE_PORT + 10 + $1 - 1)); }
metrics_port() { echo $((BASE_PORT + 20 + $1 - 1)); }

{
    echo "fsync = $FSYNC"
    echo "snapshot_entries = $SNAPSHOT_ENTRIES"
    echo "data_dir = \"$WORK/data\""
    for id in $(seq 1 $NODES); do
        echo "[[node]]"
        echo "id = $id"
        echo "client = \"127.0.0.1:$(client_port "$id")\""
        echo "peer = \"127.0.0.1:$(peer_port "$id")\""
        echo "metrics = \"127.0.0.1:$(metrics_port "$id")\""
    done
} >"$WORK/cluster.toml"

for id in $(seq 1 $NODES); do
    mkdir -p "$WORK/data/$id"
    RUST_LOG=info "$RAFTFS" node --config "$WORK/cluster.toml" --id "$id" \
        --data-dir "$WORK/data/$id" >"$WORK/node$id.log" 2>&1 &
    PIDS+=($!)
done
ADDRESSES=$(for id in $(seq 1 $NODES); do printf '127.0.0.1:%s,' "$(client_port "$id")"; done)
ADDRESSES=${ADDRESSES%,}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
metric() { # metric NODE NAME -> value (empty if unavailable)
    curl -s --max-time 2 "http://127.0.0.1:$(metrics_port "$1")/metrics" |
        awk -v name="$2" '$1 == name { print $2 }'
}
snapshot_files() { ls "$WORK/data/$1" | grep -c '^snapshot-.*\.snap$' || true; }

# Wait (bounded) until some node leads.
for _ in $(seq 1 100); do
    leaders=0
    for id in $(seq 1 $NODES); do
        [ "$(metric "$id" 'raftfs_role{role="leader"}')" = "1" ] && leaders=$((leaders + 1))
    done
    [ "$leaders" -ge 1 ] && break
    sleep 0.2
done
[ "$leaders" -ge 1 ] || { echo "no leader after 20 s; see $WORK/node*.log" >&2; exit 1; }

echo "filling $FILES files of $SIZE bytes (names $NAME_BYTES bytes) ..." >&2
started=$(date +%s)
# A read mix makes loadgen write every key exactly once first (SPEC §4); the
# measured phase after it is a token 0.1 s of reads. A prefill write that
# failed (a timeout or an election on a busy machine) leaves a key missing,
# so the fill is repeated (same names: the count stays exact) until loadgen
# reports every key written.
for attempt in 1 2 3; do
    timeout $((FILES / 1000 + 300)) "$LOADGEN" --addr "$ADDRESSES" --clients 64 --pipeline 16 \
        --mix read=1 --duration 0.1 --size "$SIZE" --keys "$FILES" --key-digits $KEY_DIGITS \
        --json >"$WORK/fill.json" 2>"$WORK/fill.log" ||
        { echo "fill failed:" >&2; tail -5 "$WORK/fill.log" >&2; exit 1; }
    grep 'prefill:.*written' "$WORK/fill.log" >&2 || true
    written=$(tail -1 "$WORK/fill.json" | python3 -c 'import json, sys; print(json.load(sys.stdin)["prefill"]["written"])')
    [ "$written" -ge "$FILES" ] && break
done
[ "$written" -ge "$FILES" ] || { echo "3 fills left keys unwritten" >&2; exit 1; }
echo "filled in $(($(date +%s) - started)) s" >&2

# Wait (bounded) until every node holds every file, has a snapshot file and
# its newest snapshot is stable (the helper thread is done).
deadline=$(($(date +%s) + 180))
while :; do
    ready=0
    for id in $(seq 1 $NODES); do
        files=$(metric "$id" raftfs_files)
        if [ "${files:-0}" -ge "$FILES" ] && [ "$(snapshot_files "$id")" -ge 1 ] &&
            ! ls "$WORK/data/$id" | grep -q '\.tmp$'; then
            ready=$((ready + 1))
        fi
    done
    [ "$ready" -eq "$NODES" ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "not every node has $FILES files and a snapshot after 180 s:" >&2
        for id in $(seq 1 $NODES); do
            echo "  node $id: $(metric "$id" raftfs_files) files, snapshot index" \
                "$(metric "$id" raftfs_snapshot_index), applied $(metric "$id" raftfs_applied_index)" >&2
        done
        exit 1
    fi
    sleep 1
done
# Let a snapshot job that started just now finish and the nodes settle.
sleep 5

raw_mb=$(awk -v f="$FILES" -v n=$NAME_BYTES -v s="$SIZE" 'BEGIN { printf "%.1f", f * (n + s) / 1e6 }')
echo
echo "## RSS per node after the fill and a snapshot"
echo
echo "| node | files | raw MB | RSS MB | RSS / raw | snapshot index | log entries in memory | snapshot files |"
echo "|---|---|---|---|---|---|---|---|"
for id in $(seq 1 $NODES); do
    rss=$(rss_kib "${PIDS[$((id - 1))]}")
    files=$(metric "$id" raftfs_files)
    awk -v id="$id" -v files="$files" -v raw="$raw_mb" -v rss="$rss" \
        -v snap="$(metric "$id" raftfs_snapshot_index)" -v entries="$(metric "$id" raftfs_log_entries)" \
        -v count="$(snapshot_files "$id")" \
        'BEGIN { printf "| %d | %d | %.1f | %.1f | %.2f | %s | %s | %s |\n", id, files, raw, rss * 1024 / 1e6, rss * 1024 / 1e6 / raw, snap, entries, count }'
done

echo
echo "## RSS under a sustained ${SUSTAIN_SECS} s write+read load (64 clients x 16 pipelined, $LOAD_KEYS keys)"
echo
"$LOADGEN" --addr "$ADDRESSES" --clients 64 --pipeline 16 --mix write=1,read=1 \
    --duration "$SUSTAIN_SECS" --size "$SIZE" --keys "$LOAD_KEYS" --key-digits $KEY_DIGITS --no-prefill \
    --json >"$WORK/sustain.json" 2>"$WORK/sustain.log" &
LOADGEN_PID=$!
PIDS+=("$LOADGEN_PID")
header="| t s |"
rule="|---|"
for id in $(seq 1 $NODES); do
    header="$header node $id MB |"
    rule="$rule---|"
done
echo "$header"
echo "$rule"
declare -a first last low high
for step in $(seq 0 5 "$SUSTAIN_SECS"); do
    [ "$step" -gt 0 ] && sleep 5
    row="| $step |"
    for id in $(seq 1 $NODES); do
        rss=$(rss_kib "${PIDS[$((id - 1))]}")
        if [ "$step" -eq 0 ]; then
            first[id]=$rss
            low[id]=$rss
            high[id]=$rss
        fi
        last[id]=$rss
        [ "$rss" -lt "${low[id]}" ] && low[id]=$rss
        [ "$rss" -gt "${high[id]}" ] && high[id]=$rss
        row="$row $(awk -v r="$rss" 'BEGIN { printf "%.1f", r * 1024 / 1e6 }') |"
    done
    echo "$row"
done
wait "$LOADGEN_PID" || true
echo
growth="growth first -> last (MB):"
for id in $(seq 1 $NODES); do
    growth="$growth node $id $(awk -v a="${first[id]}" -v b="${last[id]}" 'BEGIN { printf "%+.1f", (b - a) * 1024 / 1e6 }'),"
done
echo "${growth%,}"
range="min / max over the series (MB):"
for id in $(seq 1 $NODES); do
    range="$range node $id $(awk -v a="${low[id]}" -v b="${high[id]}" 'BEGIN { printf "%.0f / %.0f", a * 1024 / 1e6, b * 1024 / 1e6 }'),"
done
echo "${range%,}"
# A sample can fall inside a snapshot job (the helper rebuilds a second map):
# the level once the load stopped and the helper is idle tells growth apart.
sleep 10
settled="settled 10 s after the load (MB):"
for id in $(seq 1 $NODES); do
    settled="$settled node $id $(awk -v r="$(rss_kib "${PIDS[$((id - 1))]}")" 'BEGIN { printf "%.1f", r * 1024 / 1e6 }'),"
done
echo "${settled%,}"
summary=$(tail -1 "$WORK/sustain.json" 2>/dev/null || true)
echo "sustained load: $summary"
