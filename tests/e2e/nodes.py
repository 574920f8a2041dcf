"""A node of a test's own on the session's API server: a Node, pool disks, its agent; released afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from harness.csi import POOL
from harness.disks import LoopDisk
from harness.driver import Process
from tests.conftest import Cluster
from tests.e2e.test_plugin import plugin


@contextmanager
def own_node(
    cluster: Cluster, name: str, disks_mib: tuple[int, ...] = (128,), pool: str = POOL, **env: str
) -> Iterator[tuple[Process, list[LoopDisk]]]:
    """Yields the agent and the disks. Whatever the test did, the node's latest agent is stopped and the node
    released (its volumes and DeviceNode removed), so the next test starts clean."""
    cluster.api.add_node(name)
    disks = [cluster.disks.pool(pool, mib) for mib in disks_mib]
    agent = cluster.driver.agent(name, [d.device for d in disks], **env)
    agent.wait_ready()
    try:
        yield agent, disks
    finally:
        cluster.driver.processes[agent.name].stop()  # the latest agent of the node, if the test restarted it
        plugin(cluster, "release-node", name, "--reason", "test done")
        cluster.api.kubectl("delete", "node", name, "--ignore-not-found")
