"""This driver against the original it succeeds (openebs/device-localpv v0.9.0, the Go driver), measured here.

    .venv/bin/python -m bench.versus_original [--volumes 30] [--size-mib 8] [--first original|ours] [--json FILE]

Both drivers run as real processes, one after the other, on the same kube-apiserver + etcd (with the garbage
collector, which the original's foreground deletes need) and the same loop pool disk on one node. Each side gets
the same requests, shaped as csi-provisioner and kubelet send them:
- CreateVolume with params devname + csi.storage.k8s.io/pvc/name|namespace + pv/name and Preferred topology
  {openebs.io/nodename: node}; a real PVC exists for every volume of both sides (the original reads it, ours does
  not), created before the timed calls;
- CreateVolume latency over --volumes sequential calls, then with those volumes present: memory, NodePublishVolume
  (ext4 mount capability, the first publish formats) of each volume and NodeUnpublishVolume of each, then
  DeleteVolume of each; then the wall time of --volumes concurrent CreateVolume calls (one thread each, one gRPC
  channel), after which everything is deleted;
- memory is VmRSS of /proc/<pid>/status of the controller and agent processes (the driver process itself: the
  original's wrapper execs into it, ours is one Python process), 2 s after both answer Probe and their DeviceNode
  exists, and after the --volumes sequential volumes exist.
Between the two sides every DeviceVolume is gone, the disk holds only its pool partition and the DeviceNode is
deleted, so each starts from the same state. Our controller runs with LEASE_SECONDS=4, as the e2e tests run it.

Everything (processes, API server, loop disk, mounts, work directories) is removed on exit, on failure and on
Ctrl-C or SIGTERM; on failure the logs are kept in artifacts/versus-original/.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from bench.provisioning import pct
from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.apiserver import ApiServer, start_kube_components, stop_all
from harness.csi import MIB, delete, mount_cap, publish, unpublish
from harness.disks import LoopDisk, LoopDisks, partitions
from harness.driver import Driver
from harness.original import TOPOLOGY_KEY, Original, unique_pool
from harness.tools import ARTIFACTS, tools

NODE = "bench-node"
TIMEOUT = 120.0
SETTLE = 2.0


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class Side:
    """One driver's controller and agent, running."""

    name: str
    controller_socket: str
    agent_socket: str
    controller_pid: int
    agent_pid: int
    stop: Callable[[], None]


@dataclass
class Figures:
    create_ms: list[float] = field(default_factory=list)
    concurrent_s: float = 0.0
    concurrent_ok: int = 0
    delete_ms: list[float] = field(default_factory=list)
    publish_ms: list[float] = field(default_factory=list)
    unpublish_ms: list[float] = field(default_factory=list)
    rss_mib: dict[str, float] = field(default_factory=dict)


@dataclass
class Bench:
    api: ApiServer
    disk: LoopDisk
    pool: str
    mounts: Path  # shared with the host: the original mounts in its own mount namespace
    volumes: int
    size: int

    def claims(self, namespace: str, names: list[str]) -> None:
        """One PVC per volume name (claim-<name>), in one request."""
        items = [
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": f"claim-{n[4:]}", "namespace": namespace},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": str(self.size)}}},
            }
            for n in names
        ]
        self.api.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))

    def request(self, namespace: str, name: str) -> Any:
        return csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=self.size),
            volume_capabilities=[mount_cap()],
            parameters={
                "devname": self.pool,
                "csi.storage.k8s.io/pvc/name": f"claim-{name[4:]}",
                "csi.storage.k8s.io/pvc/namespace": namespace,
                "csi.storage.k8s.io/pv/name": name,
            },
            accessibility_requirements=csi_pb2.TopologyRequirement(
                preferred=[csi_pb2.Topology(segments={TOPOLOGY_KEY: NODE})]
            ),
        )

    def volume_objects(self) -> list[str]:
        out = self.api.kubectl("get", "devicevolume", "-n", "openebs", "-o", "name")
        return out.split()

    def wait_clean(self, timeout: float = 120) -> None:
        """No DeviceVolume left and only the pool's partition on the disk."""
        deadline = time.monotonic() + timeout
        while True:
            objects = self.volume_objects()
            parts = [str(p.get("name", "")) for p in partitions(self.disk.device)]
            if not objects and parts == [self.pool]:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not clean after {timeout}s: objects {objects}, partitions {parts}")
            time.sleep(0.3)

    def wait_device_node(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.api.kubectl("get", "devicenode", NODE, "-n", "openebs", "--ignore-not-found", "-o", "name"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no DeviceNode {NODE} after {timeout}s")
            time.sleep(0.2)

    def measure(self, side: Side) -> Figures:
        fig = Figures()
        namespace = f"bench-{side.name}"
        self.api.kubectl("create", "namespace", namespace)
        self.wait_device_node()
        time.sleep(SETTLE)
        fig.rss_mib["controller_start"] = rss_mib(side.controller_pid)
        fig.rss_mib["agent_start"] = rss_mib(side.agent_pid)
        with (
            grpc.insecure_channel(f"unix://{side.controller_socket}") as cch,
            grpc.insecure_channel(f"unix://{side.agent_socket}") as nch,
        ):
            controller = csi_pb2_grpc.ControllerStub(cch)

            # Sequential CreateVolume.
            names = [f"pvc-{uuid.uuid4()}" for _ in range(self.volumes)]
            self.claims(namespace, names)
            vols: list[Any] = []
            for name in names:
                req = self.request(namespace, name)
                t = time.perf_counter()
                vols.append(controller.CreateVolume(req, timeout=TIMEOUT).volume)
                fig.create_ms.append((time.perf_counter() - t) * 1000)
            time.sleep(SETTLE)
            fig.rss_mib["controller_loaded"] = rss_mib(side.controller_pid)
            fig.rss_mib["agent_loaded"] = rss_mib(side.agent_pid)

            # NodePublishVolume (formats ext4) of each fresh volume, then NodeUnpublishVolume of each.
            targets = []
            for i, vol in enumerate(vols):
                target = self.mounts / f"{side.name}-{i}"
                t = time.perf_counter()
                publish(nch, vol, str(target), mount_cap("ext4"))
                fig.publish_ms.append((time.perf_counter() - t) * 1000)
                if not os.path.ismount(target):
                    raise RuntimeError(f"{side.name}: nothing mounted at {target} after NodePublishVolume")
                targets.append((vol.volume_id, target))
            for volume_id, target in targets:
                t = time.perf_counter()
                unpublish(nch, volume_id, str(target))
                fig.unpublish_ms.append((time.perf_counter() - t) * 1000)
                if os.path.ismount(target):
                    raise RuntimeError(f"{side.name}: {target} still mounted after NodeUnpublishVolume")

            # Sequential DeleteVolume.
            for vol in vols:
                t = time.perf_counter()
                delete(cch, vol.volume_id)
                fig.delete_ms.append((time.perf_counter() - t) * 1000)
            self.wait_clean()

            # Concurrent CreateVolume: one thread per call, one channel.
            names = [f"pvc-{uuid.uuid4()}" for _ in range(self.volumes)]
            self.claims(namespace, names)

            def attempt(name: str) -> bool:
                try:
                    controller.CreateVolume(self.request(namespace, name), timeout=TIMEOUT)
                    return True
                except grpc.RpcError as e:
                    print(f"{side.name}: concurrent CreateVolume {name}: {e.code()} {e.details()}", file=sys.stderr)
                    return False

            t = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(self.volumes) as ex:
                results = list(ex.map(attempt, names))
            fig.concurrent_s = time.perf_counter() - t
            fig.concurrent_ok = sum(results)
            for name in names:
                try:
                    delete(cch, name)
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.NOT_FOUND:
                        raise
            self.wait_clean()
        return fig


def start_original(original: Original, disk: LoopDisk) -> Side:
    controller = original.controller()
    agent = original.agent(NODE, [disk.device])
    controller.wait_ready()
    agent.wait_ready()
    assert controller.proc is not None and agent.proc is not None
    return Side("original", controller.socket, agent.socket, controller.proc.pid, agent.proc.pid, original.stop)


def start_ours(driver: Driver, disk: LoopDisk) -> Side:
    controller = driver.controller("controller", LEASE_SECONDS="4")
    agent = driver.agent(NODE, [disk.device])
    controller.wait_ready()
    agent.wait_ready()
    assert controller.proc is not None and agent.proc is not None
    return Side("ours", controller.socket, agent.socket, controller.proc.pid, agent.proc.pid, driver.stop)


ROWS: list[tuple[str, Callable[[Figures], float]]] = [
    ("CreateVolume p50 (ms)", lambda f: statistics.median(f.create_ms)),
    ("CreateVolume p99 (ms)", lambda f: pct(f.create_ms, 99)),
    ("concurrent CreateVolume wall (s)", lambda f: f.concurrent_s),
    ("DeleteVolume p50 (ms)", lambda f: statistics.median(f.delete_ms)),
    ("DeleteVolume p99 (ms)", lambda f: pct(f.delete_ms, 99)),
    ("NodePublishVolume p50 (ms)", lambda f: statistics.median(f.publish_ms)),
    ("NodePublishVolume p99 (ms)", lambda f: pct(f.publish_ms, 99)),
    ("NodeUnpublishVolume p50 (ms)", lambda f: statistics.median(f.unpublish_ms)),
    ("controller VmRSS after start (MiB)", lambda f: f.rss_mib["controller_start"]),
    ("controller VmRSS with volumes (MiB)", lambda f: f.rss_mib["controller_loaded"]),
    ("agent VmRSS after start (MiB)", lambda f: f.rss_mib["agent_start"]),
    ("agent VmRSS with volumes (MiB)", lambda f: f.rss_mib["agent_loaded"]),
]


def report(args: argparse.Namespace, order: list[str], figures: dict[str, Figures]) -> dict[str, Any]:
    orig, ours = figures["original"], figures["ours"]
    print(
        f"\n{args.volumes} volumes of {args.size_mib} MiB, one node, one loop pool disk, one API server; "
        f"{' then '.join(order)}; memory is VmRSS"
    )
    print(f"{'':38}{'original':>12}{'ours':>12}{'ours/original':>15}")
    rows: dict[str, dict[str, float]] = {}
    for label, get in ROWS:
        a, b = get(orig), get(ours)
        ratio = b / a if a else float("nan")
        digits = 2 if "(s)" in label else 1
        print(f"{label:38}{a:>12,.{digits}f}{b:>12,.{digits}f}{ratio:>15.2f}")
        rows[label] = {"original": a, "ours": b, "ratio": ratio}
    print(
        f"{'concurrent CreateVolume succeeded':38}{f'{orig.concurrent_ok}/{args.volumes}':>12}"
        f"{f'{ours.concurrent_ok}/{args.volumes}':>12}"
    )
    return {
        "volumes": args.volumes,
        "size_mib": args.size_mib,
        "order": order,
        "memory": "VmRSS",
        "rows": rows,
        "concurrent_ok": {"original": orig.concurrent_ok, "ours": ours.concurrent_ok},
        "samples_ms": {
            side: {
                "create": f.create_ms,
                "delete": f.delete_ms,
                "publish": f.publish_ms,
                "unpublish": f.unpublish_ms,
            }
            for side, f in figures.items()
        },
    }


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volumes", type=int, default=30)
    ap.add_argument("--size-mib", type=int, default=8)
    ap.add_argument("--first", choices=("original", "ours"), default="original")
    ap.add_argument("--json", type=Path, help="also write the figures and every sample here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (loop devices, partitions, mounts)")
    t = tools()
    if not os.access(t.original, os.X_OK):
        sys.exit(f"{t.original} is missing: run hack/tools.sh original")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGHUP, _interrupt)
    order = [args.first, "ours" if args.first == "original" else "original"]
    started = time.monotonic()

    api = ApiServer(t)
    disks = LoopDisks()
    workdir = Path(tempfile.mkdtemp(prefix="dlpv-versus-"))
    mounts = workdir / "mounts"
    mounts.mkdir()
    original = Original(api, t.original)
    ours = Driver(api, workdir)
    kube: list[subprocess.Popen[bytes]] = []
    failed = True
    try:
        subprocess.run(["mount", "--bind", str(mounts), str(mounts)], check=True)
        subprocess.run(["mount", "--make-shared", str(mounts)], check=True)
        api.start()
        # The garbage collector: the original deletes its DeviceVolumes with foreground propagation.
        kube = start_kube_components(t, api.identities["admin"].kubeconfig, workdir, "garbage-collector-controller")
        api.install_driver_objects()
        api.add_node(NODE, labels={TOPOLOGY_KEY: NODE})
        original.install()
        pool = unique_pool("vs")
        size_mib = max(512, 2 * args.volumes * args.size_mib + 64)
        bench = Bench(api, disks.pool(pool, size_mib), pool, mounts, args.volumes, args.size_mib * MIB)
        figures: dict[str, Figures] = {}
        for name in order:
            print(f"{name}: starting", flush=True)
            side = start_original(original, bench.disk) if name == "original" else start_ours(ours, bench.disk)
            try:
                figures[name] = bench.measure(side)
            finally:
                side.stop()
            bench.wait_clean()
            api.kubectl("delete", "devicenode", "-n", "openebs", "--all", "--timeout=60s")
            print(f"{name}: done", flush=True)
        out = report(args, order, figures)
        print(f"wall time of the whole run: {time.monotonic() - started:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(out, indent=2) + "\n")
        failed = False
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        original.stop()
        ours.stop()
        subprocess.run(["umount", "--recursive", str(mounts)], check=False, capture_output=True)
        stop_all(kube)
        api.stop()
        disks.cleanup()
        if failed:
            dest = ARTIFACTS / "versus-original"
            original.keep_logs(dest)
            for log in [*workdir.glob("*.log"), *api.workdir.glob("*.log")]:
                shutil.copy(log, dest / log.name)
            print(f"failed: logs in {dest}", file=sys.stderr)
        original.cleanup()
        for d in (workdir, api.workdir, disks.workdir):
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted (everything it started is removed)")
