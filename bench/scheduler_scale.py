"""Scheduling at scale.

1. In-process: the controller's cache (ClusterState) holding N DeviceNodes and M DeviceVolumes, fed through the
   same informer handlers as in production; time of the placement decision (topology filter, reservations,
   policy ranking) for a stream of CreateVolume requests, and the memory the cache takes.
2. With --real: a real kube-apiserver holding N DeviceNode objects; the controller process starts, syncs and
   places volumes; the API server's audit log shows which requests it made (no LIST after start-up).

    .venv/bin/python -m bench.scheduler_scale [--nodes 5000] [--volumes 100000] [--real]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
import tracemalloc
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from bench.provisioning import pct
from csidriver.api.objects import Device, devices_list
from csidriver.services.cluster import ClusterState
from csidriver.services.provisioning import Provisioner
from csidriver.services.requests import AccessMode, Capability, CreateRequest
from scheduler import Policy

GIB = 1 << 30
CAP = (Capability(False, AccessMode.SINGLE_NODE_WRITER),)


def node_obj(i: int) -> dict[str, Any]:
    name = f"node-{i:05d}"
    devices = tuple(
        Device(
            "ssd",
            str(uuid.UUID(int=i * 4 + d)),
            1000 * GIB,
            (100 + (i * 7 + d) % 800) * GIB,
            (50 + (i * 13 + d) % 400) * GIB,
            100,
            f"/dev/nvme{d}n1",
        )
        for d in range(2)
    )
    return {
        "apiVersion": "local.openebs.io/v1alpha1",
        "kind": "DeviceNode",
        "metadata": {"name": name, "namespace": "openebs", "labels": {"openebs.io/nodename": name}},
        "devices": devices_list(devices),
    }


def volume_obj(i: int, nodes: int, state: str) -> dict[str, Any]:
    return {
        "metadata": {"name": f"pvc-{uuid.UUID(int=i)}", "resourceVersion": str(i)},
        "spec": {"ownerNodeID": f"node-{i % nodes:05d}", "capacity": str((1 + i % 50) * GIB), "devname": "ssd"},
        "status": {"state": state},
    }


def in_process(nodes: int, volumes: int, decisions: int) -> None:
    tracemalloc.start()
    cluster = ClusterState()
    t = time.perf_counter()
    for i in range(nodes):
        cluster.on_node(f"node-{i:05d}", None, node_obj(i))
    for i in range(volumes):
        cluster.on_volume(f"pvc-{uuid.UUID(int=i)}", None, volume_obj(i, nodes, "Pending" if i % 100 == 0 else "Ready"))
    fill = time.perf_counter() - t
    mem = tracemalloc.get_traced_memory()[0] / 2**20
    tracemalloc.stop()
    prov = Provisioner(store=None, cluster=cluster, timeout=1)  # type: ignore[arg-type]
    rng = random.Random(1)
    times = []
    policies = ["CapacityWeighted", "VolumeWeighted", "FreeCapacityWeighted"]
    for k in range(decisions):
        req = CreateRequest(
            name=f"new-{k}",
            required_bytes=rng.randint(1, 40) * GIB,
            limit_bytes=0,
            parameters={"devname": "ssd", "scheduler": policies[k % 3]},
            capabilities=CAP,
        )
        t = time.perf_counter()
        node = prov._choose("ssd", req.required_bytes, req, Policy.parse(policies[k % 3]))
        cluster.reserve(req.name, node, "ssd", req.required_bytes)  # as CreateVolume does before it writes
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    print(
        f"cache: {nodes} DeviceNodes, {volumes} DeviceVolumes fed through the informer handlers in {fill:.1f} s; "
        f"cache holds {mem:.0f} MiB (tracemalloc), process max RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )
    print(
        f"placement decision over {decisions} requests: p50 {pct(times, 50):.2f} ms, p99 {pct(times, 99):.2f} ms, "
        f"max {times[-1]:.2f} ms"
    )


def real(nodes: int) -> None:
    import grpc

    from harness.apiserver import ApiServer
    from harness.csi import code_of, create
    from harness.driver import Driver
    from harness.tools import tools

    api = ApiServer(tools()).start(audit=True)
    try:
        api.install_driver_objects()
        t = time.perf_counter()
        for start in range(0, nodes, 500):
            items = [node_obj(i) for i in range(start, min(nodes, start + 500))]
            api.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        print(f"real API server: created {nodes} DeviceNodes in {time.perf_counter() - t:.1f} s")
        driver = Driver(api, Path(tempfile.mkdtemp(prefix="dlpv-scale-")))
        try:
            t = time.perf_counter()
            ctl = driver.controller(CREATE_TIMEOUT_SECONDS="1")
            ctl.wait_ready(timeout=300)
            print(f"controller started and synced {nodes} DeviceNodes in {time.perf_counter() - t:.2f} s")
            assert api.audit_log is not None
            offset = api.audit_log.stat().st_size
            ch = grpc.insecure_channel(f"unix://{ctl.socket}")
            t = time.perf_counter()
            placed = 0
            for k in range(20):
                # No agent runs: each call places the volume, writes its object, then times out waiting.
                code, _ = code_of(lambda k=k: create(ch, f"pvc-{uuid.UUID(int=k)}", GIB))
                placed += code.name == "DEADLINE_EXCEEDED"
            per_call = (time.perf_counter() - t) / 20 * 1000 - 1000
            with api.audit_log.open() as f:
                f.seek(offset)
                verbs = Counter(
                    json.loads(line)["verb"]
                    for line in f
                    if json.loads(line).get("user", {}).get("username", "").endswith("controller-sa")
                )
            print(
                f"20 CreateVolume placed {placed} volumes, ~{per_call:.0f} ms each beyond the 1 s wait; "
                f"controller requests meanwhile: {dict(verbs)} (no list)"
            )
        finally:
            driver.stop()
    finally:
        api.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--volumes", type=int, default=100000)
    ap.add_argument("--decisions", type=int, default=1000)
    ap.add_argument("--real", action="store_true")
    args = ap.parse_args()
    in_process(args.nodes, args.volumes, args.decisions)
    if args.real:
        real(args.nodes)


if __name__ == "__main__":
    main()
