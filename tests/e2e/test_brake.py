"""The brake on destruction: beyond N deletions per window the agent waits, says so, and resumes by itself."""

from __future__ import annotations

import json
import threading
import time
import uuid

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import MIB, POOL, create, delete
from harness.disks import partitions
from tests.conftest import Cluster

NODE = "node-brake"


def test_deletions_beyond_the_limit_wait_for_the_window(cluster: Cluster) -> None:
    cluster.api.add_node(NODE)
    disk = cluster.disks.pool(POOL, 128)
    agent = cluster.driver.agent(NODE, [disk.device], MAX_DELETIONS="2", DELETION_WINDOW_SECONDS="8")
    agent.wait_ready()
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    deadline = time.monotonic() + 10
    while not ctl.GetCapacity(
        csi_pb2.GetCapacityRequest(
            parameters={"devname": POOL}, accessible_topology=csi_pb2.Topology(segments={"openebs.io/nodename": NODE})
        )
    ).available_capacity:  # the controller has seen the new node's DeviceNode
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        names = [f"pvc-{uuid.uuid4()}" for _ in range(4)]
        for n in names:
            create(cluster.controller_channel, n, MIB, requisite=[{"openebs.io/nodename": NODE}])
        assert len(partitions(disk.device)) == 5
        start = time.monotonic()
        done: dict[str, float] = {}

        def remove(n: str) -> None:
            for _ in range(10):  # DeleteVolume gives up after its timeout; the provisioner would retry
                try:
                    delete(cluster.controller_channel, n)
                    done[n] = time.monotonic() - start
                    return
                except Exception:
                    continue

        threads = [threading.Thread(target=remove, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        times = sorted(done.values())
        assert len(times) == 4, done
        assert times[1] < 6, times  # two go at once
        assert times[2] >= 7, times  # the rest wait for the window
        assert len(partitions(disk.device)) == 1
        events = json.loads(
            cluster.api.kubectl(
                "get", "events", "-n", "openebs", "--field-selector", "reason=DeletionsThrottled", "-o", "json"
            )
        )
        assert any(NODE in e["message"] for e in events["items"])
    finally:
        agent.stop()
        # The node is gone for good: take it out of scheduling so later tests never place volumes there.
        cluster.api.kubectl("delete", "devicenode", "-n", "openebs", NODE, "--ignore-not-found")
        cluster.api.kubectl("delete", "node", NODE, "--ignore-not-found")
