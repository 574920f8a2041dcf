"""The fault drill, longer: `.venv/bin/python -m bench.fault_drill [--operations 200] [--seed N]`.

One node with two loop pool disks; the agent and the controller are killed at random moments, the API server is
restarted once. Prints operations by kind, kills of each process, API server restarts, volumes verified (data written
before a kill read back after it), leaked partitions, leaked or stuck objects and mounts, double allocations (checked
on the partition tables after every create), wall time and the latency of each kind of call under the drill (as the
caller sees it: retries included). Exits non-zero when anything leaked or was allocated twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from harness.apiserver import ApiServer
from harness.disks import LoopDisks, partitions
from harness.drill import KINDS, DrillReport, layout_problems, leftovers, run_drill
from harness.driver import Driver
from harness.tools import tools

NODE = "drill-node"


def _progress(every: int) -> Callable[[DrillReport], None]:
    began = time.monotonic()

    def show(report: DrillReport) -> None:
        if report.operations % every == 0:
            print(
                f"  {report.operations} cycles, {time.monotonic() - began:.0f} s, kills {sum(report.kills.values())}",
                file=sys.stderr,
                flush=True,
            )

    return show


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--operations", type=int, default=200, help="create/publish/write/unpublish cycles")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    began = time.monotonic()
    with ApiServer(tools()) as api, LoopDisks() as disks:
        api.start()
        api.install_driver_objects()
        api.add_node(NODE)
        pool = [disks.pool("ssd", 2048), disks.pool("ssd", 2048)]
        workdir = Path(tempfile.mkdtemp(prefix="dlpv-drill-"))
        driver = Driver(api, workdir)
        try:
            ctl = driver.controller(LEASE_SECONDS="4")
            ctl.wait_ready()
            agent = driver.agent(NODE, [d.device for d in pool])
            agent.wait_ready()
            report, _ = run_drill(
                api,
                [agent, ctl],
                lambda: grpc.insecure_channel(f"unix://{ctl.socket}"),
                lambda: grpc.insecure_channel(f"unix://{agent.socket}"),
                workdir,
                args.operations,
                args.seed,
                disks=[d.device for d in pool],
                progress=_progress(max(1, args.operations // 20)),
            )
            # The agent deletes a partition before it lets the object go; give a last deletion a moment.
            deadline = time.monotonic() + 30
            while True:
                tables = layout_problems([d.device for d in pool])
                leaked = sum(len(partitions(d.device)) - 1 for d in pool)
                items = json.loads(api.kubectl("get", "devicevolumes", "-n", "openebs", "-o", "json"))["items"]
                if (leaked == 0 and not items) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            stuck = [i["metadata"]["name"] for i in items if i["metadata"].get("deletionTimestamp")]
            left = leftovers(workdir)
        finally:
            driver.stop()
    wall = time.monotonic() - began
    _print(report, leaked, items, stuck, left, report.double_allocations | set(tables), wall)
    if leaked or items or left or report.double_allocations or tables:
        sys.exit(1)


def _print(
    report: DrillReport,
    leaked: int,
    items: list[dict[str, object]],
    stuck: list[str],
    left: list[str],
    doubles: set[str],
    wall: float,
) -> None:
    print(f"fault drill: {report.operations} create/publish/write/unpublish cycles, drill {report.seconds:.0f} s")
    print("  operations by kind: " + ", ".join(f"{k} {report.by_kind[k]}" for k in KINDS))
    print(
        "  kills: "
        + ", ".join(f"{name} {n}" for name, n in sorted(report.kills.items()))
        + f"; API server restarts {report.apiserver_restarts}"
    )
    retried = ", ".join(f"{code} {n}" for code, n in report.retries.most_common()) or "none"
    print(f"  attempts answered with a retryable code (then retried): {retried}")
    print(
        f"  volumes verified: {report.verified} (of which written before a kill or restart and read back after it:"
        f" {report.verified_across_fault})"
    )
    print(f"  leaked partitions: {leaked}")
    print(f"  DeviceVolumes left: {len(items)} (stuck in deletion: {len(stuck)}); mounts or targets left: {len(left)}")
    for path in left[:10]:
        print(f"    {path}")
    print(f"  double allocations: {len(doubles)} (partition tables checked {report.layout_checks} times)")
    for problem in sorted(doubles)[:10]:
        print(f"    {problem}")
    for kind in ("create", "delete", "publish", "unpublish"):
        n = len(report.latencies.get(kind, []))
        print(
            f"  {kind} latency under the drill: p50 {report.percentile(kind, 50) * 1000:.0f} ms,"
            f" p99 {report.percentile(kind, 99) * 1000:.0f} ms, max {report.percentile(kind, 100) * 1000:.0f} ms"
            f" ({n} calls)"
        )
    print(f"  wall time: {wall:.0f} s (with setup and teardown)")


if __name__ == "__main__":
    main()
