"""Two real nodes on one host (the `two_nodes` fixture starts node B beside the session's node): deploy/'s agent
runs on node B as well, a Pod pinned to node B gets a volume carved from node B's disk, and a pool disk moved from
node A to node B is reported by node B's DeviceNode instead of node A's, its bytes unchanged."""

from __future__ import annotations

from pathlib import Path

from harness.disks import disk_guid, partitions
from harness.node import NODE, NODE_B, wait_for
from harness.workloads import NAMESPACE, TOPOLOGY_KEY, NodeCluster


def guids(cluster: NodeCluster, node: str) -> set[str]:
    return {str(d["uuid"]).upper() for d in cluster.device_node_disks(node)}


def test_agent_runs_on_node_b(two_nodes: NodeCluster) -> None:
    node = two_nodes
    agent = node.real.get("pod", node.agent_pod(NODE_B), namespace=NAMESPACE)
    assert agent["spec"]["nodeName"] == NODE_B
    assert node.real.get("pod", node.agent_pod(NODE), namespace=NAMESPACE)["spec"]["nodeName"] == NODE
    registered = node.csinode_driver(NODE_B)
    assert registered is not None, "kubelet of node B did not register the plugin in CSINode"
    assert registered["nodeID"] == NODE_B
    assert TOPOLOGY_KEY in registered["topologyKeys"]
    # Each agent reports its own node's disks only: they see the same /dev.
    assert guids(node, NODE_B) == {disk_guid(d.device) for d in node.node_b_disks}
    assert not guids(node, NODE) & guids(node, NODE_B)


def test_pod_on_node_b_gets_a_volume_from_node_b(two_nodes: NodeCluster) -> None:
    node = two_nodes
    sc, claim = "dlpv-node-b", "on-node-b"
    node.storage_class(sc, "ssd", "ext4", "WaitForFirstConsumer")
    node.pvc(claim, sc, "64Mi")
    try:
        written = node.run_pod("b-writer", claim, "set -e; echo on-b > /data/f; sync; cat /data/f", node=NODE_B)
        assert written.strip() == "on-b", written
        pv = node.pv_of(claim)
        volume = node.real.get("devicevolume", pv, namespace=NAMESPACE)
        assert volume["spec"]["ownerNodeID"] == NODE_B, volume["spec"]
        disk = volume["status"]["diskPath"]
        assert disk in {d.device for d in node.node_b_disks}, volume["status"]
        assert any(p.get("name") == volume["status"]["partitionName"] for p in partitions(disk))

        node.pod("b-reader", claim, "cat /data/f; grep ' /data ' /proc/self/mounts", node=NODE_B)
        pod = node.wait_pod("b-reader", ("Succeeded", "Failed"))
        read = node.logs("b-reader")
        assert pod["spec"]["nodeName"] == NODE_B
        assert pod["status"]["phase"] == "Succeeded" and read.startswith("on-b\n"), read
        assert " ext4 rw," in read, read
        # Node B's mounts stay in node B's mount namespace: the host (node A's view) never sees them.
        assert f"/{pv}/mount" not in Path("/proc/self/mounts").read_text()
    finally:
        node.delete("pod", "b-reader")
        node.delete("pod", "b-writer")
        node.delete("pvc", claim)
    node.wait_gone("devicevolume", pv, namespace=NAMESPACE)
    node.kubectl("delete", "storageclass", sc)


def test_disk_moved_from_node_a_to_node_b(two_nodes: NodeCluster) -> None:
    """The agents notice on their own (no restart): node B reports the disk, by its GPT GUID, and node A stops
    reporting it (no volume of node A is on it); and back again."""
    node = two_nodes
    disk = node.pool_disks[1]
    guid = disk_guid(disk.device)
    assert node.node_of(disk) == NODE and guid in guids(node, NODE)
    before = disk.sha256()
    old = disk.device

    node.move_disk(disk, NODE_B)
    assert disk.device != old and node.node_of(disk) == NODE_B
    assert Path(f"{disk.device}p1").is_block_device(), "the moved disk's partitions are not known to the kernel"
    wait_for("node B reports the moved disk", lambda: guid in guids(node, NODE_B), 90)
    wait_for("node A no longer reports it", lambda: guid not in guids(node, NODE), 90)
    assert disk_guid(disk.device) == guid and disk.sha256() == before

    node.move_disk(disk, NODE)
    wait_for("node A reports the disk again", lambda: guid in guids(node, NODE), 90)
    wait_for("node B no longer reports it", lambda: guid not in guids(node, NODE_B), 90)
