#!/usr/bin/env bash
# The cluster benchmark matrix (see benches/cluster.py for knobs):
#   benches/cluster.sh                       full matrix, ~25 min per fsync mode
#   BENCH_SECS=3 BENCH_REPS=1 benches/cluster.sh   quick look
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --quiet
exec python3 benches/cluster.py "$@"
