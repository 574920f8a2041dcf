"""A pool disk added while the agent runs is found and used by the next PVC: the partition's device node, created
on the host after the agent container started, is usable inside it (the container sees the host's /dev)."""

from __future__ import annotations

import subprocess

from harness.node import wait_for
from harness.workloads import NAMESPACE, NodeCluster


def test_pool_disk_added_while_the_agent_runs(node: NodeCluster) -> None:
    disk = node.spare
    subprocess.run(["parted", "-s", disk.device, "mklabel", "gpt", "mkpart", "hot", "1MiB", "10MiB"], check=True)
    wait_for(
        "DeviceNode reports the new pool disk",
        lambda: any(d["name"] == "hot" for d in node.device_node_disks()),
        60,
    )
    node.storage_class("dlpv-hot", "hot", "ext4", "WaitForFirstConsumer")
    node.pvc("hot", "dlpv-hot", "32Mi")
    out = node.run_pod("hot-writer", "hot", "set -e; echo fresh > /data/f; sync; cat /data/f; df -P /data | tail -1")
    assert out.startswith("fresh"), out
    pv = node.pv_of("hot")
    status = node.real.get("devicevolume", pv, namespace=NAMESPACE)["status"]
    assert status["diskPath"] == disk.device, status
    node.delete("pvc", "hot")
    node.wait_gone("devicevolume", pv, namespace=NAMESPACE)
    node.kubectl("delete", "storageclass", "dlpv-hot")
