"""PVC-to-Bound latency and API requests per volume, through the real provisioner, PV controller and scheduler.

    .venv/bin/python -m bench.kubernetes [--sequential 100] [--burst 100]

API requests are counted by the API server itself (audit log), per component: our controller, our agents,
and the csi-provisioner (same service account as our controller, told apart by user agent).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.provisioning import pct
from harness.apiserver import ApiServer
from harness.kubernetes import KubeCluster
from harness.objects import MIB, create_pvcs, delete_pvcs, pvc_body, storage_class, wait_bound
from harness.tools import tools


def audit_counts(log: Path, start: int) -> tuple[Counter[tuple[str, str]], int]:
    """(component, verb) -> requests, from byte offset `start` of the audit log; and the new offset."""
    counts: Counter[tuple[str, str]] = Counter()
    with log.open("rb") as f:
        f.seek(start)
        data = f.read()
    for line in data.splitlines():
        ev = json.loads(line)
        user = ev.get("user", {}).get("username", "")
        agent = ev.get("userAgent", "")
        if user.endswith(":openebs-device-node-sa"):
            component = "agents"
        elif user.endswith(":openebs-device-controller-sa"):
            component = "provisioner-sidecar" if "csi-provisioner" in agent else "controller"
        else:
            continue
        counts[(component, ev.get("verb", ""))] += 1
    return counts, start + len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequential", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    args = ap.parse_args()
    api = ApiServer(tools()).start(audit=True)
    kube = KubeCluster(api, api.tools, Path(tempfile.mkdtemp(prefix="dlpv-kbench-")))
    try:
        api.install_driver_objects()
        kube.start_kube_components()
        kube.start_driver()
        kube.add_node("node-1", [("ssd", 2048), ("ssd", 2048)])
        kube.add_node("node-2", [("ssd", 1024)])
        kube.add_node("node-3", [])
        storage_class(kube, "bench", scheduler="FreeCapacityWeighted")
        time.sleep(2)
        assert api.audit_log is not None
        _, offset = audit_counts(api.audit_log, 0)

        latencies = []
        names = []
        for _ in range(args.sequential):
            name = f"s-{uuid.uuid4().hex[:10]}"
            t = time.perf_counter()
            create_pvcs(kube, [pvc_body(name, "bench", 8 * MIB)])
            wait_bound(kube, [name])
            latencies.append((time.perf_counter() - t) * 1000)
            names.append(name)
        delete_pvcs(kube, names, timeout=300)
        time.sleep(2)
        counts, offset = audit_counts(api.audit_log, offset)

        names = [f"b-{uuid.uuid4().hex[:10]}" for _ in range(args.burst)]
        t = time.perf_counter()
        create_pvcs(kube, [pvc_body(n, "bench", 8 * MIB) for n in names])
        wait_bound(kube, names, timeout=300)
        wall = time.perf_counter() - t
        delete_pvcs(kube, names, timeout=300)

        print(
            f"PVC created -> Bound, {args.sequential} sequential (includes kubectl start-up and 200 ms polling): "
            f"p50 {statistics.median(latencies):.0f} ms, p99 {pct(latencies, 99):.0f} ms"
        )
        print(f"{args.burst} PVCs created at once over three nodes: all Bound after {wall:.1f} s")
        n = args.sequential
        print(f"API requests per volume lifecycle (create -> bound -> delete), averaged over {n} volumes:")
        for component in ("controller", "agents", "provisioner-sidecar"):
            verbs = {v: c / n for (comp, v), c in sorted(counts.items()) if comp == component}
            total = sum(verbs.values())
            print(f"  {component:20s} {total:5.2f}  " + ", ".join(f"{v} {c:.2f}" for v, c in verbs.items()))
        ours = sum(c for (comp, _), c in counts.items() if comp in ("controller", "agents")) / n
        lists = sum(c for (comp, v), c in counts.items() if comp == "controller" and v == "list")
        print(f"  driver total {ours:.2f} per volume; LIST calls by the controller during the run: {lists}")
    finally:
        kube.stop()
        api.stop()


if __name__ == "__main__":
    main()
