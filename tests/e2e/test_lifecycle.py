"""Create, publish, write, read, unpublish, delete against the real API server and real loop disks."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from typing import Any

import grpc
import pytest

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import MIB, POOL, block_cap, create, delete, mount_cap, publish, unpublish
from harness.disks import partitions
from tests.conftest import NODE, Cluster


def devicevolume(cluster: Cluster, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, "-o", "json"))
    return obj


def partition_names(cluster: Cluster) -> list[str]:
    return [str(p.get("name", "")) for d in cluster.pool_disks for p in partitions(d.device)]


def test_device_node_reports_only_exact_pool_disks(cluster: Cluster) -> None:
    dn = json.loads(cluster.api.kubectl("get", "devicenode", "-n", "openebs", NODE, "-o", "json"))
    devices = dn["devices"]
    ours = [d for d in devices if d["name"] == POOL]
    assert sorted(d["path"] for d in ours) == sorted(d.device for d in cluster.pool_disks)
    # The look-alike is a pool disk of its own pool "nvme-ssd2", never part of "ssd"; the foreign disk is absent.
    assert {d["path"]: d["name"] for d in devices if d["name"] != POOL} == {cluster.lookalike.device: "nvme-ssd2"}
    assert dn["metadata"]["ownerReferences"][0]["kind"] == "Node"
    for d in devices:
        assert int(d["freeEntries"]) == 128 - len(partitions(d["path"]))
        assert int(d["largestExtent"]) <= int(d["free"]) <= int(d["size"])


@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_filesystem_volume_lifecycle(cluster: Cluster, fs: str) -> None:
    name = f"pvc-{uuid.uuid4()}"
    # xfs needs 300 MiB at least, btrfs over 100 MiB: use one size for all.
    vol = create(cluster.controller_channel, name, 320 * MIB, cap=mount_cap(fs))
    assert vol.volume_id == name
    assert vol.capacity_bytes == 320 * MIB
    assert dict(vol.accessible_topology[0].segments) == {"openebs.io/nodename": NODE}
    assert dict(vol.volume_context) == {"openebs.io/devicename": POOL, "openebs.io/cas-type": "localpv-device"}
    obj = devicevolume(cluster, name)
    assert obj["status"]["state"] == "Ready"
    assert obj["spec"] == {"ownerNodeID": NODE, "capacity": str(320 * MIB), "devname": POOL}
    assert obj["metadata"]["labels"]["kubernetes.io/nodename"] == NODE
    assert obj["status"]["partitionName"] == name.removeprefix("pvc-")
    assert name.removeprefix("pvc-") in partition_names(cluster)

    target = str(cluster.workdir / f"pub-{fs}")
    publish(cluster.node_channel, vol, target, mount_cap(fs))
    publish(cluster.node_channel, vol, target, mount_cap(fs))  # idempotent
    with open(os.path.join(target, "data"), "w") as f:
        f.write("hello " + fs)
    stats = csi_pb2_grpc.NodeStub(cluster.node_channel).NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=name, volume_path=target)
    )
    assert stats.usage[0].total > 250 * MIB
    unpublish(cluster.node_channel, name, target)
    assert not os.path.exists(target)
    unpublish(cluster.node_channel, name, target)  # idempotent
    publish(cluster.node_channel, vol, target, mount_cap(fs), readonly=True)
    with open(os.path.join(target, "data")) as f:
        assert f.read() == "hello " + fs
    with pytest.raises(OSError):
        open(os.path.join(target, "other"), "w").close()
    unpublish(cluster.node_channel, name, target)

    delete(cluster.controller_channel, name)
    delete(cluster.controller_channel, name)  # idempotent
    assert name.removeprefix("pvc-") not in partition_names(cluster)
    assert cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, check=False) == ""


def test_block_volume_lifecycle(cluster: Cluster) -> None:
    name = f"pvc-{uuid.uuid4()}"
    vol = create(cluster.controller_channel, name, 16 * MIB, cap=block_cap())
    target = str(cluster.workdir / "blockdev")
    publish(cluster.node_channel, vol, target, block_cap())
    publish(cluster.node_channel, vol, target, block_cap())
    payload = os.urandom(MIB)
    with open(target, "r+b") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    with open(target, "rb") as f:
        assert f.read(MIB) == payload
        f.seek(0, os.SEEK_END)
        assert f.tell() == 16 * MIB
    stats = csi_pb2_grpc.NodeStub(cluster.node_channel).NodeGetVolumeStats(
        csi_pb2.NodeGetVolumeStatsRequest(volume_id=name, volume_path=target)
    )
    assert stats.usage[0].total == 16 * MIB
    unpublish(cluster.node_channel, name, target)
    assert not os.path.exists(target)
    delete(cluster.controller_channel, name)


def test_create_is_idempotent(cluster: Cluster) -> None:
    name = f"pvc-{uuid.uuid4()}"
    a = create(cluster.controller_channel, name, 10 * MIB)
    b = create(cluster.controller_channel, name, 10 * MIB)
    assert a.volume_id == b.volume_id and a.capacity_bytes == b.capacity_bytes == 10 * MIB
    with pytest.raises(grpc.RpcError) as e:
        create(cluster.controller_channel, name, 20 * MIB)
    assert e.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert partition_names(cluster).count(name.removeprefix("pvc-")) == 1
    delete(cluster.controller_channel, name)


def test_sizes_round_up_to_mib(cluster: Cluster) -> None:
    vol = create(cluster.controller_channel, "round-me", MIB + 1)
    assert vol.capacity_bytes == 2 * MIB
    delete(cluster.controller_channel, vol.volume_id)


def test_hostile_names_are_hashed_not_passed_through(cluster: Cluster) -> None:
    name = "Weird Name/../" + "x" * 100 + " $(rm -rf /)"
    vol = create(cluster.controller_channel, name, MIB)
    assert vol.volume_id.startswith("vol-") and len(vol.volume_id) == 40
    assert create(cluster.controller_channel, name, MIB).volume_id == vol.volume_id
    delete(cluster.controller_channel, vol.volume_id)


def test_original_driver_volume_is_adopted(cluster: Cluster) -> None:
    """A partition and a Ready DeviceVolume exactly as the original driver left them."""
    uid = str(uuid.uuid4())
    disk = cluster.pool_disks[0].device
    subprocess.run(["sfdisk", "--json", disk], check=True, capture_output=True)
    free_start = max(int(p["start"]) + int(p["size"]) for p in partitions(disk))
    start_mib = -(-free_start * 512 // MIB) + 1
    subprocess.run(["parted", "-s", disk, "mkpart", uid, f"{start_mib}MiB", f"{start_mib + 8}MiB"], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", f"{disk}p{len(partitions(disk))}"], check=False)
    body = {
        "apiVersion": "local.openebs.io/v1alpha1",
        "kind": "DeviceVolume",
        "metadata": {
            "name": f"pvc-{uid}",
            "namespace": "openebs",
            "labels": {"kubernetes.io/nodename": NODE},
            "finalizers": ["device.openebs.io/finalizer"],
        },
        "spec": {"ownerNodeID": NODE, "capacity": str(8 * MIB), "devname": POOL},
        # Written with the object, as the original does through v1alpha1 (no status subresource there).
        "status": {"state": "Ready"},
    }
    cluster.api.kubectl("apply", "-f", "-", input=json.dumps(body))
    got = json.loads(cluster.api.kubectl("get", "devicevolume", "-n", "openebs", f"pvc-{uid}", "-o", "json"))
    assert got["status"]["state"] == "Ready"
    target = str(cluster.workdir / "adopted")
    vol = csi_pb2.Volume(volume_id=f"pvc-{uid}", volume_context={"openebs.io/devicename": POOL})
    publish(cluster.node_channel, vol, target)
    assert os.path.ismount(target)
    unpublish(cluster.node_channel, vol.volume_id, target)
    delete(cluster.controller_channel, vol.volume_id)
    assert uid not in partition_names(cluster)


def test_original_pending_volume_is_carved_once(cluster: Cluster) -> None:
    """A volume as the original's controller writes it before its agent carved it (v1alpha1, status Pending, no node
    label, no finalizer): our agent sees it (its watch filters on spec.ownerNodeID), carves it once, marks it Ready,
    and the retried CreateVolume returns it."""
    uid = str(uuid.uuid4())
    name = f"pvc-{uid}"
    body = {
        "apiVersion": "local.openebs.io/v1alpha1",
        "kind": "DeviceVolume",
        "metadata": {"name": name, "namespace": "openebs"},
        "spec": {"ownerNodeID": NODE, "capacity": str(8 * MIB), "devname": POOL},
        "status": {"state": "Pending"},
    }
    cluster.api.kubectl("create", "-f", "-", input=json.dumps(body))
    vol = create(cluster.controller_channel, name, 8 * MIB)
    assert vol.volume_id == name
    got = devicevolume(cluster, name)
    assert got["status"]["state"] == "Ready" and "device.openebs.io/finalizer" in got["metadata"]["finalizers"]
    assert partition_names(cluster).count(uid) == 1
    delete(cluster.controller_channel, name)
    assert uid not in partition_names(cluster)
