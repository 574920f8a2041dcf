"""Deletion through the whole chain, leak protection, and how fast freed space becomes visible."""

from __future__ import annotations

import time
import uuid

from harness.disks import partitions
from harness.kubernetes import KubeCluster
from harness.objects import MIB, create_pvcs, delete_pvcs, pv_node, pvc_body, storage_class, wait_bound


def node_free(kube: KubeCluster, node: str) -> int:
    dn = kube.get("devicenode", node, namespace="openebs")
    return sum(int(d["free"]) for d in dn["devices"])


def all_partition_names(kube: KubeCluster) -> set[str]:
    return {str(p.get("name")) for n in kube.nodes.values() for d in n.disks for p in partitions(d.device)}


def test_delete_chain_frees_space_quickly(kube: KubeCluster) -> None:
    storage_class(kube, "chain", scheduler="FreeCapacityWeighted", nodes=["node-2"])
    start = node_free(kube, "node-2")
    name = f"d-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [pvc_body(name, "chain", 32 * MIB)])
    pvc = wait_bound(kube, [name])[name]
    assert pv_node(kube, pvc) == "node-2"
    # A create is written to the DeviceNode within the agent's INVENTORY_WRITE_SECONDS (5), not before Ready.
    t0 = time.monotonic()
    while node_free(kube, "node-2") != start - 32 * MIB:
        assert time.monotonic() - t0 < 10, "DeviceNode did not show the new volume"
        time.sleep(0.1)
    pv = pvc["spec"]["volumeName"]
    kube.api.kubectl("delete", "pvc", "-n", "default", name, "--wait=false")
    t0 = time.monotonic()
    while node_free(kube, "node-2") != start:
        assert time.monotonic() - t0 < 10, "DeviceNode did not show the freed space"
        time.sleep(0.05)
    delete_pvcs(kube, [name])
    assert pv.removeprefix("pvc-") not in all_partition_names(kube)


def test_claim_deleted_while_provisioning_leaves_nothing(kube: KubeCluster) -> None:
    storage_class(kube, "leak")
    names = [f"l-{uuid.uuid4().hex[:8]}" for _ in range(10)]
    before = all_partition_names(kube)
    create_pvcs(kube, [pvc_body(n, "leak", 8 * MIB) for n in names])
    time.sleep(0.3)
    kube.api.kubectl("delete", "pvc", "-n", "default", "--wait=false", *names)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        pvs = [p for p in kube.get("pv", namespace=None)["items"] if p["spec"].get("claimRef", {}).get("name") in names]
        dvs = kube.get("devicevolumes", namespace="openebs")["items"]
        if not pvs and all_partition_names(kube) == before and len(dvs) == 0:
            break
        time.sleep(0.5)
    assert all_partition_names(kube) == before
    assert not [
        p for p in kube.get("pv", namespace=None)["items"] if p["spec"].get("claimRef", {}).get("name") in names
    ]
    wait_bound(kube, [])  # nothing pending
    delete_pvcs(kube, [])
