#!/usr/bin/env python3
"""CPU of an idle node holding N waiting watches (issue 18).

Starts one single-member `raftfs node` (fsync off) on 127.0.0.1, then for
each run measures the node's CPU (user + system, from /proc/PID/stat) over
MEASURE seconds twice, in the same run: "before" with no client at all and
"after" with N connections each holding a watch that waits (`watch idle-I 0`
on files that do not exist), and the node's RSS growth per watch. Prints a table of every run, the medians and
the after/before ratio. The target is "after" under 1 % of one core: an idle
watch costs no CPU (nothing is scanned per tick).

    benches/watch_idle.py                    N=10000, 5 runs of 5 s
    WATCHES=50000 RUNS=3 benches/watch_idle.py

Environment: WATCHES (default 10000), RUNS (5), MEASURE (seconds, 5),
BASE_PORT (first port, 17600: client P, peer P+10). Needs `cargo build
--release` first and a descriptor limit above WATCHES (raised here up to the
hard limit). Everything started is killed on exit; every wait is bounded.
"""

import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

WATCHES = int(os.environ.get("WATCHES", "10000"))
RUNS = int(os.environ.get("RUNS", "5"))
MEASURE_S = float(os.environ.get("MEASURE", "5"))
BASE_PORT = int(os.environ.get("BASE_PORT", "17600"))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
BINARY = os.path.join(ROOT, "target", "release", "raftfs")
TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def share_percent(pid):
    before, started = cpu_ticks(pid), time.monotonic()
    time.sleep(MEASURE_S)
    used, elapsed = cpu_ticks(pid) - before, time.monotonic() - started
    return 100.0 * used / (elapsed * TICKS_PER_S)


def wait_until_serving(address, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(address, timeout=1) as probe:
                probe.sendall(b"read bench-probe\r\n")
                if probe.recv(64).startswith((b"ERR_FILE_NOT_FOUND", b"CONTENTS")):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit(f"the node at {address} did not start serving in {timeout_s} s")


def main():
    if not os.path.exists(BINARY):
        sys.exit("build first: cargo build --release")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < WATCHES + 100:
        sys.exit(f"need {WATCHES + 100} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    address = ("127.0.0.1", BASE_PORT)
    with tempfile.TemporaryDirectory() as directory:
        config = os.path.join(directory, "cluster.toml")
        with open(config, "w") as text:
            text.write(
                f'fsync = false\ndata_dir = "{directory}/data"\n'
                f'[[node]]\nid = 1\nclient = "127.0.0.1:{BASE_PORT}"\n'
                f'peer = "127.0.0.1:{BASE_PORT + 10}"\n'
            )
        log = open(os.path.join(directory, "node.log"), "w")
        node = subprocess.Popen(
            [BINARY, "node", "--config", config, "--id", "1"],
            stdout=log,
            stderr=log,
            env=dict(os.environ, RUST_LOG="warn"),
        )
        try:
            wait_until_serving(address)
            rows = []
            for run in range(RUNS):
                time.sleep(0.5)
                before = share_percent(node.pid)
                rss_before = rss_kib(node.pid)
                watchers = []
                for index in range(WATCHES):
                    watcher = socket.create_connection(address, timeout=5)
                    watcher.sendall(f"watch idle-{run}-{index} 0\r\n".encode())
                    watchers.append(watcher)
                time.sleep(1.0)
                after = share_percent(node.pid)
                rss_growth = rss_kib(node.pid) - rss_before
                for watcher in watchers:
                    # Reset instead of FIN: no TIME_WAIT left to exhaust the
                    # ephemeral ports over several runs.
                    watcher.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    watcher.close()
                rows.append((before, after))
                print(
                    f"run {run + 1}: no watches {before:5.2f} %   "
                    f"{WATCHES} watches {after:5.2f} %   "
                    f"RSS +{rss_growth} KiB ({rss_growth * 1024 // WATCHES} bytes a watch "
                    "with its connection)",
                    flush=True,
                )
            before = statistics.median(row[0] for row in rows)
            after = statistics.median(row[1] for row in rows)
            print()
            print("| node CPU, % of one core (median) | no watches | "
                  f"{WATCHES} idle watches | ratio |")
            print("|---|---|---|---|")
            ratio = after / before if before > 0 else float("inf")
            print(f"| {RUNS} runs of {MEASURE_S:g} s | {before:.2f} | {after:.2f} | {ratio:.2f} |")
        finally:
            node.kill()
            node.wait(timeout=10)
            log.close()


if __name__ == "__main__":
    main()
