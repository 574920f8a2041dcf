"""StorageClass -> PVC -> PV through the real external-provisioner, PV controller and kube-scheduler."""

from __future__ import annotations

import uuid

import pytest

from harness.kubernetes import KubeCluster
from harness.objects import (
    MIB,
    create_pvcs,
    delete_pvcs,
    device_volumes,
    pv_node,
    pvc_body,
    storage_class,
    wait_bound,
)


def _claim(kube: KubeCluster, sc: str, size: int) -> str:
    name = f"c-{uuid.uuid4().hex[:10]}"
    create_pvcs(kube, [pvc_body(name, sc, size)])
    return name


def test_design_article_scenario(kube: KubeCluster) -> None:
    """Node1: 3 volumes, less total size than Node2's 2 volumes; Node3: no disk."""
    storage_class(kube, "pin-node-1", nodes=["node-1"])
    storage_class(kube, "pin-node-2", nodes=["node-2"])
    setup = [_claim(kube, "pin-node-1", 10 * MIB) for _ in range(3)]
    setup += [_claim(kube, "pin-node-2", 50 * MIB) for _ in range(2)]
    bound = wait_bound(kube, setup)
    assert [pv_node(kube, bound[n]) for n in setup] == ["node-1"] * 3 + ["node-2"] * 2
    try:
        expected = {"CapacityWeighted": "node-1", "VolumeWeighted": "node-2", "FreeCapacityWeighted": "node-1"}
        for policy, node in expected.items():
            sc = f"policy-{policy.lower()}"
            storage_class(kube, sc, scheduler=policy)
            name = _claim(kube, sc, 10 * MIB)
            got = pv_node(kube, wait_bound(kube, [name])[name])
            delete_pvcs(kube, [name])
            assert got == node, policy
    finally:
        delete_pvcs(kube, setup)


@pytest.mark.parametrize("policy", ["CapacityWeighted", "VolumeWeighted", "FreeCapacityWeighted"])
def test_disk_less_node_is_never_chosen(kube: KubeCluster, policy: str) -> None:
    sc = f"never-{policy.lower()}"
    storage_class(kube, sc, scheduler=policy)
    names = [f"n-{uuid.uuid4().hex[:10]}" for _ in range(6)]
    create_pvcs(kube, [pvc_body(n, sc, 4 * MIB) for n in names])
    bound = wait_bound(kube, names)
    nodes = {pv_node(kube, bound[n]) for n in names}
    delete_pvcs(kube, names)
    assert "node-3" not in nodes and nodes <= {"node-1", "node-2"}


def test_hundred_pvcs_at_once_bind_on_first_attempt(kube: KubeCluster) -> None:
    storage_class(kube, "burst", scheduler="FreeCapacityWeighted")
    before = kube.rpc_counts()
    names = [f"b-{i:03d}-{uuid.uuid4().hex[:6]}" for i in range(100)]
    create_pvcs(kube, [pvc_body(n, "burst", 16 * MIB) for n in names])
    bound = wait_bound(kube, names, timeout=180)
    after = kube.rpc_counts()
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after if k[0] == "CreateVolume"}
    try:
        assert calls == {("CreateVolume", "OK"): 100}, calls
        dvs = device_volumes(kube)
        for n in names:
            dv = dvs[bound[n]["spec"]["volumeName"]]
            assert dv["status"]["state"] == "Ready"
            assert dv["spec"]["ownerNodeID"] in ("node-1", "node-2")
            assert any(c["type"] == "Ready" and c["status"] == "True" for c in dv["status"]["conditions"])
    finally:
        delete_pvcs(kube, names, timeout=180)


def test_failure_is_explained_on_the_claim(kube: KubeCluster) -> None:
    storage_class(kube, "explain")
    name = _claim(kube, "explain", 8 << 30)
    try:
        import time

        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline:
            text = kube.api.kubectl("describe", "pvc", "-n", "default", name)
            if "largest free extent" in text:
                break
            time.sleep(0.5)
        assert "ProvisioningFailed" in text, text
        assert "pool 'ssd'" in text and str(8 << 30) in text and "largest free extent" in text, text
    finally:
        delete_pvcs(kube, [name])
