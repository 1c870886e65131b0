#!/usr/bin/env python3
"""Hostile clients too heavy for a test (issue 14): 10,000 idle client
connections on the leader of a local 3-node cluster, while a well-behaved
client does write-then-read of a small file (pipelined 1).

Prints a markdown table: case, connections held, well-behaved p50/p99,
leader RSS before and at its peak (VmRSS from /proc/PID/status).

Usage: benches/hostile_clients.py [--binary target/release/raftfs]
       [--connections 10000] [--seconds 10] [--base-port 23400]
Needs an open files limit above the connection count (it raises its soft
limit to the hard one; the nodes do the same).
"""
import argparse
import os
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def command(sock, request):
    sock.sendall(request)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    line = data.split(b"\r\n", 1)[0]
    if line.startswith(b"CONTENTS"):
        size = int(line.split()[2])
        need = len(line) + 2 + size + 2
        while len(data) < need:
            data += sock.recv(65536)
    return line


def well_behaved(address, stop, latencies):
    sock = socket.create_connection(address)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = 0
    while not stop.is_set():
        n += 1
        value = b"good-%d" % n
        started = time.perf_counter()
        reply = command(sock, b"write good %d\r\n%s\r\n" % (len(value), value))
        latencies.append(time.perf_counter() - started)
        assert reply.startswith(b"OK "), reply
        started = time.perf_counter()
        reply = command(sock, b"read good\r\n")
        latencies.append(time.perf_counter() - started)
        assert reply.startswith(b"CONTENTS"), reply
        time.sleep(0.002)


def leader_of(metrics):
    for metric_port in metrics:
        try:
            with socket.create_connection(("127.0.0.1", metric_port), timeout=1) as s:
                s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
                body = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    body += chunk
            for line in body.decode().splitlines():
                if line.startswith("raftfs_leader_id ") and int(float(line.split()[1])) > 0:
                    return int(float(line.split()[1]))
        except OSError:
            pass
    return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default="target/release/raftfs")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--base-port", type=int, default=23400)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 100:
        raise SystemExit(f"the open files hard limit {hard} is below {args.connections + 100}")

    base = args.base_port
    directory = tempfile.mkdtemp(prefix="raftfs-hostile-")
    config = os.path.join(directory, "cluster.toml")
    with open(config, "w") as f:
        f.write(f'fsync = false\ndata_dir = "{directory}/data"\n')
        for i in range(1, 4):
            f.write(f'[[node]]\nid = {i}\nclient = "127.0.0.1:{base + i}"\n'
                    f'peer = "127.0.0.1:{base + 100 + i}"\nmetrics = "127.0.0.1:{base + 200 + i}"\n')
    nodes = {}
    try:
        for i in range(1, 4):
            log = open(os.path.join(directory, f"node{i}.log"), "w")
            nodes[i] = subprocess.Popen([args.binary, "node", "--config", config, "--id", str(i)],
                                        stdout=log, stderr=log)
        leader = None
        deadline = time.time() + 15
        while leader is None and time.time() < deadline:
            time.sleep(0.2)
            leader = leader_of([base + 201, base + 202, base + 203])
        if leader is None:
            raise SystemExit("no leader")
        address = ("127.0.0.1", base + leader)
        pid = nodes[leader].pid
        rows = []

        # Case: many idle connections.
        rss_before = rss_kib(pid)
        stop = threading.Event()
        latencies = []
        good = threading.Thread(target=well_behaved, args=(address, stop, latencies))
        good.start()
        peak = [rss_before]

        def sample():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_kib(pid))
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        held = []
        refused = 0
        for n in range(args.connections):
            try:
                held.append(socket.create_connection(address, timeout=5))
            except OSError:
                refused += 1
            if n % 50 == 49:
                time.sleep(0.01)
        time.sleep(args.seconds)
        stop.set()
        good.join()
        sampler.join()
        latencies.sort()
        p50 = latencies[len(latencies) // 2] * 1e3
        p99 = latencies[int(len(latencies) * 0.99)] * 1e3
        rows.append((f"{args.connections} idle connections", len(held), refused, len(latencies),
                     p50, p99, rss_before, peak[0]))
        for s in held:
            s.close()

        print("| case | held | refused | good ops | good p50 ms | good p99 ms | leader RSS before MiB | peak MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for case, n_held, n_refused, ops, p50, p99, before, top in rows:
            print(f"| {case} | {n_held} | {n_refused} | {ops} | {p50:.2f} | {p99:.2f} | "
                  f"{before / 1024:.1f} | {top / 1024:.1f} |")
    finally:
        for process in nodes.values():
            process.terminate()
        for process in nodes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
