"""A node whose agent is gone gets no new volume and prompt answers; a deletion the agent cannot finish says why.

Its own node and agent, with a fast heartbeat (HEARTBEAT_SECONDS=0.5: the Lease lasts 2 s).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from csidriver.api import naming
from harness.csi import MIB, POOL, code_of, create, delete, publish, unpublish
from harness.disks import LoopDisk, partitions
from harness.driver import Process
from tests.conftest import Cluster
from tests.e2e.nodes import own_node
from tests.e2e.test_disk_failure import wait_for

NODE = "node-beat"
TOPO = {"openebs.io/nodename": NODE}
BEAT = {"HEARTBEAT_SECONDS": "0.5"}
C = grpc.StatusCode


def _volume(cluster: Cluster, name: str) -> dict[str, Any] | None:
    out = cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, "-o", "json", "--ignore-not-found")
    return json.loads(out) if out.strip() else None


def _timed(call: Any) -> tuple[C, str, float]:
    start = time.monotonic()
    code, msg = code_of(call)
    return code, msg, time.monotonic() - start


@pytest.fixture
def beat_node(cluster: Cluster) -> Iterator[tuple[Process, LoopDisk]]:
    with own_node(cluster, NODE, (128,), **BEAT) as (agent, disks):
        yield agent, disks[0]


def test_heartbeat_lease_is_written_and_owned_by_the_node(
    cluster: Cluster, beat_node: tuple[Process, LoopDisk]
) -> None:
    lease = json.loads(cluster.api.kubectl("get", "lease", "-n", "openebs", naming.heartbeat_name(NODE), "-o", "json"))
    assert lease["spec"]["holderIdentity"] == NODE
    assert lease["spec"]["leaseDurationSeconds"] == 2
    assert [o["kind"] + "/" + o["name"] for o in lease["metadata"]["ownerReferences"]] == [f"Node/{NODE}"]
    first = lease["spec"]["renewTime"]
    wait_for(
        "the Lease is renewed",
        lambda: (
            json.loads(cluster.api.kubectl("get", "lease", "-n", "openebs", naming.heartbeat_name(NODE), "-o", "json"))[
                "spec"
            ]["renewTime"]
            != first
        ),
        timeout=5,
    )


def test_deleting_a_mounted_volume_answers_promptly_with_the_mount(
    cluster: Cluster, beat_node: tuple[Process, LoopDisk]
) -> None:
    agent, _ = beat_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 8 * MIB, requisite=[TOPO])
    target = str(cluster.workdir / f"beat-{vol.volume_id}")
    publish(node_ch, vol, target)
    try:
        code, msg, took = _timed(lambda: delete(cluster.controller_channel, vol.volume_id))
        assert code == C.FAILED_PRECONDITION, msg
        assert NODE in msg and "mounted" in msg, msg
        assert took < 20, f"answered after {took:.1f} s"
        # The refusal is one aggregated Event with a count, not one object per retry.
        time.sleep(3)
        events = json.loads(
            cluster.api.kubectl(
                "get",
                "events",
                "-n",
                "openebs",
                "--field-selector",
                f"involvedObject.name={vol.volume_id},reason=DeleteBlocked",
                "-o",
                "json",
            )
        )["items"]
        assert len(events) == 1, [e["message"] for e in events]
    finally:
        unpublish(node_ch, vol.volume_id, target)
    delete(cluster.controller_channel, vol.volume_id)  # now it goes, at once
    assert _volume(cluster, vol.volume_id) is None


def test_a_node_whose_agent_is_gone_is_not_chosen_and_its_calls_answer_promptly(
    cluster: Cluster, beat_node: tuple[Process, LoopDisk]
) -> None:
    agent, disk = beat_node
    kept = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 8 * MIB, requisite=[TOPO])
    layout = partitions(disk.device)
    agent.kill()  # SIGKILL: no chance to say goodbye; only the heartbeat stops
    time.sleep(3)

    # 1. A new volume for that node: RESOURCE_EXHAUSTED at once, naming the heartbeat; no object left behind.
    name = f"pvc-{uuid.uuid4()}"
    code, msg, took = _timed(lambda: create(cluster.controller_channel, name, 8 * MIB, requisite=[TOPO]))
    assert code == C.RESOURCE_EXHAUSTED, msg
    assert NODE in msg and "heartbeat" in msg, msg
    assert took < 5, f"answered after {took:.1f} s"
    assert _volume(cluster, name) is None

    # 2. A placement made before the agent died, that no agent started (no finalizer): the retry withdraws it and
    #    places the volume on a live node.
    stuck = f"pvc-{uuid.uuid4()}"
    body = {
        "apiVersion": "local.openebs.io/v1alpha2",
        "kind": "DeviceVolume",
        "metadata": {"name": stuck, "namespace": "openebs", "labels": {"kubernetes.io/nodename": NODE}},
        "spec": {"ownerNodeID": NODE, "capacity": str(8 * MIB), "devname": POOL},
    }
    cluster.api.kubectl("create", "-f", "-", input=json.dumps(body))
    moved = create(cluster.controller_channel, stuck, 8 * MIB)
    assert dict(moved.accessible_topology[0].segments)["openebs.io/nodename"] != NODE
    delete(cluster.controller_channel, stuck)

    # 3. Deleting a volume of that node: UNAVAILABLE promptly, saying why; it completes once the agent is back.
    code, msg, took = _timed(lambda: delete(cluster.controller_channel, kept.volume_id))
    assert code == C.UNAVAILABLE, msg
    assert NODE in msg and "heartbeat" in msg, msg
    assert took < 15, f"answered after {took:.1f} s"
    assert partitions(disk.device) == layout  # nothing touched while the agent was away

    restarted = cluster.driver.agent(NODE, [disk.device], **BEAT)
    restarted.wait_ready()
    delete(cluster.controller_channel, kept.volume_id)
    assert _volume(cluster, kept.volume_id) is None
    assert len(partitions(disk.device)) == len(layout) - 1
