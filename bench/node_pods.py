"""The user's path on a real node: PVC created -> Pod Running with the volume mounted, and the agent's memory.

    .venv/bin/python -m bench.node_pods [--pods 20] [--volumes 50]

Runs the real node of tests/node/ (containerd + runc + kubelet, the driver installed from deploy/ in Pods) and
measures, with a watch on Pods (no polling):
- PVC+Pod applied together -> Pod Running, WaitForFirstConsumer class, one at a time (p50/p99 over --pods);
- the same for --pods Pods applied at once (p50/p99 of each Pod's latency, and the time until the last one runs);
- the agent container's memory from its cgroup (usage and working set, as kubelet counts it), idle and with
  --volumes volumes provisioned and mounted in Pods;
- the size of every image loaded into the node.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import ssl
import statistics
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness.images import build_images
from harness.node import wait_for
from harness.tools import ROOT, tools
from harness.workloads import IMAGE, NAMESPACE, NodeCluster, bring_up

SC = "openebs-device-ssd"  # deploy/'s WaitForFirstConsumer class
SC_IMMEDIATE = "openebs-device-ssd-immediate"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Watch:
    """Streams a watch on the default namespace's Pods and PVCs of the bench and records, per object, the first time
    it is seen in each interesting state: a Pod scheduled (nodeName set) and Running, a PVC Bound."""

    def __init__(self, cluster: NodeCluster) -> None:
        api = cluster.real.api
        assert api is not None
        base = f"{api.url}/api/v1/namespaces/default"
        self._urls = [
            f"{base}/{kind}?watch=1&labelSelector=bench%3Dnode-pods" for kind in ("pods", "persistentvolumeclaims")
        ]
        self._token = api.identities["admin"].token
        self.running: dict[str, float] = {}
        self.scheduled: dict[str, float] = {}
        self.bound: dict[str, float] = {}
        self._ready = threading.Barrier(len(self._urls) + 1)

    def start(self) -> Watch:
        for url in self._urls:
            threading.Thread(target=self._run, args=(url,), daemon=True).start()
        self._ready.wait(10)
        return self

    def _run(self, url: str) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._token}"})
        with urllib.request.urlopen(req, context=ctx, timeout=3600) as stream:
            self._ready.wait(10)
            for line in stream:
                now = time.monotonic()
                obj = json.loads(line)["object"]
                name = obj["metadata"]["name"]
                phase = obj.get("status", {}).get("phase")
                if obj["kind"] == "Pod":
                    if obj["spec"].get("nodeName"):
                        self.scheduled.setdefault(name, now)
                    if phase == "Running":
                        self.running.setdefault(name, now)
                elif phase == "Bound":
                    self.bound.setdefault(name, now)


def pvc_and_pod(name: str, storage_class: str, claims: int = 1) -> list[dict[str, Any]]:
    objs: list[dict[str, Any]] = []
    volumes, mounts = [], []
    for i in range(claims):
        claim = f"{name}-{i}"
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim, "namespace": "default", "labels": {"bench": "node-pods"}},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "resources": {"requests": {"storage": "16Mi"}},
                },
            }
        )
        volumes.append({"name": f"v{i}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"v{i}", "mountPath": f"/data/{i}"})
    objs.append(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": {"bench": "node-pods"}},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {
                        "name": "app",
                        "image": IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["sleep", "infinity"],
                        "volumeMounts": mounts,
                    }
                ],
                "volumes": volumes,
            },
        }
    )
    return objs


def apply_all(cluster: NodeCluster, objs: list[dict[str, Any]]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}))


def clean(cluster: NodeCluster) -> None:
    cluster.kubectl("delete", "pods", "-l", "bench=node-pods", "--wait=true", "--timeout=300s")
    cluster.kubectl("delete", "pvc", "-l", "bench=node-pods", "--wait=true", "--timeout=300s")
    wait_for("every DeviceVolume gone", lambda: not cluster.kubectl("get", "devicevolume", "-A", "-o", "name"), 300)


def _cgroup(controller: str, cluster: NodeCluster, pod_name: str, container: str) -> str | None:
    """The container's cgroup directory; None while it is (re)starting."""
    pod = cluster.real.get("pod", pod_name, namespace=NAMESPACE)
    status = next(c for c in pod["status"]["containerStatuses"] if c["name"] == container)
    cid = (status.get("containerID") or "://").split("://", 1)[1]
    found = glob.glob(f"/sys/fs/cgroup/{controller}/kubepods/**/{cid}", recursive=True) if cid else []
    return found[0] if found else None


def cpu_seconds(cluster: NodeCluster) -> dict[str, float]:
    """CPU time used so far by each container of the driver's Pods (cgroup v1 cpuacct), by role/container."""
    out: dict[str, float] = {}
    for pod in cluster.real.get("pods", namespace=NAMESPACE)["items"]:
        role = pod["metadata"]["labels"].get("app.kubernetes.io/component", "?")
        for c in pod["status"].get("containerStatuses", []):
            path = _cgroup("cpuacct", cluster, pod["metadata"]["name"], c["name"])
            if path is None:
                continue
            key = f"{role}/{c['name']}"
            out[key] = out.get(key, 0.0) + int(Path(path, "cpuacct.usage").read_text()) / 1e9
    return out


def agent_memory(cluster: NodeCluster) -> tuple[float, float]:
    """(usage, working set) in MiB of the agent's driver container, from its memory cgroup (v1)."""
    path = _cgroup("memory", cluster, cluster.agent_pod(), "device-driver")
    assert path is not None, "the agent container is not running"
    usage = int(Path(path, "memory.usage_in_bytes").read_text())
    stat = dict(line.split() for line in Path(path, "memory.stat").read_text().splitlines())
    working = usage - int(stat.get("total_inactive_file", 0))
    return usage / 2**20, working / 2**20


Phases = dict[str, list[float]]  # phase -> seconds per Pod


def phases(watch: Watch, name: str, start: float) -> dict[str, float]:
    """Where one Pod's time went (WaitForFirstConsumer: kube-scheduler picks the node, then the claim is
    provisioned and bound, then the Pod is bound to the node and kubelet mounts the volume and starts it)."""
    claim_bound = watch.bound[f"{name}-0"]
    return {
        "provisioned and bound (scheduler's node choice, csi-provisioner, CreateVolume, PV binder)": claim_bound
        - start,
        "Pod bound to the node after the claim": watch.scheduled[name] - claim_bound,
        "kubelet: NodePublish (mkfs + mount) and container start": watch.running[name] - watch.scheduled[name],
        "total": watch.running[name] - start,
    }


def collect(watch: Watch, names: list[str], start: float) -> Phases:
    out: Phases = {}
    for name in names:
        for phase, took in phases(watch, name, start).items():
            out.setdefault(phase, []).append(took)
    return out


def sequential(cluster: NodeCluster, watch: Watch, n: int) -> Phases:
    out: Phases = {}
    for i in range(n):
        name = f"seq-{i}"
        start = time.monotonic()
        apply_all(cluster, pvc_and_pod(name, SC))
        wait_for(f"{name} Running", lambda name=name: name in watch.running, 120, interval=0.01)  # type: ignore[misc]
        for phase, took in collect(watch, [name], start).items():
            out.setdefault(phase, []).extend(took)
    return out


def burst(cluster: NodeCluster, watch: Watch, n: int) -> Phases:
    names = [f"burst-{i}" for i in range(n)]
    objs = [o for name in names for o in pvc_and_pod(name, SC)]
    start = time.monotonic()
    apply_all(cluster, objs)
    wait_for("every burst Pod Running", lambda: all(n in watch.running for n in names), 600, interval=0.05)
    return collect(watch, names, start)


def report(title: str, measured: Phases) -> None:
    print(title)
    for phase, values in measured.items():
        print(
            f"  {phase}: p50 {statistics.median(values):.2f} s  p99 {pct(values, 0.99):.2f} s  max {max(values):.2f} s"
        )


def restarts(cluster: NodeCluster) -> str:
    pods = cluster.real.get("pods", namespace=NAMESPACE)["items"]
    counts = [
        f"{p['metadata']['name'].rsplit('-', 1)[-1]}/{c['name']}={c['restartCount']}"
        for p in pods
        for c in p["status"].get("containerStatuses", [])
        if c["restartCount"]
    ]
    return ", ".join(counts) or "none"


def image_sizes(images: list[str]) -> dict[str, float]:
    sizes = {}
    for archive in images:
        sizes[os.path.basename(archive)] = os.path.getsize(archive) / 1e6
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=20)
    ap.add_argument("--volumes", type=int, default=50)
    args = ap.parse_args()
    images = build_images()
    cluster = bring_up(tools(), images, ROOT / "artifacts" / "bench-node")
    try:
        watch = Watch(cluster).start()
        time.sleep(10)  # let the fresh agent settle before reading its idle memory
        idle = agent_memory(cluster)

        seq = sequential(cluster, watch, args.pods)
        clean(cluster)
        cpu_before = cpu_seconds(cluster)
        at_once = burst(cluster, watch, args.pods)
        cpu_burst = {k: max(0.0, v - cpu_before.get(k, 0.0)) for k, v in cpu_seconds(cluster).items()}
        clean(cluster)

        per_pod = 5
        pods = (args.volumes + per_pod - 1) // per_pod
        objs = [o for i in range(pods) for o in pvc_and_pod(f"mem-{i}", SC_IMMEDIATE, per_pod)]
        apply_all(cluster, objs)
        names = [f"mem-{i}" for i in range(pods)]
        wait_for("memory Pods Running", lambda: all(n in watch.running for n in names), 900, interval=0.2)
        time.sleep(10)
        loaded = agent_memory(cluster)
        clean(cluster)

        report(f"PVC+Pod applied -> Pod Running, WaitForFirstConsumer, one at a time ({args.pods}):", seq)
        report(f"PVC+Pod applied -> Pod Running, {args.pods} applied at once (from the one apply):", at_once)
        used = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(cpu_burst.items()))
        print(f"  CPU used by the driver's containers during that burst (all replicas): {used}")
        print(f"container restarts in {NAMESPACE} during the run: {restarts(cluster)}")
        print("agent container memory (cgroup v1; usage / working set):")
        print(f"  idle: {idle[0]:.1f} MiB / {idle[1]:.1f} MiB")
        print(f"  {pods * per_pod} volumes mounted in {pods} Pods: {loaded[0]:.1f} MiB / {loaded[1]:.1f} MiB")
        print("image archives (docker-archive, uncompressed layers):")
        for name, mb in image_sizes(images).items():
            print(f"  {name}: {mb:.1f} MB")
    finally:
        try:
            cluster.real.logs(ROOT / "artifacts" / "bench-node")
        finally:
            cluster.real.stop()


if __name__ == "__main__":
    main()
