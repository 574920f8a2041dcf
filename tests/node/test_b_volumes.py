"""A PVC per filesystem and a raw block PVC, with Immediate and WaitForFirstConsumer classes, used by real Pods:
data written by one Pod is read back by the next, a read-only claim is read-only, and deleting the PVC removes the
partition and gives the space back in DeviceNode."""

from __future__ import annotations

import pytest

from harness.disks import partitions
from harness.node import wait_for
from harness.workloads import NAMESPACE, NodeCluster

MIB = 1 << 20
PAYLOAD_MIB = 8

WRITE_FS = f"set -e; head -c {PAYLOAD_MIB * MIB} /dev/urandom > /data/payload; sync; sha256sum /data/payload"
WRITE_BLOCK = (
    f"set -e; head -c {PAYLOAD_MIB * MIB} /dev/urandom > /tmp/p;"
    " dd if=/tmp/p of=/dev/xvda bs=1M conv=fsync status=none; sha256sum /tmp/p"
)
READ_FS = (
    "set -e; sha256sum /data/payload;"
    " if touch /data/other 2>/dev/null; then echo WRITABLE; else echo READ-ONLY; fi;"
    " grep ' /data ' /proc/self/mounts"
)
READ_BLOCK = (
    f"set -e; head -c {PAYLOAD_MIB * MIB} /dev/xvda | sha256sum;"
    " if dd if=/dev/zero of=/dev/xvda bs=4096 count=1 conv=fsync status=none 2>/dev/null;"
    " then echo WRITABLE; else echo READ-ONLY; fi"
)
# mkfs minimums: xfs refuses filesystems under 300 MiB, btrfs under about 110 MiB.
SIZES = {"ext4": "64Mi", "xfs": "320Mi", "btrfs": "256Mi", "block": "64Mi"}


@pytest.mark.parametrize("binding", ["WaitForFirstConsumer", "Immediate"])
@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "block"])
def test_pods_keep_data_across_pods(node: NodeCluster, fstype: str, binding: str) -> None:
    block = fstype == "block"
    short = "wffc" if binding == "WaitForFirstConsumer" else "imm"
    sc, claim = f"dlpv-{fstype}-{short}", f"data-{fstype}-{short}"
    free_before = node.free_bytes()
    node.storage_class(sc, "ssd", fstype, binding)
    node.pvc(claim, sc, SIZES[fstype], block=block)

    written = node.run_pod(f"writer-{fstype}-{short}", claim, WRITE_BLOCK if block else WRITE_FS, block=block)
    digest = written.split()[0]
    assert len(digest) == 64, written

    pv = node.pv_of(claim)
    volume = node.real.get("devicevolume", pv, namespace=NAMESPACE)
    assert volume["status"]["state"] == "Ready"
    disk = volume["status"]["diskPath"]
    part_name = volume["status"]["partitionName"]
    assert any(p.get("name") == part_name for p in partitions(disk)), f"{part_name} not on {disk}"
    # Written to the DeviceNode within the agent's INVENTORY_WRITE_SECONDS (5) of the create.
    wait_for("the DeviceNode shows the volume", lambda: node.free_bytes() < free_before, 15)

    read = node.run_pod(
        f"reader-{fstype}-{short}", claim, READ_BLOCK if block else READ_FS, block=block, read_only=True
    )
    assert read.split()[0] == digest, f"data changed between Pods:\n{read}"
    assert "READ-ONLY" in read, f"a read-only claim was writable:\n{read}"
    if not block:
        assert f" {fstype} ro," in read, f"not mounted read-only as {fstype}:\n{read}"

    node.delete("pvc", claim)
    node.wait_gone("pv", pv)
    node.wait_gone("devicevolume", pv, namespace=NAMESPACE)
    assert not any(p.get("name") == part_name for p in partitions(disk)), f"{part_name} left on {disk}"
    node.kubectl("delete", "storageclass", sc)
    assert node.free_bytes() == free_before
