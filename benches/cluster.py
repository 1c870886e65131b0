#!/usr/bin/env python3
"""Cluster benchmark matrix for raftfs (issue 6): loadgen against a fresh local
cluster, nodes' CPU time from /proc, a markdown table on stdout.

Run through benches/cluster.sh (it builds release first). Knobs (environment):
  BENCH_SECS     seconds per run (default 10)
  BENCH_REPS     repetitions per cell, median reported (default 3)
  BENCH_NODES    cluster size (default 5)
  BENCH_FSYNC    "on", "off" or "on,off" (default on,off)
  BENCH_WORKLOADS comma list of write,read,mix,cas (default all)
  BENCH_SIZES    comma list of value sizes in bytes (default 100,4096)
  BENCH_SHAPES   comma list of CxP (default 1x1,64x16,256x4)
  BENCH_REDIS    1 = also run redis-benchmark (appendfsync everysec) and add
                 a ratio column for write (SET) and read (GET)
  BENCH_RAFTFS   the raftfs binary to measure (default target/release/raftfs;
                 an older build gives a before/after in one session)
  BENCH_HGRM_DIR write loadgen's .hgrm percentile files there
  BENCH_SPREAD   "leader", "spread" or "leader,spread" (default leader):
                 every client on the leader, or clients spread over every
                 node (loadgen --spread: followers forward writes and serve
                 reads with follower ReadIndex)
  BENCH_TLS      "off", "on" or "off,on" (unset: `raftfs cluster`, one
                 process): with it, each node is its own `raftfs node`
                 process from a generated cluster.toml, so plain and TLS
                 compare the same layout; "on" makes certificates with
                 `raftfs certs` and turns on [peer_tls] and [client_tls]
                 (loadgen --tls-ca). CPU columns are then whole processes.
The "leader CPU" column is the leader node's thread alone (its share of the
work; spreading clients should lower it).
Only 127.0.0.1 is used. Every run is bounded by its duration.
"""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RAFTFS = os.environ.get("BENCH_RAFTFS") or os.path.join(ROOT, "target", "release", "raftfs")
LOADGEN = os.path.join(ROOT, "target", "release", "loadgen")
BASE_PORT = int(os.environ.get("BENCH_BASE_PORT", "17100"))
TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")

WORKLOADS = {
    "write": ("write=1", 10000),
    "read": ("read=1", 10000),
    "mix": ("write=1,read=1", 10000),
    "cas": ("cas=4,read=1", 10),
}


def env_list(name, default):
    return [x for x in os.environ.get(name, default).split(",") if x]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_SECOND


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def wait_port(port, timeout_s=10):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


class Cluster:
    def __init__(self, nodes, fsync):
        self.dir = tempfile.mkdtemp(prefix="raftfs-bench-")
        args = [RAFTFS, "cluster", "--nodes", str(nodes), "--base-port", str(BASE_PORT),
                "--data-dir", os.path.join(self.dir, "data")]
        if not fsync:
            args.append("--no-fsync")
        self.log = open(os.path.join(self.dir, "cluster.log"), "w")
        self.log_path = self.log.name
        self.process = subprocess.Popen(
            args, stdout=self.log, stderr=subprocess.STDOUT,
            env=dict(os.environ, RUST_LOG="warn,raftfs::net::reactor::observe=info"))
        self.nodes = nodes
        self.addresses = ",".join(f"127.0.0.1:{BASE_PORT + i}" for i in range(nodes))
        for i in range(nodes):
            if not wait_port(BASE_PORT + i):
                raise SystemExit(f"node {i + 1} did not start; see {self.log.name}")
        time.sleep(1.0)  # an election

    def leader(self):
        """The id of the node that last won an election (from the log)."""
        self.log.flush()
        leader = None
        with open(self.log_path) as f:
            for line in f:
                if "won the election" in line:
                    leader = int(line.split("node ", 1)[1].split()[0])
        return leader

    def leader_first(self):
        """The client addresses with the leader's first (loadgen without
        --spread puts every client on the first address)."""
        leader = self.leader() or 1
        ports = [BASE_PORT + leader - 1] + [BASE_PORT + i for i in range(self.nodes)
                                            if i != leader - 1]
        return ",".join(f"127.0.0.1:{p}" for p in ports)

    def thread_cpu_seconds(self, node_id):
        """CPU time of node `node_id`'s thread (threads are named node-N)."""
        for task in os.listdir(f"/proc/{self.process.pid}/task"):
            try:
                with open(f"/proc/{self.process.pid}/task/{task}/comm") as f:
                    if f.read().strip() != f"node-{node_id}":
                        continue
                return cpu_seconds(f"{self.process.pid}/task/{task}")
            except OSError:
                continue
        return 0.0

    tls = False
    ca = None

    def cpu_seconds(self):
        return cpu_seconds(self.process.pid)

    def rss_kib(self):
        return rss_kib(self.process.pid)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_loadgen(addresses, mix, keys, size, clients, pipeline, secs, hgrm=None, spread=False,
                tls_ca=None):
    args = [LOADGEN, "--addr", addresses, "--clients", str(clients), "--pipeline", str(pipeline),
            "--duration", str(secs), "--mix", mix, "--size", str(size), "--keys", str(keys), "--json"]
    if spread:
        args.append("--spread")
    if tls_ca:
        args += ["--tls-ca", tls_ca]
    if hgrm:
        args += ["--hgrm", hgrm]
    out = subprocess.run(args, capture_output=True, text=True, timeout=secs + 60)
    lines = [l for l in out.stdout.strip().splitlines() if l.startswith("{")]
    if not lines:
        raise SystemExit(f"loadgen failed: {out.stderr[-2000:]}")
    return json.loads(lines[-1])


def redis_figures(size, clients, pipeline, secs):
    """SET and GET requests/s from redis-benchmark against a throwaway
    redis-server with appendfsync everysec (the issue's reference)."""
    if not shutil.which("redis-server") or not shutil.which("redis-benchmark"):
        return None
    port = BASE_PORT + 500
    workdir = tempfile.mkdtemp(prefix="raftfs-bench-redis-")
    server = subprocess.Popen(["redis-server", "--port", str(port), "--appendonly", "yes",
                               "--appendfsync", "everysec", "--save", "", "--dir", workdir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        figures = {}
        for test in ("set", "get"):
            requests = max(100000, int(secs * 300000 * pipeline / 16))
            out = subprocess.run(["redis-benchmark", "-p", str(port), "-t", test, "-d", str(size),
                                  "-r", "10000", "-c", str(clients), "-P", str(pipeline),
                                  "-n", str(requests), "--csv"],
                                 capture_output=True, text=True, timeout=secs * 10 + 60)
            for line in out.stdout.splitlines():
                cells = [c.strip('"') for c in line.split(",")]
                if cells and cells[0].upper() in ("SET", "GET"):
                    figures[cells[0].upper()] = float(cells[1])
        return figures
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)


class NodesCluster:
    """`nodes` separate `raftfs node` processes (BENCH_TLS), plain or TLS on
    both ports; the same interface as Cluster."""

    def __init__(self, nodes, fsync, tls):
        self.dir = tempfile.mkdtemp(prefix="raftfs-bench-")
        self.nodes = nodes
        self.tls = tls
        config = os.path.join(self.dir, "cluster.toml")
        with open(config, "w") as f:
            f.write(f"fsync = {'true' if fsync else 'false'}\ndata_dir = \"data\"\n")
            if tls:
                f.write('[peer_tls]\nca = "certs/ca.pem"\ncert = "certs/node-{id}.pem"\n'
                        'key = "certs/node-{id}.key"\n'
                        '[client_tls]\ncert = "certs/node-{id}.pem"\nkey = "certs/node-{id}.key"\n')
            for i in range(nodes):
                f.write(f'[[node]]\nid = {i + 1}\nclient = "127.0.0.1:{BASE_PORT + i}"\n'
                        f'peer = "127.0.0.1:{BASE_PORT + 1000 + i}"\n')
        self.ca = os.path.join(self.dir, "certs", "ca.pem") if tls else None
        if tls:
            subprocess.run([RAFTFS, "certs", "--config", config, "--out",
                            os.path.join(self.dir, "certs")], check=True, capture_output=True)
        self.processes = []
        self.log_paths = []
        for i in range(nodes):
            log_path = os.path.join(self.dir, f"node-{i + 1}.log")
            log = open(log_path, "w")
            self.log_paths.append(log_path)
            self.processes.append(subprocess.Popen(
                [RAFTFS, "node", "--config", config, "--id", str(i + 1)], cwd=self.dir,
                stdout=log, stderr=subprocess.STDOUT,
                env=dict(os.environ, RUST_LOG=os.environ.get(
                    "BENCH_RUST_LOG", "warn,raftfs::net::reactor::observe=info"))))
            log.close()
        for i in range(nodes):
            if not wait_port(BASE_PORT + i):
                raise SystemExit(f"node {i + 1} did not start; see {self.log_paths[i]}")
        time.sleep(1.5)  # an election

    def leader(self):
        latest = None
        for log_path in self.log_paths:
            with open(log_path) as f:
                for line in f:
                    if "won the election" in line:
                        stamp = line.split()[0]
                        node = int(line.split("node ", 1)[1].split()[0])
                        if latest is None or stamp > latest[0]:
                            latest = (stamp, node)
        return latest[1] if latest else None

    leader_first = Cluster.leader_first

    def cpu_seconds(self):
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def thread_cpu_seconds(self, node_id):
        return cpu_seconds(self.processes[node_id - 1].pid)

    def rss_kib(self):
        return sum(rss_kib(p.pid) for p in self.processes)

    def stop(self):
        for p in self.processes:
            p.send_signal(signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def main():
    secs = float(os.environ.get("BENCH_SECS", "10"))
    reps = int(os.environ.get("BENCH_REPS", "3"))
    nodes = int(os.environ.get("BENCH_NODES", "5"))
    fsyncs = env_list("BENCH_FSYNC", "on,off")
    workloads = env_list("BENCH_WORKLOADS", "write,read,mix,cas")
    sizes = [int(s) for s in env_list("BENCH_SIZES", "100,4096")]
    shapes = [tuple(int(x) for x in s.split("x")) for s in env_list("BENCH_SHAPES", "1x1,64x16,256x4")]
    spreads = env_list("BENCH_SPREAD", "leader")
    with_redis = os.environ.get("BENCH_REDIS") == "1"
    hgrm_dir = os.environ.get("BENCH_HGRM_DIR")
    if hgrm_dir:
        os.makedirs(hgrm_dir, exist_ok=True)

    redis = {}
    tls_modes = env_list("BENCH_TLS", "")
    header = ["fsync", "workload", "clients on", "size", "clients×pipeline", "ops/s", "p50 ms",
              "p99 ms", "p99.9 ms", "CPU µs/op (all nodes)", "leader CPU µs/op", "errors"]
    if with_redis:
        header.append("vs redis")
    rows = []
    print(f"raftfs cluster benchmark: {nodes} nodes, {secs:g} s per run, median of {reps}",
          file=sys.stderr)
    if tls_modes:
        header.insert(1, "TLS")
    for fsync, tls_mode in [(f, t) for f in fsyncs for t in (tls_modes or [None])]:
        if tls_mode is None:
            cluster = Cluster(nodes, fsync == "on")
        else:
            cluster = NodesCluster(nodes, fsync == "on", tls_mode == "on")
        try:
            for workload in workloads:
                mix, keys = WORKLOADS[workload]
                for size in sizes:
                    for clients, pipeline in shapes:
                        for spread in spreads:
                            results = []
                            for rep in range(reps):
                                hgrm = None
                                if hgrm_dir:
                                    hgrm = os.path.join(hgrm_dir, f"{fsync}-{tls_mode or 'plain'}-{workload}-{spread}-{size}-{clients}x{pipeline}-{rep}.hgrm")
                                leader = cluster.leader() or 1
                                cpu_before = cluster.cpu_seconds()
                                leader_before = cluster.thread_cpu_seconds(leader)
                                report = run_loadgen(cluster.leader_first(), mix, keys, size, clients,
                                                     pipeline, secs, hgrm, spread == "spread",
                                                     cluster.ca)
                                cpu_used = cluster.cpu_seconds() - cpu_before
                                leader_used = cluster.thread_cpu_seconds(leader) - leader_before
                                report["cpu_us_per_op"] = cpu_used * 1e6 / max(report["ops"], 1)
                                report["leader_cpu_us_per_op"] = leader_used * 1e6 / max(report["ops"], 1)
                                results.append(report)
                            median = sorted(results, key=lambda r: r["throughput"])[len(results) // 2]
                            row = [fsync, workload, "every node" if spread == "spread" else "leader",
                                   str(size), f"{clients}×{pipeline}",
                                   f"{median['throughput']:,.0f}", f"{median['p50_us'] / 1000:.2f}",
                                   f"{median['p99_us'] / 1000:.2f}", f"{median['p999_us'] / 1000:.2f}",
                                   f"{statistics.median(r['cpu_us_per_op'] for r in results):.1f}",
                                   f"{statistics.median(r['leader_cpu_us_per_op'] for r in results):.1f}",
                                   str(sum(r['errors'] for r in results))]
                            if tls_modes:
                                row.insert(1, tls_mode)
                            if with_redis:
                                key = {"write": "SET", "read": "GET"}.get(workload)
                                ratio = ""
                                if key and clients > 1:
                                    if (size, clients, pipeline) not in redis:
                                        redis[(size, clients, pipeline)] = redis_figures(size, clients, pipeline, secs) or {}
                                    reference = redis[(size, clients, pipeline)].get(key)
                                    if reference:
                                        ratio = f"{median['throughput'] / reference:.0%} of {reference:,.0f}"
                                row.append(ratio)
                            rows.append(row)
                            print("  " + " | ".join(row), file=sys.stderr)
            rss = cluster.rss_kib()
            print(f"cluster RSS after the fsync={fsync} runs: {rss / 1024:.0f} MiB (all nodes)",
                  file=sys.stderr)
        finally:
            cluster.stop()

    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
