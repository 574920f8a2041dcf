"""A pool disk that starts answering EIO (a FUSE-backed loop device, harness/fusedisk.py) is seen within 10 s:
DeviceNode, metric, capacity and volume conditions; deletions on it answer at once with the reason; when it reads
again it is healthy again."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid
from pathlib import Path

import grpc

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.apiserver import free_port
from harness.csi import MIB, POOL, code_of, create, delete, publish, unpublish
from harness.fusedisk import failing_pool_disk
from tests.conftest import Cluster
from tests.e2e.test_plugin import plugin

NODE = "node-eio"
TOPO = {"openebs.io/nodename": NODE}


def _healthy(cluster: Cluster) -> list[bool]:
    dn = json.loads(cluster.api.kubectl("get", "devicenode", "-n", "openebs", NODE, "-o", "json"))
    return [bool(d["healthy"]) for d in dn["devices"]]


def _metric(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return " ".join(line.split()[-1] for line in text.splitlines() if line.startswith("device_localpv_disk_healthy{"))


def _capacity(cluster: Cluster) -> int:
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    req = csi_pb2.GetCapacityRequest(parameters={"devname": POOL}, accessible_topology=csi_pb2.Topology(segments=TOPO))
    return int(ctl.GetCapacity(req).available_capacity)


def _until(what: str, check: object, timeout: float) -> float:
    start = time.monotonic()
    while not check():  # type: ignore[operator]
        assert time.monotonic() - start < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_disk_failing_reads_is_seen_within_ten_seconds(cluster: Cluster) -> None:
    cluster.api.add_node(NODE)
    port = free_port()
    with failing_pool_disk(POOL, 64) as disk:
        agent = cluster.driver.agent(NODE, [disk.device], METRICS_ADDRESS=f"127.0.0.1:{port}")
        agent.wait_ready()
        node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
        ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
        used = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 8 * MIB, requisite=[TOPO])
        idle = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 8 * MIB, requisite=[TOPO])
        target = str(cluster.workdir / f"eio-{used.volume_id}")
        publish(node_ch, used, target)
        try:
            Path(target, "data").write_bytes(b"before the failure")
            assert _healthy(cluster) == [True] and _metric(port) == "1.0" and _capacity(cluster) > 0

            disk.fail()
            took = _until("DeviceNode marks the disk unhealthy", lambda: _healthy(cluster) == [False], 10)
            print(f"EIO -> DeviceNode unhealthy in {took:.1f} s")
            assert _metric(port) == "0.0"
            _until("capacity drops to zero", lambda: _capacity(cluster) == 0, 5)
            stats = csi_pb2_grpc.NodeStub(node_ch).NodeGetVolumeStats(
                csi_pb2.NodeGetVolumeStatsRequest(volume_id=used.volume_id, volume_path=target)
            )
            assert stats.volume_condition.abnormal, stats
            got = ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=used.volume_id))
            assert got.status.volume_condition.abnormal and "unhealthy" in got.status.volume_condition.message

            # Deleting a volume on the failing disk: a prompt, precise refusal, not a 60 s timeout.
            start = time.monotonic()
            code, msg = code_of(lambda: delete(cluster.controller_channel, idle.volume_id))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "not readable" in msg, msg
            assert time.monotonic() - start < 20

            disk.heal()
            took = _until("the disk is healthy again", lambda: _healthy(cluster) == [True], 10)
            print(f"reads again -> DeviceNode healthy in {took:.1f} s")
            assert _metric(port) == "1.0"
            delete(cluster.controller_channel, idle.volume_id)  # now it goes
        finally:
            disk.heal()
            unpublish(node_ch, used.volume_id, target)
            delete(cluster.controller_channel, used.volume_id)
            agent.stop()
            plugin(cluster, "release-node", NODE, "--reason", "failing disk test done")
            cluster.api.kubectl("delete", "node", NODE, "--ignore-not-found")
