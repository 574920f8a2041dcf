"""Moving a disk with data from one node to another and finishing the move with `kubectl device-localpv migrate`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc

from harness.csi import mount_cap, publish, unpublish
from harness.kubernetes import KubeCluster
from harness.objects import MIB, create_pvcs, delete_pvcs, pv_node, pvc_body, storage_class, wait_bound
from tests.k8s.test_wffc import pod_body, wait_scheduled


def plugin(kube: KubeCluster, *args: str) -> str:
    argv = [
        sys.executable,
        "-m",
        "csidriver.plugin.cli",
        "--kubeconfig",
        kube.api.identities["admin"].kubeconfig,
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _vol(kube: KubeCluster, pv: str) -> Any:
    obj = kube.get("pv", pv, namespace=None)["spec"]["csi"]
    return type("V", (), {"volume_id": obj["volumeHandle"], "volume_context": obj["volumeAttributes"]})()


def _node_sees(kube: KubeCluster, node: str, guid: str) -> None:
    deadline = time.monotonic() + 30
    while guid not in {d["uuid"] for d in kube.get("devicenode", node, namespace="openebs")["devices"]}:
        assert time.monotonic() < deadline, f"{node} never reported {guid}"
        time.sleep(0.2)


def _io(kube: KubeCluster, node: str, pv: str, write: str | None = None) -> str:
    ch = grpc.insecure_channel(f"unix://{kube.nodes[node].agent.socket}")
    target = kube.workdir / f"mig-{uuid.uuid4().hex[:6]}"
    publish(ch, _vol(kube, pv), str(target), mount_cap("ext4"))
    try:
        if write is not None:
            (target / "data").write_text(write)
        return (target / "data").read_text()
    finally:
        unpublish(ch, _vol(kube, pv).volume_id, str(target))


def test_migrate_moved_disk(kube: KubeCluster) -> None:
    storage_class(kube, "mig", nodes=["node-2"])
    claim, pod = f"m-{uuid.uuid4().hex[:8]}", f"mp-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [pvc_body(claim, "mig", 16 * MIB)])
    pv = wait_bound(kube, [claim])[claim]["spec"]["volumeName"]
    _io(kube, "node-2", pv, write="data written on node-2")
    create_pvcs(kube, [pod_body(pod, claim)])
    assert wait_scheduled(kube, pod) == "node-2"
    moved = kube.nodes["node-2"].disks[0]
    guid = json.loads(kube.api.kubectl("get", "devicevolume", "-n", "openebs", pv, "-o", "json"))["status"]["diskGUID"]
    node1_disks = list(kube.nodes["node-1"].disks)
    try:
        # The disk moves: node-2 loses it, node-1 gets it.
        kube.set_disks("node-2", [])
        kube.set_disks("node-1", [*node1_disks, moved])
        _node_sees(kube, "node-1", guid)
        assert "would hand DeviceVolume" in plugin(kube, "migrate", pv, "--to", "node-1", "--dry-run")
        out = plugin(kube, "migrate", pv, "--to", "node-1")
        assert f"delete pod default/{pod}" in out, out
        dv = kube.get("devicevolume", pv, namespace="openebs")
        assert dv["spec"]["ownerNodeID"] == "node-1"
        assert dv["metadata"]["labels"]["kubernetes.io/nodename"] == "node-1"
        pvc = wait_bound(kube, [claim])[claim]
        assert pvc["spec"]["volumeName"] == pv and pv_node(kube, pvc) == "node-1"
        assert kube.get("pv", pv, namespace=None)["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
        # Deleted so that its controller reschedules it (no kubelet here, so it stays Terminating).
        assert kube.get("pod", pod)["metadata"].get("deletionTimestamp")
        assert _io(kube, "node-1", pv) == "data written on node-2"
        plugin(kube, "migrate", pv, "--to", "node-1")  # idempotent: nothing left to do
    finally:
        kube.api.kubectl("delete", "pod", "-n", "default", pod, "--grace-period=0", "--force", "--ignore-not-found")
        # Put the disk back where the other tests expect it, and the volume with it.
        kube.set_disks("node-1", node1_disks)
        kube.set_disks("node-2", [moved])
        _node_sees(kube, "node-2", guid)
        plugin(kube, "migrate", pv, "--to", "node-2")
        delete_pvcs(kube, [claim])


@contextlib.contextmanager
def _volume_on_moved_disk(
    kube: KubeCluster, sc: str, write: str | None = None, rename: bool = False
) -> Iterator[tuple[str, Any]]:
    """A 16 MiB volume on node-2 whose disk is then moved to node-1 (re-attached under a new name and without a
    partition scan when `rename`); yields (PV name, the disk). Afterwards the disk and the volume go back to
    node-2 and the claim is deleted."""
    from harness.disks import LoopDisk, run

    storage_class(kube, sc, nodes=["node-2"])
    claim = f"m-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [pvc_body(claim, sc, 16 * MIB)])
    pv = wait_bound(kube, [claim])[claim]["spec"]["volumeName"]
    if write is not None:
        _io(kube, "node-2", pv, write=write)
    disk = kube.nodes["node-2"].disks[0]
    guid = kube.get("devicevolume", pv, namespace="openebs")["status"]["diskGUID"]
    node1_disks = list(kube.nodes["node-1"].disks)
    kube.set_disks("node-2", [])
    if rename:
        run("losetup", "--detach", disk.device)
        # Attached again without --partscan: the disk has a new name and no partition device nodes.
        renamed = LoopDisk(disk.image, run("losetup", "--find", "--show", str(disk.image)).strip())
        kube.disks.disks[kube.disks.disks.index(disk)] = renamed
        disk = renamed
        assert not [p for p in os.listdir("/sys/class/block") if p.startswith(disk.name + "p")]
    try:
        kube.set_disks("node-1", [*node1_disks, disk])
        _node_sees(kube, "node-1", guid)
        yield pv, disk
    finally:
        kube.set_disks("node-1", node1_disks)
        kube.set_disks("node-2", [disk])
        _node_sees(kube, "node-2", guid)
        if kube.get("devicevolume", pv, namespace="openebs")["spec"]["ownerNodeID"] != "node-2":
            plugin(kube, "migrate", pv, "--to", "node-2")
        delete_pvcs(kube, [claim])


def test_a_plan_saved_by_an_interrupted_run_follows_the_new_target(kube: KubeCluster) -> None:
    """A run `--to node-3` interrupted right after it saved its PV plan, then `--to node-1`: the PV must be recreated
    with node-1 affinity (the node now asked for and now owning the DeviceVolume), never node-3."""
    from csidriver.plugin.migrate import SAVED_PV, _retarget

    with _volume_on_moved_disk(kube, "mig2") as (pv, _):
        stale = _retarget(kube.get("pv", pv, namespace=None), "node-3")
        patch = json.dumps({"metadata": {"annotations": {SAVED_PV: json.dumps(stale)}}})
        kube.api.kubectl("patch", "devicevolume", pv, "-n", "openebs", "--type=merge", "-p", patch)

        assert "node affinity node-1" in plugin(kube, "migrate", pv, "--to", "node-1", "--dry-run")
        plugin(kube, "migrate", pv, "--to", "node-1")
        pv_obj = kube.get("pv", pv, namespace=None)
        claim = pv_obj["spec"]["claimRef"]["name"]
        pvc = wait_bound(kube, [claim])[claim]
        assert pv_node(kube, pvc) == "node-1", "the PV follows a stale plan, not --to"
        dv = kube.get("devicevolume", pv, namespace="openebs")
        assert dv["spec"]["ownerNodeID"] == "node-1"
        assert pv_obj["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
        assert SAVED_PV not in (dv["metadata"].get("annotations") or {})


def test_a_disk_back_under_a_new_name_without_partition_nodes(kube: KubeCluster) -> None:
    """The moved disk appears on node-1 under a new name and the kernel has not scanned its partitions (no device
    node for the volume). The agent must create it before it says Located, so that a publish after `migrate`
    works instead of answering NOT_FOUND."""
    with _volume_on_moved_disk(kube, "mig3", write="written before the move", rename=True) as (pv, disk):
        plugin(kube, "migrate", pv, "--to", "node-1")
        device = kube.get("devicevolume", pv, namespace="openebs")["status"]["devicePath"]
        assert device.startswith(disk.device) and os.path.exists(device), device
        assert _io(kube, "node-1", pv) == "written before the move"


def test_release_node_refuses_while_a_volume_of_it_lives_on_another_node(kube: KubeCluster) -> None:
    """node-2's disk was moved to node-1 but its volume not migrated yet: releasing node-2 would delete the volume's
    object and orphan its partition on the moved disk. release-node (and its dry run) refuses and says what to do."""
    argv = [sys.executable, "-m", "csidriver.plugin.cli", "--kubeconfig", kube.api.identities["admin"].kubeconfig]
    with _volume_on_moved_disk(kube, "mig4") as (pv, _):
        for extra in (["--dry-run"], []):
            done = subprocess.run(
                [*argv, "release-node", "node-2", "--reason", "moved", "--force", *extra],
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 1, done.stdout + done.stderr
            guid = kube.get("devicevolume", pv, namespace="openebs")["status"]["diskGUID"]
            assert f"{pv} is not lost" in done.stderr and f"migrate-disk {guid} --to node-1" in done.stderr, done.stderr
        assert kube.get("devicevolume", pv, namespace="openebs")["spec"]["ownerNodeID"] == "node-2"
        assert kube.api.kubectl("get", "devicenode", "node-2", "-n", "openebs", "-o", "name").strip()
