"""Online expansion: the partition grows in place and the mounted filesystem with it; no room is a clear refusal.

Its own node and disk, so the layout (what lies right after each partition) is known. ext4's online resize needs
CAP_SYS_RESOURCE, which this machine's sandbox withholds even from root: xfs, btrfs and raw block are proven here.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import MIB, block_cap, code_of, create, delete, mount_cap, publish, unpublish
from harness.disks import LoopDisk, partitions
from harness.driver import Process
from tests.conftest import Cluster
from tests.e2e.nodes import own_node

NODE = "node-grow"
TOPO = {"openebs.io/nodename": NODE}
C = grpc.StatusCode


@pytest.fixture(scope="module")
def grow_node(cluster: Cluster) -> Iterator[tuple[Process, LoopDisk]]:
    with own_node(cluster, NODE, (1536,)) as (agent, disks):
        yield agent, disks[0]


def _expand(cluster: Cluster, volume_id: str, size: int, cap: Any = None) -> Any:
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    req = csi_pb2.ControllerExpandVolumeRequest(
        volume_id=volume_id, capacity_range=csi_pb2.CapacityRange(required_bytes=size), volume_capability=cap
    )
    return ctl.ControllerExpandVolume(req, timeout=60)


def _node_expand(agent: Process, volume_id: str, path: str, size: int) -> Any:
    node = csi_pb2_grpc.NodeStub(grpc.insecure_channel(f"unix://{agent.socket}"))
    req = csi_pb2.NodeExpandVolumeRequest(
        volume_id=volume_id, volume_path=path, capacity_range=csi_pb2.CapacityRange(required_bytes=size)
    )
    return node.NodeExpandVolume(req, timeout=60)


def _status(cluster: Cluster, name: str) -> dict[str, Any]:
    obj = json.loads(cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, "-o", "json"))
    return dict(obj.get("status") or {})


@pytest.mark.parametrize(("fs", "size"), [("xfs", 320 * MIB), ("btrfs", 128 * MIB)])
def test_mounted_filesystem_grows_online_and_keeps_its_data(
    cluster: Cluster, grow_node: tuple[Process, LoopDisk], fs: str, size: int
) -> None:
    agent, _ = grow_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    cap = mount_cap(fs)
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", size, cap=cap, requisite=[TOPO])
    target = str(cluster.workdir / f"grow-{vol.volume_id}")
    publish(node_ch, vol, target, cap=cap)
    try:
        Path(target, "data").write_bytes(b"kept" * 1000)
        before = os.statvfs(target)
        start = time.monotonic()
        rsp = _expand(cluster, vol.volume_id, 2 * size, cap)
        assert rsp.capacity_bytes == 2 * size and rsp.node_expansion_required
        grown = _node_expand(agent, vol.volume_id, target, 2 * size)
        took = time.monotonic() - start
        assert grown.capacity_bytes == 2 * size
        after = os.statvfs(target)
        assert after.f_blocks * after.f_frsize > before.f_blocks * before.f_frsize + size // 2, (before, after)
        assert Path(target, "data").read_bytes() == b"kept" * 1000
        assert _status(cluster, vol.volume_id)["capacityBytes"] == 2 * size
        # Idempotent: the same or a smaller size again changes nothing.
        assert _expand(cluster, vol.volume_id, 2 * size, cap).capacity_bytes == 2 * size
        assert _expand(cluster, vol.volume_id, size, cap).capacity_bytes == 2 * size
        print(f"{fs}: expansion request to filesystem grown in {took:.2f} s")
    finally:
        unpublish(node_ch, vol.volume_id, target)
        delete(cluster.controller_channel, vol.volume_id)


def test_block_volume_grows_without_a_node_step(cluster: Cluster, grow_node: tuple[Process, LoopDisk]) -> None:
    agent, _ = grow_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 16 * MIB, cap=block_cap(), requisite=[TOPO])
    target = str(cluster.workdir / f"grow-blk-{vol.volume_id}")
    publish(node_ch, vol, target, cap=block_cap())
    try:
        rsp = _expand(cluster, vol.volume_id, 40 * MIB, block_cap())
        assert rsp.capacity_bytes == 40 * MIB and not rsp.node_expansion_required
        size = subprocess.run(["blockdev", "--getsize64", target], capture_output=True, text=True, check=True)
        assert int(size.stdout) == 40 * MIB  # the kernel sees the new size through the published device
        assert _node_expand(agent, vol.volume_id, target, 40 * MIB).capacity_bytes == 40 * MIB
    finally:
        unpublish(node_ch, vol.volume_id, target)
        delete(cluster.controller_channel, vol.volume_id)


def test_no_room_in_place_is_refused_with_the_bytes_available(
    cluster: Cluster, grow_node: tuple[Process, LoopDisk]
) -> None:
    _, disk = grow_node
    first = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 16 * MIB, requisite=[TOPO])
    second = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 16 * MIB, requisite=[TOPO])
    try:
        layout = partitions(disk.device)
        ends = {int(p["start"]): p for p in layout}
        mine = next(p for p in layout if p["name"] == first.volume_id.removeprefix("pvc-"))
        right_after = ends.get(int(mine["start"]) + int(mine["size"]))
        if right_after is None:
            pytest.skip("the two volumes were not placed next to each other")
        code, msg = code_of(lambda: _expand(cluster, first.volume_id, 64 * MIB))
        assert code == C.RESOURCE_EXHAUSTED, msg
        assert f"in place to {16 * MIB} bytes only" in msg and NODE in msg, msg
        assert partitions(disk.device) == layout  # nothing changed
        # Deleting the neighbour makes room: a retry grows it.
        delete(cluster.controller_channel, second.volume_id)
        assert _expand(cluster, first.volume_id, 64 * MIB).capacity_bytes == 64 * MIB
    finally:
        for v in (first, second):
            delete(cluster.controller_channel, v.volume_id)


def test_a_crash_between_the_table_write_and_the_report_is_completed(
    cluster: Cluster, grow_node: tuple[Process, LoopDisk]
) -> None:
    """The state a crash leaves after the table was rewritten but before the kernel and status knew: the agent
    that starts next brings the kernel's view and status.capacityBytes up to date, and an expansion finishes."""
    agent, disk = grow_node
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 16 * MIB, requisite=[TOPO])
    try:
        entry = next(p for p in partitions(disk.device) if p["name"] == vol.volume_id.removeprefix("pvc-"))
        number = str(entry["node"]).rsplit("p", 1)[1]
        agent.kill()
        subprocess.run(
            ["sfdisk", "--no-reread", "--no-tell-kernel", "--quiet", "-N", number, disk.device],
            input=f"size={32 * MIB // 512}\n",
            text=True,
            check=True,
        )
        restarted = cluster.driver.agent(NODE, [disk.device])
        restarted.wait_ready()
        rsp = _expand(cluster, vol.volume_id, 32 * MIB)
        assert rsp.capacity_bytes == 32 * MIB
        sysfs = Path(f"/sys/class/block/{os.path.basename(str(entry['node']))}/size")
        assert int(sysfs.read_text()) * 512 == 32 * MIB
    finally:
        delete(cluster.controller_channel, vol.volume_id)


def test_bad_expansion_requests(cluster: Cluster, grow_node: tuple[Process, LoopDisk]) -> None:
    agent, _ = grow_node
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    no_range = csi_pb2.ControllerExpandVolumeRequest(volume_id="pvc-" + str(uuid.uuid4()))
    assert code_of(lambda: ctl.ControllerExpandVolume(no_range))[0] == C.INVALID_ARGUMENT
    assert code_of(lambda: _expand(cluster, "", MIB))[0] == C.INVALID_ARGUMENT
    assert code_of(lambda: _expand(cluster, "pvc-" + str(uuid.uuid4()), MIB))[0] == C.NOT_FOUND
    unknown = "pvc-" + str(uuid.uuid4())
    assert code_of(lambda: _node_expand(agent, unknown, str(cluster.workdir / "nowhere"), MIB))[0] == C.NOT_FOUND
    assert code_of(lambda: _node_expand(agent, "pvc-x", "/etc", MIB))[0] == C.NOT_FOUND  # no such volume here


def _extent(disk: LoopDisk, volume_id: str) -> tuple[int, int]:
    """(start, end) in bytes of a volume's partition on the node's disk."""
    entry = next(p for p in partitions(disk.device) if p["name"] == volume_id.removeprefix("pvc-"))
    return int(entry["start"]) * 512, (int(entry["start"]) + int(entry["size"])) * 512


def test_room_to_grow_placement_and_an_agent_killed_at_random_moments_of_a_growth(
    cluster: Cluster, grow_node: tuple[Process, LoopDisk]
) -> None:
    """StorageClass `placement: RoomToGrow`: the volume carved after another leaves it room to double, so both can
    grow in place. Then the agent is SIGKILLed at seeded random moments of three growths: each completes after the
    restart, with the data kept and no partition added."""
    _, disk = grow_node
    params = {"devname": "ssd", "placement": "RoomToGrow"}
    first = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 64 * MIB, params, block_cap(), requisite=[TOPO])
    second = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 64 * MIB, params, block_cap(), requisite=[TOPO])
    try:
        a_start, a_end = _extent(disk, first.volume_id)
        b_start, b_end = _extent(disk, second.volume_id)
        room_a = (b_start - a_end) if b_start > a_start else None
        room_b = (a_start - b_end) if a_start > b_start else None
        assert (room_a or room_b or 0) >= 64 * MIB, (a_start, a_end, b_start, b_end)
        grower = first if room_a is not None else second
        device = next(str(p["node"]) for p in partitions(disk.device) if p["name"] == grower.volume_id[4:])
        data = os.urandom(64 * MIB)
        with open(device, "r+b") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        layout = {p["name"] for p in partitions(disk.device)}
        rng = random.Random(11)
        for size in (80 * MIB, 104 * MIB, 128 * MIB):
            ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
            req = csi_pb2.ControllerExpandVolumeRequest(
                volume_id=grower.volume_id,
                capacity_range=csi_pb2.CapacityRange(required_bytes=size),
                volume_capability=block_cap(),
            )
            call = ctl.ControllerExpandVolume.future(req, timeout=60)
            delay = rng.uniform(0.0, 0.1)
            time.sleep(delay)
            cluster.driver.processes["agent-" + NODE].kill()
            cluster.driver.agent(NODE, [disk.device]).wait_ready()
            try:
                got = call.result().capacity_bytes
            except grpc.RpcError as e:
                assert e.code() in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED), e
                got = ctl.ControllerExpandVolume(req, timeout=60).capacity_bytes
            print(f"growth to {size // MIB} MiB: agent killed after {delay * 1000:.0f} ms")
            assert got == size
            start, end = _extent(disk, grower.volume_id)
            assert end - start == size and _status(cluster, grower.volume_id)["capacityBytes"] == size
            with open(device, "rb") as f:
                assert f.read(len(data)) == data
        assert {p["name"] for p in partitions(disk.device)} == layout
    finally:
        for v in (first, second):
            delete(cluster.controller_channel, v.volume_id)
