"""Provisioning benchmark on real parts: kube-apiserver + etcd, the driver's processes, two loop disks on one node.

Prints: CreateVolume-to-ready latency p50/p99 over N sequential volumes; wall time of N concurrent CreateVolume;
the agent's resident memory after start-up and with M volumes; API requests of an idle agent over a window.

    .venv/bin/python -m bench.provisioning [--sequential 100] [--concurrent 100] [--resident 200] [--idle 60]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from harness.apiserver import ApiServer, free_port
from harness.csi import MIB, create, delete
from harness.disks import LoopDisks
from harness.driver import Driver
from harness.tools import tools

NODE = "bench-node"
SIZE = 8 * MIB


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def api_requests(metrics_port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("device_localpv_api_requests{"):
            verb = line.split('verb="', 1)[1].split('"', 1)[0]
            out[verb] = float(line.rsplit(" ", 1)[1])
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequential", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--resident", type=int, default=200)
    ap.add_argument("--idle", type=float, default=60.0)
    args = ap.parse_args()
    with ApiServer(tools()) as api, LoopDisks() as disks:
        api.start()
        api.install_driver_objects()
        api.add_node(NODE)
        pool = [disks.pool("ssd", 2048), disks.pool("ssd", 2048)]
        driver = Driver(api, Path(tempfile.mkdtemp(prefix="dlpv-bench-")))
        port = free_port()
        try:
            driver.controller().wait_ready()
            agent = driver.agent(
                NODE, [d.device for d in pool], METRICS_ADDRESS=f"127.0.0.1:{port}", LOG_LEVEL="WARNING"
            )
            agent.wait_ready()
            time.sleep(1)
            assert agent.proc is not None
            rss_start = rss_mib(agent.proc.pid)
            ch = driver.processes["controller"]
            import grpc

            channel = grpc.insecure_channel(f"unix://{ch.socket}")

            latencies = []
            names = []
            for _ in range(args.sequential):
                name = f"pvc-{uuid.uuid4()}"
                t = time.perf_counter()
                create(channel, name, SIZE)
                latencies.append((time.perf_counter() - t) * 1000)
                names.append(name)
            for n in names:
                delete(channel, n)

            names = [f"pvc-{uuid.uuid4()}" for _ in range(args.concurrent)]
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool_exec:
                results = list(pool_exec.map(lambda n: _try_create(channel, n), names))
            wall = time.perf_counter() - t
            ok = sum(results)
            for n in names:
                delete(channel, n)

            names = [f"pvc-{uuid.uuid4()}" for _ in range(args.resident)]
            with concurrent.futures.ThreadPoolExecutor(16) as pool_exec:
                list(pool_exec.map(lambda n: create(channel, n, MIB), names))
            time.sleep(1)
            rss_loaded = rss_mib(agent.proc.pid)

            before = api_requests(port)
            time.sleep(args.idle)
            after = api_requests(port)
            idle = {v: after.get(v, 0) - before.get(v, 0) for v in after}
            for n in names:
                delete(channel, n)

            print(
                f"create-to-ready latency, {args.sequential} sequential: "
                f"p50 {statistics.median(latencies):.0f} ms, p99 {pct(latencies, 99):.0f} ms, "
                f"max {max(latencies):.0f} ms"
            )
            print(
                f"{args.concurrent} concurrent CreateVolume on one node, two disks: {wall:.2f} s wall, "
                f"{ok}/{args.concurrent} succeeded"
            )
            print(
                f"agent resident memory: {rss_start:.1f} MiB after start-up, "
                f"{rss_loaded:.1f} MiB with {args.resident} volumes"
            )
            beyond = sum(n for v, n in idle.items() if v != "watch")
            print(f"idle agent over {args.idle:.0f} s: {beyond:.0f} API requests beyond watches (by verb: {idle})")
        finally:
            driver.stop()


def _try_create(channel: object, name: str) -> bool:
    try:
        create(channel, name, SIZE)  # type: ignore[arg-type]
        return True
    except Exception as e:
        print(f"create {name} failed: {e}")
        return False


if __name__ == "__main__":
    main()
