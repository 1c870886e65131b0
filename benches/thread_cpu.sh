#!/bin/bash
# Per-thread CPU of a 5-node local cluster under a 10 s write load (issue 6 profiling).
# usage: benches/thread_cpu.sh TAG [--no-fsync]; needs base ports 7700-7704 / 8700-8704 free.
mkdir -p ${OUT:-/tmp/raftfs-prof}
# usage: cpu.sh tag [cluster args]; per-thread CPU (ms) during a 10 s loadgen run
tag=$1; shift
B=$(dirname "$0")/../target/release
rm -rf ${OUT:-/tmp/raftfs-prof}/data-$tag
$B/raftfs cluster --nodes 5 --base-port 7700 --data-dir ${OUT:-/tmp/raftfs-prof}/data-$tag "$@" > ${OUT:-/tmp/raftfs-prof}/cl-$tag.log 2>&1 &
CP=$!
sleep 3
snap() { for t in /proc/$CP/task/*; do read -r -a s < $t/stat; echo "$(cat $t/comm) $(( ${s[13]} + ${s[14]} ))"; done; }
snap > ${OUT:-/tmp/raftfs-prof}/cpu0-$tag
/usr/bin/time -f "loadgen cpu user %U sys %S" $B/loadgen --addr 127.0.0.1:7700,127.0.0.1:7701,127.0.0.1:7702,127.0.0.1:7703,127.0.0.1:7704 --clients 64 --pipeline 16 --duration ${DUR:-10} --mix write=1 --size ${SIZE:-100} --keys 10000 > ${OUT:-/tmp/raftfs-prof}/lg-$tag.log 2>&1
snap > ${OUT:-/tmp/raftfs-prof}/cpu1-$tag
L=$(grep "won the election" ${OUT:-/tmp/raftfs-prof}/cl-$tag.log | tail -1 | sed -E "s/.*node ([0-9]) won.*/\1/")
kill $CP; wait $CP 2>/dev/null
echo "== $tag leader=node-$L load=$(cut -d' ' -f1 /proc/loadavg)"
grep -E "^ops|latency" ${OUT:-/tmp/raftfs-prof}/lg-$tag.log; grep "loadgen cpu" ${OUT:-/tmp/raftfs-prof}/lg-$tag.log
paste ${OUT:-/tmp/raftfs-prof}/cpu0-$tag ${OUT:-/tmp/raftfs-prof}/cpu1-$tag | awk '{d=$4-$2; if(d>0){a[$1]+=d}} END{for(k in a) printf "%s=%dms ", k, a[k]*10; print ""}'
echo "snapshots: $(ls ${OUT:-/tmp/raftfs-prof}/data-$tag/1/ | grep -c snap) entries(last snap idx): $(ls ${OUT:-/tmp/raftfs-prof}/data-$tag/1/ | grep snap | tail -1)"
