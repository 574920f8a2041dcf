"""Provisioning benchmark on real parts: kube-apiserver + etcd, the driver's processes, two loop disks on one node.

Prints: CreateVolume-to-ready latency p50/p99 over N sequential volumes; wall time of N concurrent CreateVolume,
and where their time went (below); the agent's resident memory after start-up and with M volumes; API requests of an
idle agent over a window. A count of 0 skips that part.

The breakdown of the concurrent creates comes from what the processes already log, no extra API request: the
controller's "placed on node" line (the DeviceVolume is created), the agent's "ready" line (its status is patched),
which carries the creation's phases in ms from the watch event that queued it, and the bench's own clock around
each call. Log times are to the millisecond, on the same machine's clock.

    .venv/bin/python -m bench.provisioning [--sequential 100] [--concurrent 100] [--resident 200] [--idle 60]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import re
import statistics
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from csidriver.api import naming
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


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
_PLACED = re.compile(r"volume (\S+): placed on node")
_READY = re.compile(r"volume (\S+) ready: .*\((phases in ms: [^)]*)\)|volume (\S+) ready: ")
_PHASE = re.compile(r"([a-z-]+)=(\d+)")
_BATCH = re.compile(r"(\d+) partitions in one table write")


def _log_time(line: str) -> float | None:
    m = _LOG_TIME.match(line)
    if m is None:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _log_events(path: Path, pattern: re.Pattern[str]) -> dict[str, tuple[float, re.Match[str]]]:
    """The time and match of the last line matching `pattern` for each volume name (group 1, or 3)."""
    out: dict[str, tuple[float, re.Match[str]]] = {}
    for line in path.read_text(errors="replace").splitlines():
        m = pattern.search(line)
        when = _log_time(line)
        if m is not None and when is not None:
            out[m.group(1) or m.group(3)] = (when, m)
    return out


def breakdown(
    calls: dict[str, tuple[float, float]], controller_log: Path, agent_log: Path
) -> tuple[list[str], dict[str, list[float]]]:
    """Per-phase seconds of each create, from its call's start and end (epoch seconds) and the two logs."""
    placed = _log_events(controller_log, _PLACED)
    ready = _log_events(agent_log, _READY)
    phases: dict[str, list[float]] = {}
    order: list[str] = []

    def add(phase: str, seconds: float) -> None:
        if phase not in phases:
            order.append(phase)
        phases.setdefault(phase, []).append(seconds)

    for csi_name, (sent, answered) in calls.items():
        name = naming.object_name(csi_name)
        if name not in placed or name not in ready:
            continue
        created = placed[name][0]
        done, m = ready[name]
        add("controller: CreateVolume -> DeviceVolume created", created - sent)
        spent = {k: int(v) / 1000 for k, v in _PHASE.findall(m.group(2) or "")}
        since_event = spent.pop("since-event", None)
        if since_event is not None:
            add("watch: created -> agent event", done - since_event - created)
            for k, v in spent.items():
                add(f"agent: {k}", v)
            add("agent: unaccounted", since_event - sum(spent.values()))
        else:
            add("agent: created -> status patched (no phases logged)", done - created)
        add("controller: status patched -> CreateVolume answered", answered - done)
        add("total", answered - sent)
    return order, phases


def print_breakdown(order: list[str], phases: dict[str, list[float]], batches: list[int]) -> None:
    print("  phase (ms)                                           p50     p90     max    mean")
    for phase in order:
        v = phases[phase]
        print(
            f"  {phase:<50} {pct(v, 50) * 1000:>6.0f}  {pct(v, 90) * 1000:>6.0f}  {max(v) * 1000:>6.0f}"
            f"  {statistics.fmean(v) * 1000:>6.0f}"
        )
    if batches:
        print(f"  partition-table writes shared by several creates: {len(batches)}, sizes {sorted(batches)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequential", type=int, default=100)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--resident", type=int, default=200)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument(
        "--agent-env", action="append", default=[], metavar="NAME=VALUE", help="a setting of the agent, to compare"
    )
    args = ap.parse_args()
    agent_env = dict(kv.split("=", 1) for kv in args.agent_env)
    with ApiServer(tools()) as api, LoopDisks() as disks:
        api.start()
        api.install_driver_objects()
        api.add_node(NODE)
        pool = [disks.pool("ssd", 2048), disks.pool("ssd", 2048)]
        driver = Driver(api, Path(tempfile.mkdtemp(prefix="dlpv-bench-")))
        port = free_port()
        try:
            driver.controller().wait_ready()
            # INFO: one line per volume made (with its phases), one per shared table write.
            agent = driver.agent(
                NODE, [d.device for d in pool], METRICS_ADDRESS=f"127.0.0.1:{port}", LOG_LEVEL="INFO", **agent_env
            )
            agent.wait_ready()
            time.sleep(1)
            assert agent.proc is not None
            rss_start = rss_mib(agent.proc.pid)
            ch = driver.processes["controller"]
            import grpc

            channel = grpc.insecure_channel(f"unix://{ch.socket}")

            latencies: list[float] = []
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
            calls: dict[str, tuple[float, float]] = {}
            agent_log_start = agent.log.stat().st_size
            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(max(args.concurrent, 1)) as pool_exec:
                results = list(pool_exec.map(lambda n: _try_create(channel, n, calls), names))
            wall = time.perf_counter() - t
            ok = sum(results)
            order, phases = breakdown(calls, ch.log, agent.log)
            batch_lines = agent.log.read_text(errors="replace")[agent_log_start:]
            batches = [int(m.group(1)) for m in _BATCH.finditer(batch_lines)]
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

            if latencies:
                print(
                    f"create-to-ready latency, {args.sequential} sequential: "
                    f"p50 {statistics.median(latencies):.0f} ms, p99 {pct(latencies, 99):.0f} ms, "
                    f"max {max(latencies):.0f} ms"
                )
            print(
                f"{args.concurrent} concurrent CreateVolume on one node, two disks: {wall:.2f} s wall, "
                f"{ok}/{args.concurrent} succeeded"
            )
            print_breakdown(order, phases, batches)
            print(
                f"agent resident memory: {rss_start:.1f} MiB after start-up, "
                f"{rss_loaded:.1f} MiB with {args.resident} volumes"
            )
            beyond = sum(n for v, n in idle.items() if v != "watch")
            print(f"idle agent over {args.idle:.0f} s: {beyond:.0f} API requests beyond watches (by verb: {idle})")
        finally:
            driver.stop()


def _try_create(channel: object, name: str, calls: dict[str, tuple[float, float]]) -> bool:
    sent = time.time()
    try:
        create(channel, name, SIZE)  # type: ignore[arg-type]
        calls[name] = (sent, time.time())
        return True
    except Exception as e:
        print(f"create {name} failed: {e}")
        return False


if __name__ == "__main__":
    main()
