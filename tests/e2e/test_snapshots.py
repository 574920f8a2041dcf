"""Snapshots: a full copy of a volume in a partition of its own on the volume's node (a DeviceSnapshot), restored
into new volumes; on real loop disks, filesystems and processes.

Its own node and disk, so placements and sizes are known.
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

from csidriver.api import naming
from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import MIB, POOL, block_cap, code_of, create, delete, publish, unpublish
from harness.disks import LoopDisk, partitions
from harness.driver import Process
from tests.conftest import Cluster
from tests.e2e.nodes import own_node

NODE = "node-snap"
TOPO = {"openebs.io/nodename": NODE}
C = grpc.StatusCode


@pytest.fixture(scope="module")
def snap_node(cluster: Cluster) -> Iterator[tuple[Process, LoopDisk]]:
    with own_node(cluster, NODE, (512,)) as (agent, disks):
        yield agent, disks[0]


def _ctl(cluster: Cluster) -> Any:
    return csi_pb2_grpc.ControllerStub(cluster.controller_channel)


def _volume(
    cluster: Cluster, size: int, cap: Any = None, snapshot: str = "", requisite: list[dict[str, str]] | None = None
) -> Any:
    where = requisite if requisite is not None else [TOPO]
    return create(
        cluster.controller_channel, f"pvc-{uuid.uuid4()}", size, cap=cap, requisite=where, source_snapshot=snapshot
    )


def _snapshot(cluster: Cluster, source: str, name: str = "", **params: str) -> Any:
    req = csi_pb2.CreateSnapshotRequest(
        name=name or f"snapshot-{uuid.uuid4()}", source_volume_id=source, parameters=params
    )
    return _ctl(cluster).CreateSnapshot(req, timeout=90).snapshot


def _delete_snapshot(cluster: Cluster, snapshot_id: str) -> None:
    _ctl(cluster).DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id), timeout=60)


def _names(disk: LoopDisk) -> set[str]:
    return {str(p.get("name", "")) for p in partitions(disk.device)}


def _device(disk: LoopDisk, gpt_name: str) -> str:
    return next(str(p["node"]) for p in partitions(disk.device) if p.get("name") == gpt_name)


def _read(device: str, length: int) -> bytes:
    with open(device, "rb") as f:
        return f.read(length)


def _write(device: str, data: bytes) -> None:
    with open(device, "r+b") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _object(cluster: Cluster, name: str) -> dict[str, Any] | None:
    out = cluster.api.kubectl("get", "devicesnapshot", name, "-n", "openebs", "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


def test_snapshot_of_a_mounted_filesystem_is_a_point_in_time_copy(
    cluster: Cluster, snap_node: tuple[Process, LoopDisk]
) -> None:
    agent, disk = snap_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    source = _volume(cluster, 32 * MIB)
    src_target = str(cluster.workdir / f"snap-src-{source.volume_id}")
    publish(node_ch, source, src_target)
    data = os.urandom(4 * MIB)
    Path(src_target, "data").write_bytes(data)
    made: list[str] = []
    snaps: list[str] = []
    try:
        start = time.monotonic()
        snap = _snapshot(cluster, source.volume_id)
        snaps.append(snap.snapshot_id)
        print(f"snapshot of a mounted 32 MiB volume ready in {time.monotonic() - start:.2f} s")
        assert snap.ready_to_use and snap.size_bytes == 32 * MIB and snap.source_volume_id == source.volume_id
        assert snap.creation_time.seconds > 0
        # The source stays writable (thawed); what it gets now is not in the snapshot.
        Path(src_target, "after").write_bytes(b"later")
        Path(src_target, "data").write_bytes(b"overwritten")
        obj = _object(cluster, snap.snapshot_id)
        assert obj is not None and obj["status"]["state"] == "Ready", obj
        assert obj["status"]["copiedBytes"] == 32 * MIB and obj["spec"]["ownerNodeID"] == NODE
        assert naming.snapshot_partition_name(snap.snapshot_id) in _names(disk)
        # Asked again with the same name and source: the same snapshot, not another copy.
        again = _snapshot(cluster, source.volume_id, name=obj["metadata"]["annotations"]["local.openebs.io/csi-name"])
        assert again.snapshot_id == snap.snapshot_id and again.creation_time == snap.creation_time
        # Restored twice, at its size and bigger, each with the snapshot's files.
        for size in (0, 64 * MIB):
            vol = _volume(cluster, size, snapshot=snap.snapshot_id)
            made.append(vol.volume_id)
            assert vol.capacity_bytes == max(size, 32 * MIB)
            assert vol.content_source.snapshot.snapshot_id == snap.snapshot_id
            assert dict(vol.accessible_topology[0].segments) == TOPO
            target = str(cluster.workdir / f"restored-{vol.volume_id}")
            publish(node_ch, vol, target)
            try:
                assert Path(target, "data").read_bytes() == data
                assert not Path(target, "after").exists()
            finally:
                unpublish(node_ch, vol.volume_id, target)
        # The source's deletion leaves the snapshot, which still restores.
        unpublish(node_ch, source.volume_id, src_target)
        delete(cluster.controller_channel, source.volume_id)
        vol = _volume(cluster, 0, snapshot=snap.snapshot_id)
        made.append(vol.volume_id)
        listed = _ctl(cluster).ListSnapshots(csi_pb2.ListSnapshotsRequest(snapshot_id=snap.snapshot_id)).entries
        assert [e.snapshot.snapshot_id for e in listed] == [snap.snapshot_id] and listed[0].snapshot.ready_to_use
        got = _ctl(cluster).GetSnapshot(csi_pb2.GetSnapshotRequest(snapshot_id=snap.snapshot_id)).snapshot
        assert got == listed[0].snapshot
    finally:
        unpublish(node_ch, source.volume_id, src_target)
        for v in [*made, source.volume_id]:
            delete(cluster.controller_channel, v)
        for s in snaps:
            _delete_snapshot(cluster, s)
    assert naming.snapshot_partition_name(snaps[0]) not in _names(disk)
    assert _object(cluster, snaps[0]) is None


def test_listing_pages_and_filters(cluster: Cluster, snap_node: tuple[Process, LoopDisk]) -> None:
    a = _volume(cluster, 8 * MIB, cap=block_cap())
    b = _volume(cluster, 8 * MIB, cap=block_cap())
    snaps = [_snapshot(cluster, v.volume_id).snapshot_id for v in (a, a, b)]
    try:
        mine = set(snaps)
        seen: list[str] = []
        token = ""
        while True:
            page = _ctl(cluster).ListSnapshots(csi_pb2.ListSnapshotsRequest(max_entries=1, starting_token=token))
            assert len(page.entries) <= 1
            seen += [e.snapshot.snapshot_id for e in page.entries if e.snapshot.snapshot_id in mine]
            token = page.next_token
            if not token:
                break
        assert sorted(seen) == sorted(snaps)
        of_a = _ctl(cluster).ListSnapshots(csi_pb2.ListSnapshotsRequest(source_volume_id=a.volume_id)).entries
        assert sorted(e.snapshot.snapshot_id for e in of_a) == sorted(snaps[:2])
        for request in (
            csi_pb2.ListSnapshotsRequest(snapshot_id="snapshot-absent"),
            csi_pb2.ListSnapshotsRequest(source_volume_id="pvc-absent"),
        ):
            assert not _ctl(cluster).ListSnapshots(request).entries
        got, msg = code_of(lambda: _ctl(cluster).ListSnapshots(csi_pb2.ListSnapshotsRequest(starting_token="nope")))
        assert got == C.ABORTED, msg
    finally:
        for s in snaps:
            _delete_snapshot(cluster, s)
        for v in (a, b):
            delete(cluster.controller_channel, v.volume_id)


def test_snapshot_requests_that_cannot_be_served(cluster: Cluster, snap_node: tuple[Process, LoopDisk]) -> None:
    agent, disk = snap_node
    node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
    source = _volume(cluster, 16 * MIB)
    raw = _volume(cluster, 16 * MIB, cap=block_cap())
    raw_target = str(cluster.workdir / f"snap-raw-{raw.volume_id}")
    publish(node_ch, raw, raw_target, cap=block_cap())
    snap = _snapshot(cluster, source.volume_id)
    before = _names(disk)
    try:
        cases = [
            (lambda: _snapshot(cluster, ""), C.INVALID_ARGUMENT, "source_volume_id"),
            (
                lambda: _ctl(cluster).CreateSnapshot(csi_pb2.CreateSnapshotRequest(source_volume_id=source.volume_id)),
                C.INVALID_ARGUMENT,
                "name",
            ),
            (lambda: _snapshot(cluster, f"pvc-{uuid.uuid4()}"), C.NOT_FOUND, "does not exist"),
            (lambda: _snapshot(cluster, source.volume_id, colour="blue"), C.INVALID_ARGUMENT, "colour"),
            (lambda: _snapshot(cluster, raw.volume_id, name=snap.snapshot_id), C.ALREADY_EXISTS, "another source"),
            (lambda: _volume(cluster, 0, snapshot="snapshot-absent"), C.NOT_FOUND, "does not exist"),
            (lambda: _volume(cluster, 8 * MIB, snapshot=snap.snapshot_id), C.OUT_OF_RANGE, "at least"),
            (
                lambda: _volume(cluster, 0, snapshot=snap.snapshot_id, requisite=[{"openebs.io/nodename": "x"}]),
                C.RESOURCE_EXHAUSTED,
                "excludes",
            ),
            (lambda: _volume(cluster, 4096 * MIB, snapshot=snap.snapshot_id), C.RESOURCE_EXHAUSTED, "cannot fit"),
            (
                lambda: _ctl(cluster).DeleteSnapshot(csi_pb2.DeleteSnapshotRequest()),
                C.INVALID_ARGUMENT,
                "snapshot_id",
            ),
        ]
        for call, code, words in cases:
            got, msg = code_of(call)
            assert got == code and words in msg, (code, got, msg)
        # A source in use as a raw block device cannot be frozen: refused, and nothing is left behind.
        got, msg = code_of(lambda: _snapshot(cluster, raw.volume_id))
        assert got == C.FAILED_PRECONDITION and "raw block device" in msg, (got, msg)
        # A snapshot too big for the pool's free space.
        big = _volume(cluster, 300 * MIB, cap=block_cap())
        try:
            got, msg = code_of(lambda: _snapshot(cluster, big.volume_id))
            assert got == C.RESOURCE_EXHAUSTED and "cannot fit" in msg, (got, msg)
        finally:
            delete(cluster.controller_channel, big.volume_id)
        # Deleting an unknown snapshot succeeds.
        _delete_snapshot(cluster, "snapshot-absent")
        assert _names(disk) == before
    finally:
        unpublish(node_ch, raw.volume_id, raw_target)
        _delete_snapshot(cluster, snap.snapshot_id)
        for v in (raw.volume_id, source.volume_id):
            delete(cluster.controller_channel, v)


def test_agent_killed_at_random_moments_of_snapshots_and_restores(
    cluster: Cluster, snap_node: tuple[Process, LoopDisk]
) -> None:
    """SIGKILL the agent a random moment after a CreateSnapshot or a restore was sent: after its restart every
    snapshot and restore completes with the source's exact bytes, and no partition is left over."""
    _, disk = snap_node
    rng = random.Random(7)
    source = _volume(cluster, 48 * MIB, cap=block_cap())
    _write(_device(disk, source.volume_id.removeprefix("pvc-")), data := os.urandom(48 * MIB))
    snaps: list[str] = []
    restored: list[str] = []
    base = _names(disk)
    try:
        for round_ in range(3):
            for kind in ("snapshot", "restore"):
                if kind == "restore" and not snaps:
                    continue
                delay = rng.uniform(0.0, 0.2)
                name = f"snapshot-{uuid.uuid4()}" if kind == "snapshot" else f"pvc-{uuid.uuid4()}"
                if kind == "snapshot":
                    req: Any = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=source.volume_id)
                    call = _ctl(cluster).CreateSnapshot.future(req, timeout=120)
                else:
                    req = csi_pb2.CreateVolumeRequest(
                        name=name,
                        volume_capabilities=[block_cap()],
                        parameters={"devname": POOL},
                        accessibility_requirements=csi_pb2.TopologyRequirement(
                            requisite=[csi_pb2.Topology(segments=TOPO)]
                        ),
                    )
                    req.volume_content_source.snapshot.snapshot_id = snaps[-1]
                    call = _ctl(cluster).CreateVolume.future(req, timeout=120)
                time.sleep(delay)
                agent = cluster.driver.processes["agent-" + NODE]
                agent.kill()
                cluster.driver.agent(NODE, [disk.device]).wait_ready()
                try:
                    got = call.result()
                except grpc.RpcError as e:  # answered UNAVAILABLE while the agent was down: retried, as a sidecar does
                    assert e.code() in (C.UNAVAILABLE, C.DEADLINE_EXCEEDED, C.INTERNAL), e
                    got = (
                        _ctl(cluster).CreateSnapshot(req, timeout=120)
                        if kind == "snapshot"
                        else _ctl(cluster).CreateVolume(req, timeout=120)
                    )
                print(f"round {round_} {kind}: agent killed after {delay * 1000:.0f} ms")
                if kind == "snapshot":
                    assert got.snapshot.ready_to_use
                    snaps.append(got.snapshot.snapshot_id)
                    part = naming.snapshot_partition_name(got.snapshot.snapshot_id)
                else:
                    restored.append(got.volume.volume_id)
                    part = got.volume.volume_id.removeprefix("pvc-")
                assert _read(_device(disk, part), len(data)) == data, f"{kind} {name} differs from its source"
        expected = (
            base | {naming.snapshot_partition_name(s) for s in snaps} | {v.removeprefix("pvc-") for v in restored}
        )
        assert _names(disk) == expected  # nothing carved twice, nothing left over
    finally:
        for v in restored:
            delete(cluster.controller_channel, v)
        for s in snaps:
            _delete_snapshot(cluster, s)
        delete(cluster.controller_channel, source.volume_id)
    assert _names(disk) == base - {source.volume_id.removeprefix("pvc-")}


def test_a_source_left_frozen_by_a_crash_mid_snapshot_is_thawed_and_the_copy_redone(
    cluster: Cluster, snap_node: tuple[Process, LoopDisk]
) -> None:
    """The state a crash during a snapshot's copy leaves: the source frozen with the agent's marker, the snapshot's
    partition carved and half written, the object Pending. The restarted agent thaws the source and copies again."""
    _, disk = snap_node
    node_ch = grpc.insecure_channel(f"unix://{cluster.driver.processes['agent-' + NODE].socket}")
    source = _volume(cluster, 16 * MIB)
    target = str(cluster.workdir / f"frozen-snap-{source.volume_id}")
    publish(node_ch, source, target)
    Path(target, "data").write_bytes(payload := os.urandom(MIB))
    snap_id = ""
    try:
        snap_id = _snapshot(cluster, source.volume_id).snapshot_id
        part = _device(disk, naming.snapshot_partition_name(snap_id))
        cluster.driver.processes["agent-" + NODE].kill()
        _write(part, os.urandom(4 * MIB))  # a copy cut short
        status = {"status": {"state": "Pending", "copiedBytes": 4 * MIB}}
        cluster.api.kubectl(
            "patch",
            "devicesnapshot",
            snap_id,
            "-n",
            "openebs",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(status),
        )
        marker = cluster.workdir / "locks" / "frozen" / target.strip("/").replace("/", "_")
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(target)
        subprocess.run(["fsfreeze", "--freeze", target], check=True)
        cluster.driver.agent(NODE, [disk.device]).wait_ready()
        Path(target, "written").write_bytes(b"thawed")  # would block while frozen
        deadline = time.monotonic() + 30
        while (_object(cluster, snap_id) or {}).get("status", {}).get("state") != "Ready":
            assert time.monotonic() < deadline, _object(cluster, snap_id)
            time.sleep(0.2)
        vol = _volume(cluster, 0, snapshot=snap_id)
        restored = str(cluster.workdir / f"restored-{vol.volume_id}")
        node_ch = grpc.insecure_channel(f"unix://{cluster.driver.processes['agent-' + NODE].socket}")
        publish(node_ch, vol, restored)
        try:
            assert Path(restored, "data").read_bytes() == payload
        finally:
            unpublish(node_ch, vol.volume_id, restored)
            delete(cluster.controller_channel, vol.volume_id)
    finally:
        subprocess.run(["fsfreeze", "--unfreeze", target], check=False, capture_output=True)
        node_ch = grpc.insecure_channel(f"unix://{cluster.driver.processes['agent-' + NODE].socket}")
        unpublish(node_ch, source.volume_id, target)
        if snap_id:
            _delete_snapshot(cluster, snap_id)
        delete(cluster.controller_channel, source.volume_id)
