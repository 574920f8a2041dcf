"""WaitForFirstConsumer: kube-scheduler places the pod using the CSIStorageCapacity our GetCapacity feeds."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from typing import Any

import grpc

from csidriver.api.quantity import parse_quantity
from harness.csi import mount_cap, publish, unpublish
from harness.disks import partitions
from harness.kubernetes import KubeCluster
from harness.objects import MIB, create_pvcs, delete_pvcs, device_volumes, pvc_body, storage_class, wait_bound


def pod_body(name: str, claim: str, prefer: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [{"name": "app", "image": "example.invalid/app:1"}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        "tolerations": [{"operator": "Exists"}],
    }
    if prefer:
        spec["affinity"] = {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "preference": {
                            "matchExpressions": [{"key": "openebs.io/nodename", "operator": "In", "values": [prefer]}]
                        },
                    }
                ]
            }
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def wait_scheduled(kube: KubeCluster, pod: str, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        node = kube.get("pod", pod).get("spec", {}).get("nodeName")
        if node:
            return str(node)
        time.sleep(0.2)
    raise AssertionError(f"pod {pod} not scheduled: {kube.api.kubectl('describe', 'pod', '-n', 'default', pod)}")


def capacities(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    out = {}
    for c in kube.get("csistoragecapacities", namespace="openebs")["items"]:
        node = c["nodeTopology"]["matchLabels"]["openebs.io/nodename"]
        if c["storageClassName"] == "wffc":
            out[node] = c
    return out


def test_pod_lands_where_capacity_allows_and_kubelet_can_publish(kube: KubeCluster) -> None:
    storage_class(kube, "wffc", binding="WaitForFirstConsumer")
    claim, pod = f"w-{uuid.uuid4().hex[:8]}", f"p-{uuid.uuid4().hex[:8]}"
    # 400 MiB fits only node-1 (node-2's single disk is 256 MiB, node-3 has none).
    create_pvcs(kube, [pvc_body(claim, "wffc", 400 * MIB), pod_body(pod, claim, prefer="node-2")])
    try:
        node = wait_scheduled(kube, pod)
        bound = wait_bound(kube, [claim])
        assert node == "node-1"
        caps = capacities(kube)
        assert set(caps) == {"node-1", "node-2", "node-3"}
        assert parse_quantity(caps["node-3"].get("capacity", 0)) == 0
        assert 0 < parse_quantity(caps["node-2"]["maximumVolumeSize"]) < 256 * MIB
        # Play kubelet: publish on the chosen node's socket with kubelet's path layout.
        pv = bound[claim]["spec"]["volumeName"]
        pod_uid = kube.get("pod", pod)["metadata"]["uid"]
        target = kube.workdir / "kubelet" / "pods" / pod_uid / "volumes" / "kubernetes.io~csi" / pv / "mount"
        target.parent.mkdir(parents=True)
        ch = grpc.insecure_channel(f"unix://{kube.nodes[node].agent.socket}")
        pv_obj = kube.get("pv", pv, namespace=None)
        vol = type(
            "V",
            (),
            {
                "volume_id": pv_obj["spec"]["csi"]["volumeHandle"],
                "volume_context": pv_obj["spec"]["csi"]["volumeAttributes"],
            },
        )()
        publish(ch, vol, str(target), mount_cap("ext4"))
        (target / "data").write_text("kubelet wrote this")
        assert (target / "data").read_text() == "kubelet wrote this"
        unpublish(ch, vol.volume_id, str(target))
        assert not target.exists()
    finally:
        kube.api.kubectl("delete", "pod", "-n", "default", pod, "--grace-period=0", "--force")  # no kubelet
        delete_pvcs(kube, [claim])


def test_resource_exhausted_sends_the_pod_elsewhere(kube: KubeCluster) -> None:
    """node-2 looks big enough in its DeviceNode and CSIStorageCapacity, but its disk was filled behind the
    driver's back: CreateVolume there fails with RESOURCE_EXHAUSTED and the pod is rescheduled to node-1."""
    storage_class(kube, "wffc", binding="WaitForFirstConsumer")
    disk = kube.nodes["node-2"].disks[0].device
    end = max(int(p["start"]) + int(p["size"]) for p in partitions(disk))
    subprocess.run(
        ["sfdisk", "--append", "--no-reread", "--no-tell-kernel", disk],
        input=f'start={end + 2048}, size={200 * MIB // 512}, name="filler"\n',
        text=True,
        check=True,
        capture_output=True,
    )
    claim, pod = f"x-{uuid.uuid4().hex[:8]}", f"q-{uuid.uuid4().hex[:8]}"
    before = kube.rpc_counts()
    create_pvcs(kube, [pvc_body(claim, "wffc", 100 * MIB), pod_body(pod, claim, prefer="node-2")])
    try:
        node = wait_scheduled(kube, pod)
        wait_bound(kube, [claim])
        after = kube.rpc_counts()
        assert node == "node-1"
        assert after.get(("CreateVolume", "RESOURCE_EXHAUSTED"), 0) > before.get(
            ("CreateVolume", "RESOURCE_EXHAUSTED"), 0
        )
        events = kube.api.kubectl(
            "get", "events", "-n", "default", "--field-selector", f"involvedObject.name={claim}", "-o", "json"
        )
        messages = " ".join(e.get("message", "") for e in json.loads(events)["items"])
        assert "largest free extent" in messages, messages
        dv = device_volumes(kube)[kube.get("pvc", claim)["spec"]["volumeName"]]
        assert dv["spec"]["ownerNodeID"] == "node-1"
    finally:
        kube.api.kubectl("delete", "pod", "-n", "default", pod, "--grace-period=0", "--force")  # no kubelet
        delete_pvcs(kube, [claim])
        number = next(p["node"] for p in partitions(disk) if p.get("name") == "filler")
        subprocess.run(
            ["sfdisk", "--delete", "--no-reread", "--no-tell-kernel", disk, str(number).rsplit("p", 1)[1]],
            check=True,
            capture_output=True,
        )
        os.sync()
