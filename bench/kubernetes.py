"""PVC-to-Bound latency and API requests per volume, through the real provisioner, PV controller and scheduler.

    .venv/bin/python -m bench.kubernetes [--sequential 100] [--burst 100]

PVC -> Bound is timed from one watch per resource (PVCs, PVs, DeviceVolumes), each event stamped as it arrives:
no client per claim, no polling. The burst's phases: PVC created (its ADDED event) -> our controller receives
CreateVolume from the csi-provisioner (our controller's log) -> DeviceVolume created -> Ready -> PV created -> Bound.

API requests are counted by the API server itself (audit log), per component: our controller, our agents,
and the csi-provisioner (same service account as our controller, told apart by user agent).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import re
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.provisioning import pct
from harness.apiserver import ApiServer
from harness.kubernetes import KubeCluster
from harness.objects import MIB, create_pvcs, delete_pvcs, pvc_body, storage_class
from harness.tools import tools


def _print_requests(counts: Counter[tuple[str, str, str]], n: int, window: float) -> None:
    """Requests per volume lifecycle by component, verb and resource. Lease renewals (the controller's leader
    Lease, each agent's heartbeat) are made per second, not per volume: shown apart, as a rate over the window."""
    print(f"API requests per volume lifecycle (create -> bound -> delete), averaged over {n} volumes:")
    drivers = ("controller", "agents")
    for component in (*drivers, "provisioner-sidecar"):
        rows = {(v, r): c / n for (comp, v, r), c in sorted(counts.items()) if comp == component and r != "leases"}
        total = sum(rows.values())
        print(f"  {component:20s} {total:5.2f}  " + ", ".join(f"{v} {r} {c:.2f}" for (v, r), c in rows.items()))
    ours = sum(c for (comp, _, r), c in counts.items() if comp in drivers and r != "leases") / n
    leases = sum(c for (comp, _, r), c in counts.items() if comp in drivers and r == "leases")
    lists = sum(c for (comp, v, _), c in counts.items() if comp in drivers and v == "list")
    print(
        f"  driver total {ours:.2f} per volume; lease renewals meanwhile {leases} in {window:.0f} s "
        f"({leases / window:.2f}/s for 1 controller + 3 agents; {(ours * n + leases) / n:.2f} per volume with them)"
    )
    print(f"  LIST calls by the driver during the run: {lists}")


def audit_counts(log: Path, start: int) -> tuple[Counter[tuple[str, str, str]], int]:
    """(component, verb, resource) -> requests, from byte offset `start` of the audit log; and the new offset."""
    counts: Counter[tuple[str, str, str]] = Counter()
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
        ref = ev.get("objectRef") or {}
        resource = str(ref.get("resource", "")) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        counts[(component, ev.get("verb", ""), resource)] += 1
    return counts, start + len(data)


WATCH = ("-w", "--output-watch-events", "-o", "json")


class Watch:
    """One `kubectl get -w --output-watch-events` stream; each event is recorded with this process's wall clock as
    it arrives (one watch per resource for the whole run, not a client per object)."""

    def __init__(self, api: ApiServer, resource: str, namespace: str | None) -> None:
        ns = ["-n", namespace] if namespace else []
        self._proc = subprocess.Popen(
            [api.tools.kubectl, "--kubeconfig", api.identities["admin"].kubeconfig, "get", resource, *ns, *WATCH],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        decoder = json.JSONDecoder()
        buf = ""
        for line in self._proc.stdout:
            now = time.time()
            buf += line
            while True:
                stripped = buf.lstrip()
                if not stripped:
                    buf = ""
                    break
                try:
                    ev, end = decoder.raw_decode(stripped)
                except json.JSONDecodeError:
                    break
                buf = stripped[end:]
                with self._lock:
                    self.events.append((now, ev.get("type", ""), ev.get("object", {})))

    def first(self, pred: Callable[[str, dict[str, Any]], str | None]) -> dict[str, float]:
        """name -> time of the first event for which `pred(type, object)` names it."""
        out: dict[str, float] = {}
        with self._lock:
            events = list(self.events)
        for t, kind, obj in events:
            name = pred(kind, obj)
            if name is not None and name not in out:
                out[name] = t
        return out

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def _pvc_added(kind: str, obj: dict[str, Any]) -> str | None:
    return obj["metadata"]["name"] if kind == "ADDED" else None


def _pvc_bound(kind: str, obj: dict[str, Any]) -> str | None:
    return obj["metadata"]["name"] if obj.get("status", {}).get("phase") == "Bound" else None


def _pvc_volume(kind: str, obj: dict[str, Any]) -> str | None:
    return f"pvc-{obj['metadata']['uid']}|{obj['metadata']['name']}"


def _dv_added(kind: str, obj: dict[str, Any]) -> str | None:
    return obj["metadata"]["name"] if kind == "ADDED" else None


def _dv_ready(kind: str, obj: dict[str, Any]) -> str | None:
    return obj["metadata"]["name"] if obj.get("status", {}).get("state") == "Ready" else None


def _pv_added(kind: str, obj: dict[str, Any]) -> str | None:
    return obj["metadata"]["name"] if kind == "ADDED" else None


_RPC = re.compile(r"^(\S+ \S+),(\d{3}) INFO csidriver\.rpc: rpc=CreateVolume name=(\S+) code=OK took=([\d.]+)ms")


def create_calls(controller_log: Path) -> dict[str, float]:
    """volume name -> wall time our controller received CreateVolume (its log line's time minus the call's length)."""
    out: dict[str, float] = {}
    for line in controller_log.read_text(errors="replace").splitlines():
        m = _RPC.match(line)
        if m:
            t = datetime.datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S").timestamp() + int(m[2]) / 1000
            out.setdefault(m[3], t - float(m[4]) / 1000)
    return out


def wait_all(watch: Watch, pred: Callable[[str, dict[str, Any]], str | None], names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not set(names) <= watch.first(pred).keys():
        if time.monotonic() > deadline:
            missing = set(names) - watch.first(pred).keys()
            raise AssertionError(f"{len(missing)} PVCs not Bound after {timeout}s: {sorted(missing)[:5]}")
        time.sleep(0.02)


def phases(names: list[str], pvcw: Watch, pvw: Watch, dvw: Watch, calls: dict[str, float]) -> dict[str, list[float]]:
    """Per phase, the milliseconds each claim of `names` spent in it."""
    volume = {k.split("|")[1]: k.split("|")[0] for k in pvcw.first(_pvc_volume)}
    by_volume = {
        "CreateVolume received": calls,
        "DeviceVolume created": dvw.first(_dv_added),
        "DeviceVolume Ready": dvw.first(_dv_ready),
        "PV created": pvw.first(_pv_added),
    }
    marks = [("PVC created", pvcw.first(_pvc_added))]
    marks += [(label, {n: at[volume[n]] for n in names if volume.get(n) in at}) for label, at in by_volume.items()]
    marks.append(("Bound", pvcw.first(_pvc_bound)))
    out: dict[str, list[float]] = {}
    for (a, ta), (b, tb) in itertools.pairwise(marks):
        out[f"{a} -> {b}"] = [(tb[n] - ta[n]) * 1000 for n in names if n in ta and n in tb]
    return out


def _print_phases(by_phase: dict[str, list[float]]) -> None:
    for label, ms in by_phase.items():
        if ms:
            print(
                f"    {label:48s} p50 {statistics.median(ms):7.0f} ms  p90 {pct(ms, 90):7.0f} ms  max {max(ms):7.0f} ms"
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sequential", type=int, default=100)
    ap.add_argument("--burst", type=int, default=100)
    ap.add_argument(
        "--kcm-qps",
        type=int,
        default=0,
        help="kube-controller-manager's client QPS (burst twice that); 0 keeps its defaults (20 QPS, burst 30)",
    )
    args = ap.parse_args()
    api = ApiServer(tools()).start(audit=True)
    kube = KubeCluster(api, api.tools, Path(tempfile.mkdtemp(prefix="dlpv-kbench-")))
    try:
        api.install_driver_objects()
        kcm = (f"--kube-api-qps={args.kcm_qps}", f"--kube-api-burst={2 * args.kcm_qps}") if args.kcm_qps else ()
        kube.start_kube_components(*kcm)
        kube.start_driver()
        kube.add_node("node-1", [("ssd", 2048), ("ssd", 2048)])
        kube.add_node("node-2", [("ssd", 1024)])
        kube.add_node("node-3", [])
        storage_class(kube, "bench", scheduler="FreeCapacityWeighted")
        time.sleep(2)
        assert api.audit_log is not None
        _, offset = audit_counts(api.audit_log, 0)

        ctl_log = kube.workdir / "controller.log"
        pvcw = Watch(api, "pvc", "default")
        pvw = Watch(api, "pv", None)
        dvw = Watch(api, "devicevolumes", "openebs")
        watches = [pvcw, pvw, dvw]
        time.sleep(1)
        names = []
        window_start = time.monotonic()
        for _ in range(args.sequential):
            name = f"s-{uuid.uuid4().hex[:10]}"
            create_pvcs(kube, [pvc_body(name, "bench", 8 * MIB)])
            wait_all(pvcw, _pvc_bound, [name], 120)
            names.append(name)
        created, bound = pvcw.first(_pvc_added), pvcw.first(_pvc_bound)
        latencies = [(bound[n] - created[n]) * 1000 for n in names]
        seq_phases = phases(names, pvcw, pvw, dvw, create_calls(ctl_log))
        delete_pvcs(kube, names, timeout=300)
        time.sleep(2)
        counts, offset = audit_counts(api.audit_log, offset)
        window = time.monotonic() - window_start

        burst = [f"b-{uuid.uuid4().hex[:10]}" for _ in range(args.burst)]
        t = time.time()
        create_pvcs(kube, [pvc_body(n, "bench", 8 * MIB) for n in burst])
        wait_all(pvcw, _pvc_bound, burst, 300)
        bound = pvcw.first(_pvc_bound)
        wall = max(bound[n] for n in burst) - t
        burst_phases = phases(burst, pvcw, pvw, dvw, create_calls(ctl_log))
        created = pvcw.first(_pvc_added)
        for w in watches:
            w.stop()
        delete_pvcs(kube, burst, timeout=300)

        print(
            f"PVC created -> Bound, {args.sequential} one after the other (watch events: ADDED -> phase Bound): "
            f"p50 {statistics.median(latencies):.0f} ms, p90 {pct(latencies, 90):.0f} ms, "
            f"p99 {pct(latencies, 99):.0f} ms"
        )
        _print_phases(seq_phases)
        print(
            f"{args.burst} PVCs created at once over three nodes: all Bound {wall:.1f} s after the create call "
            f"(last ADDED event {max(created[n] for n in burst) - t:.1f} s after it)"
        )
        _print_phases(burst_phases)
        _print_requests(counts, args.sequential, window)
    finally:
        kube.stop()
        api.stop()


if __name__ == "__main__":
    main()
