"""A pool disk that disappears is reported unhealthy, skipped by schedulers, and never 'deleted' silently."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from typing import Any

import grpc

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import MIB, POOL, code_of, create, delete
from harness.csi import capacity as node_capacity
from harness.disks import partitions
from tests.conftest import Cluster
from tests.e2e.test_plugin import plugin

NODE = "node-fail"
TOPO = {"openebs.io/nodename": NODE}


def capacity(cluster: Cluster) -> int:
    return node_capacity(cluster.controller_channel, NODE)


def wait_for(what: str, check: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_vanished_disk(cluster: Cluster) -> None:
    cluster.api.add_node(NODE)
    disk = cluster.disks.pool(POOL, 128)
    agent = cluster.driver.agent(NODE, [disk.device])
    agent.wait_ready()
    try:
        wait_for("controller sees the node", lambda: capacity(cluster) > 0)
        name = f"pvc-{uuid.uuid4()}"
        create(cluster.controller_channel, name, 4 * MIB, requisite=[TOPO])
        subprocess.run(["losetup", "--detach", disk.device], check=True)

        def unhealthy() -> bool:
            dn = json.loads(cluster.api.kubectl("get", "devicenode", "-n", "openebs", NODE, "-o", "json"))
            return [d["healthy"] for d in dn["devices"]] == [False]

        wait_for("DeviceNode marks the disk unhealthy", unhealthy)
        wait_for("capacity drops to zero", lambda: capacity(cluster) == 0)
        ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
        cond = ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=name)).status.volume_condition
        assert cond.abnormal and "unhealthy" in cond.message, cond
        code, msg = code_of(lambda: create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", MIB, requisite=[TOPO]))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, msg
        nodes = json.loads(plugin(cluster, "nodes", "-o", "json").stdout)
        assert [n["health"] for n in nodes if n["node"] == NODE] == ["Unhealthy"]

        # DeleteVolume answers promptly with the reason, and does not pretend: the partition could not be wiped.
        start = time.monotonic()
        code, msg = code_of(lambda: delete(cluster.controller_channel, name))
        took = time.monotonic() - start
        assert code == grpc.StatusCode.FAILED_PRECONDITION, msg
        assert "not present or not readable" in msg and NODE in msg, msg
        assert took < 20, f"answered after {took:.1f} s"
        still = json.loads(cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, "-o", "json"))
        assert still["metadata"]["deletionTimestamp"]

        # The agent retries with backoff; its Event is one object whose count grows, not one object per retry.
        def missing() -> list[dict[str, Any]]:
            selector = f"involvedObject.name={name},reason=DiskMissing"
            out = cluster.api.kubectl("get", "events", "-n", "openebs", "--field-selector", selector, "-o", "json")
            return list(json.loads(out)["items"])

        wait_for("the DiskMissing Event is counted again", lambda: [e["count"] > 1 for e in missing()] == [True])
    finally:
        agent.stop()
        plugin(cluster, "release-node", NODE, "--reason", "disk test done")
        cluster.api.kubectl("delete", "node", NODE, "--ignore-not-found")


def test_gone_disk_is_listed_only_while_a_volume_is_on_it(cluster: Cluster) -> None:
    """Two disks vanish: the one holding a volume stays listed unhealthy (the operator must act on it); the empty one
    leaves the DeviceNode, so a disk moved away leaves no stale row behind."""
    node = "node-gone"
    cluster.api.add_node(node)
    held, empty = cluster.disks.pool(POOL, 64), cluster.disks.pool(POOL, 64)
    agent = cluster.driver.agent(node, [held.device, empty.device])
    agent.wait_ready()

    def rows() -> dict[str, bool]:
        dn = json.loads(cluster.api.kubectl("get", "devicenode", "-n", "openebs", node, "-o", "json"))
        return {d["path"]: d["healthy"] for d in dn["devices"]}

    try:
        # Ready (Probe) only after the DeviceNode holds the first scan: no waiting here.
        assert rows() == {held.device: True, empty.device: True}
        topo = {"openebs.io/nodename": node}
        name = f"pvc-{uuid.uuid4()}"
        # The bigger free extent decides nothing here: pin the volume to `held` by cordoning `empty`.
        guid = next(
            d["uuid"]
            for d in json.loads(cluster.api.kubectl("get", "devicenode", "-n", "openebs", node, "-o", "json"))[
                "devices"
            ]
            if d["path"] == empty.device
        )
        plugin(cluster, "cordon-disk", node, guid)
        create(cluster.controller_channel, name, 4 * MIB, requisite=[topo])
        for disk in (held, empty):
            subprocess.run(["losetup", "--detach", disk.device], check=True)
        wait_for("only the disk holding the volume is listed, unhealthy", lambda: rows() == {held.device: False})
    finally:
        agent.stop()
        plugin(cluster, "release-node", node, "--reason", "disk test done")
        cluster.api.kubectl("delete", "node", node, "--ignore-not-found")


def test_an_agent_failure_reaches_create_volume_with_its_cause(cluster: Cluster) -> None:
    """A failure the agent keeps retrying (here: its lock directory cannot be made, a misconfiguration) is written
    in status and answered by CreateVolume after a few seconds with the agent's reason, not a bare
    DEADLINE_EXCEEDED after the whole timeout; nothing is written on the disk."""
    node = "node-misconf"
    cluster.api.add_node(node)
    disk = cluster.disks.pool(POOL, 64)
    blocker = cluster.workdir / "not-a-directory"
    blocker.write_text("")
    agent = cluster.driver.agent(node, [disk.device], LOCK_DIR=str(blocker / "locks"))
    agent.wait_ready()
    name = f"pvc-{uuid.uuid4()}"
    layout = partitions(disk.device)
    try:
        start = time.monotonic()
        code, msg = code_of(
            lambda: create(cluster.controller_channel, name, 4 * MIB, requisite=[{"openebs.io/nodename": node}])
        )
        took = time.monotonic() - start
        assert code == grpc.StatusCode.INTERNAL, msg
        assert "not-a-directory" in msg and node in msg and "keeps retrying" in msg, msg
        assert took < 20, f"answered after {took:.1f} s"
        status = json.loads(cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, "-o", "json"))["status"]
        assert [c["reason"] for c in status["conditions"] if c["type"] == "Ready"] == ["AgentError"]
        assert partitions(disk.device) == layout
    finally:
        agent.stop()
        plugin(cluster, "release-node", node, "--reason", "misconfiguration test done")
        cluster.api.kubectl("delete", "node", node, "--ignore-not-found")
