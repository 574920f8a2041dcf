"""Snapshots, restores and clones through Kubernetes: the real snapshot-controller and csi-snapshotter turn a
VolumeSnapshot into CreateSnapshot, the real csi-provisioner restores claims from it and clones claims; the bytes
are checked on the partitions the agents carved."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from typing import Any

from csidriver.api import naming
from harness.disks import partitions
from harness.kubernetes import DRIVER, KubeCluster
from harness.objects import (
    MIB,
    create_pvcs,
    delete_pvcs,
    device_volumes,
    pvc_body,
    storage_class_body,
    until,
    wait_bound,
)

CLASS, SNAP_CLASS = "snap-block", "device-snapshots"


def _classes(kube: KubeCluster) -> None:
    kube.apply(storage_class_body(CLASS))
    kube.apply(
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": SNAP_CLASS},
            "driver": DRIVER,
            "deletionPolicy": "Delete",
        }
    )


def _block_claim(name: str, size: int, source: dict[str, str] | None = None) -> dict[str, Any]:
    body = pvc_body(name, CLASS, size)
    body["spec"]["volumeMode"] = "Block"
    if source:
        body["spec"]["dataSource"] = source
    return body


def _device(kube: KubeCluster, claim: str) -> str:
    pv = kube.get("pvc", claim)["spec"]["volumeName"]
    return str(device_volumes(kube)[pv]["status"]["devicePath"])


def _digest(device: str, length: int) -> str:
    with open(device, "rb") as f:
        return hashlib.sha256(f.read(length)).hexdigest()


def _snapshots(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    raw = kube.api.kubectl("get", "devicesnapshots", "-n", "openebs", "-o", "json")
    return {o["metadata"]["name"]: o for o in json.loads(raw)["items"]}


def test_snapshot_restore_and_clone_hold_the_source_bytes(kube: KubeCluster) -> None:
    _classes(kube)
    size = 64 * MIB
    source = f"src-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [_block_claim(source, size)])
    claims = [source]
    snapshot = f"snap-{uuid.uuid4().hex[:8]}"
    try:
        wait_bound(kube, [source])
        data = os.urandom(size)
        with open(_device(kube, source), "r+b") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        want = hashlib.sha256(data).hexdigest()

        start = time.monotonic()
        kube.apply(
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "metadata": {"name": snapshot, "namespace": "default"},
                "spec": {"volumeSnapshotClassName": SNAP_CLASS, "source": {"persistentVolumeClaimName": source}},
            }
        )
        status = until(
            "VolumeSnapshot readyToUse",
            lambda: (
                (kube.get("volumesnapshot", snapshot).get("status") or {}).get("readyToUse")
                and kube.get("volumesnapshot", snapshot)["status"]
            ),
        )
        print(f"VolumeSnapshot of a 64 MiB claim ready in {time.monotonic() - start:.2f} s")
        content = kube.get("volumesnapshotcontent", status["boundVolumeSnapshotContentName"], namespace=None)
        handle = content["status"]["snapshotHandle"]
        assert content["status"]["restoreSize"] == size
        mine = _snapshots(kube)[handle]
        assert mine["status"]["state"] == "Ready" and mine["status"]["copiedBytes"] == size
        snap_device = mine["status"]["devicePath"]
        assert _digest(snap_device, size) == want
        with open(_device(kube, source), "r+b") as f:  # the source changes after the cut
            f.write(os.urandom(MIB))
            os.fsync(f.fileno())

        restored, clone = f"restored-{uuid.uuid4().hex[:8]}", f"clone-{uuid.uuid4().hex[:8]}"
        start = time.monotonic()
        create_pvcs(
            kube,
            [
                _block_claim(
                    restored,
                    size,
                    {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": snapshot},
                ),
            ],
        )
        claims.append(restored)
        wait_bound(kube, [restored])
        print(f"claim restored from the snapshot Bound in {time.monotonic() - start:.2f} s")
        assert _digest(_device(kube, restored), size) == want  # the snapshot's bytes, not the source's later ones
        create_pvcs(kube, [_block_claim(clone, size, {"kind": "PersistentVolumeClaim", "name": source})])
        claims.append(clone)
        wait_bound(kube, [clone])
        assert _digest(_device(kube, clone), size) == _digest(_device(kube, source), size) != want

        # Deleting the VolumeSnapshot (deletionPolicy Delete) removes the DeviceSnapshot and its partition.
        kube.api.kubectl("delete", "volumesnapshot", snapshot, "-n", "default", "--wait=false")
        until("DeviceSnapshot gone", lambda: handle not in _snapshots(kube))
        node = kube.nodes[mine["spec"]["ownerNodeID"]]
        names = {str(p.get("name")) for d in node.disks for p in partitions(d.device)}
        assert naming.snapshot_partition_name(handle) not in names
    finally:
        kube.api.kubectl("delete", "volumesnapshot", snapshot, "-n", "default", "--ignore-not-found", "--wait=false")
        delete_pvcs(kube, claims)
