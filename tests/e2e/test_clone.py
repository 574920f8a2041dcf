"""Clones: a new partition on the source's node holding a block copy of the source, even while it is mounted.

Its own node and disk, so placements and sizes are known.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import AM, MIB, POOL, block_cap, code_of, create, delete, mount_cap, publish, unpublish
from harness.disks import LoopDisk, partitions
from harness.driver import Process
from tests.conftest import Cluster
from tests.e2e.nodes import own_node

NODE = "node-clone"
TOPO = {"openebs.io/nodename": NODE}
C = grpc.StatusCode


@pytest.fixture(scope="module")
def clone_node(cluster: Cluster) -> Iterator[tuple[Process, LoopDisk]]:
    with own_node(cluster, NODE, (768,)) as (agent, disks):
        yield agent, disks[0]


def _create(
    cluster: Cluster, size: int, source: str = "", cap: Any = None, requisite: list[dict[str, str]] | None = None
) -> Any:
    where = requisite if requisite is not None else [TOPO]
    return create(
        cluster.controller_channel, f"pvc-{uuid.uuid4()}", size, cap=cap, requisite=where, source_volume=source
    )


def _digest(device: str, length: int) -> str:
    h = hashlib.sha256()
    with open(device, "rb") as f:
        h.update(f.read(length))
    return h.hexdigest()


def _device(disk: LoopDisk, volume_id: str) -> str:
    """The partition of a volume, by its GPT name on the node's disk."""
    return next(str(p["node"]) for p in partitions(disk.device) if p["name"] == volume_id.removeprefix("pvc-"))


def test_clone_of_a_mounted_filesystem_holds_its_files(cluster: Cluster, clone_node: tuple[Process, LoopDisk]) -> None:
    agent, _ = clone_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    source = _create(cluster, 32 * MIB)
    src_target = str(cluster.workdir / f"clone-src-{source.volume_id}")
    publish(node_ch, source, src_target)
    data = os.urandom(8 * MIB)
    Path(src_target, "data").write_bytes(data)
    os.sync()
    made: list[str] = []
    try:
        start = time.monotonic()
        clone = _create(cluster, 0, source=source.volume_id)  # no size: the source's
        made.append(clone.volume_id)
        print(f"clone of a mounted 32 MiB volume ready in {time.monotonic() - start:.2f} s")
        assert clone.capacity_bytes == 32 * MIB
        assert clone.content_source.volume.volume_id == source.volume_id
        assert dict(clone.accessible_topology[0].segments) == TOPO
        # The source stays writable (thawed) after the copy.
        Path(src_target, "after").write_bytes(b"still writable")
        target = str(cluster.workdir / f"clone-{clone.volume_id}")
        publish(node_ch, clone, target)
        try:
            assert Path(target, "data").read_bytes() == data
            assert not Path(target, "after").exists()
        finally:
            unpublish(node_ch, clone.volume_id, target)
    finally:
        unpublish(node_ch, source.volume_id, src_target)
        for v in [*made, source.volume_id]:
            delete(cluster.controller_channel, v)


def test_bigger_clone_of_a_raw_volume_is_a_byte_copy(cluster: Cluster, clone_node: tuple[Process, LoopDisk]) -> None:
    _, disk = clone_node
    source = _create(cluster, 16 * MIB, cap=block_cap())
    made: list[str] = []
    try:
        src_dev = _device(disk, source.volume_id)
        with open(src_dev, "r+b") as f:
            f.write(os.urandom(16 * MIB))
            f.flush()
            os.fsync(f.fileno())
        clone = _create(cluster, 48 * MIB, source=source.volume_id, cap=block_cap())
        made.append(clone.volume_id)
        assert clone.capacity_bytes == 48 * MIB
        dst_dev = _device(disk, clone.volume_id)
        assert _digest(dst_dev, 16 * MIB) == _digest(src_dev, 16 * MIB)
        with open(dst_dev, "rb") as f:  # no stale signature at the end of the bigger clone
            f.seek(-MIB, os.SEEK_END)
            assert f.read(MIB) == bytes(MIB)
    finally:
        for v in [*made, source.volume_id]:
            delete(cluster.controller_channel, v)


def test_clone_requests_that_cannot_be_served(cluster: Cluster, clone_node: tuple[Process, LoopDisk]) -> None:
    agent, _ = clone_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    source = _create(cluster, 16 * MIB)
    raw = _create(cluster, 16 * MIB, cap=block_cap())
    raw_target = str(cluster.workdir / f"clone-raw-{raw.volume_id}")
    publish(node_ch, raw, raw_target, cap=block_cap())
    try:
        cases = [
            (lambda: _create(cluster, 16 * MIB, source=f"pvc-{uuid.uuid4()}"), C.NOT_FOUND, "does not exist"),
            (lambda: _create(cluster, 8 * MIB, source=source.volume_id), C.OUT_OF_RANGE, "at least"),
            (
                lambda: _create(cluster, 16 * MIB, source=source.volume_id, requisite=[{"openebs.io/nodename": "x"}]),
                C.RESOURCE_EXHAUSTED,
                "excludes",
            ),
            (lambda: _create(cluster, 4096 * MIB, source=source.volume_id), C.RESOURCE_EXHAUSTED, "cannot fit"),
        ]
        for call, code, words in cases:
            got, msg = code_of(call)
            assert got == code and words in msg, (code, msg)
        # A source in use as a raw block device cannot be frozen: refused, and the clone's object goes.
        got, msg = code_of(lambda: _create(cluster, 16 * MIB, source=raw.volume_id, cap=block_cap()))
        assert got != C.OK and "raw block device" in msg, msg
        snap = csi_pb2.CreateVolumeRequest(
            name="from-snapshot",
            volume_capabilities=[mount_cap(mode=AM.SINGLE_NODE_WRITER)],
            parameters={"devname": POOL},
        )
        snap.volume_content_source.snapshot.snapshot_id = "snap-1"
        got, msg = code_of(lambda: csi_pb2_grpc.ControllerStub(cluster.controller_channel).CreateVolume(snap))
        assert got == C.NOT_FOUND and "snapshot snap-1 does not exist" in msg, msg
    finally:
        unpublish(node_ch, raw.volume_id, raw_target)
        for v in (raw.volume_id, source.volume_id):
            delete(cluster.controller_channel, v)


def test_a_filesystem_left_frozen_by_a_crash_is_thawed_at_start(
    cluster: Cluster, clone_node: tuple[Process, LoopDisk]
) -> None:
    """The state a crash during a copy leaves: the source frozen, with the agent's marker. The next agent thaws it."""
    agent, disk = clone_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    source = _create(cluster, 16 * MIB)
    target = str(cluster.workdir / f"frozen-{source.volume_id}")
    publish(node_ch, source, target)
    try:
        agent.kill()
        marker = cluster.workdir / "locks" / "frozen" / target.strip("/").replace("/", "_")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(target)
        subprocess.run(["fsfreeze", "--freeze", target], check=True)
        # A copy's private mount, left by a crash while the copy was being given a new filesystem identity.
        leftover = cluster.workdir / "locks" / "copy-crashed"
        leftover.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "copy-leftover", str(leftover)], check=True)
        restarted = cluster.driver.agent(NODE, [disk.device])
        restarted.wait_ready()
        Path(target, "written").write_bytes(b"thawed")  # would block while frozen
        assert not marker.exists()
        assert not leftover.exists()
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", target], check=False, capture_output=True)
        node_ch = grpc.insecure_channel(f"unix://{cluster.driver.processes['agent-' + NODE].socket}")
        unpublish(node_ch, source.volume_id, target)
        delete(cluster.controller_channel, source.volume_id)


@pytest.mark.parametrize(("fs", "size"), [("xfs", 304 * MIB), ("btrfs", 160 * MIB)])
def test_a_clone_mounts_beside_its_mounted_source(
    cluster: Cluster, clone_node: tuple[Process, LoopDisk], fs: str, size: int
) -> None:
    """A block copy carries its source's filesystem UUID; xfs refuses to mount a second filesystem with a UUID
    already mounted, and btrfs one with a known fsid. The copy gets an identity of its own, so both are mounted on
    the same node at once, and the clone still holds the files."""
    agent, _ = clone_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    cap = mount_cap(fs)
    source = _create(cluster, size, cap=cap)
    src_target = str(cluster.workdir / f"clone-src-{fs}-{source.volume_id}")
    publish(node_ch, source, src_target, cap=cap)
    Path(src_target, "data").write_bytes(data := os.urandom(MIB))
    clone_id = ""
    try:
        clone = _create(cluster, 0, source=source.volume_id, cap=cap)
        clone_id = clone.volume_id
        target = str(cluster.workdir / f"clone-{fs}-{clone.volume_id}")
        publish(node_ch, clone, target, cap=cap)
        try:
            assert Path(target, "data").read_bytes() == data
        finally:
            unpublish(node_ch, clone.volume_id, target)
    finally:
        unpublish(node_ch, source.volume_id, src_target)
        for v in (clone_id, source.volume_id):
            if v:
                delete(cluster.controller_channel, v)
