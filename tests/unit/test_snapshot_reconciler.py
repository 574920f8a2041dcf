"""The DeviceSnapshot reconciler's logic on in-memory fakes: copy, point in time, crash mid-copy, deletion."""

from __future__ import annotations

from typing import Any

import pytest

from csidriver.agent.brake import DeletionBrake
from csidriver.agent.snapshots import SnapshotReconciler
from csidriver.agent.workqueue import Retry
from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import State, new_snapshot_body, snapshot_from_dict
from csidriver.host.parsers import MIB
from tests.fakes.kube import FakeKube
from tests.fakes.partitions import Disk, FakeInventory, FakePartitions
from tests.unit.test_volume_reconciler import GUID_A, NODE, World


class Snaps:
    def __init__(self, disk_mib: int = 1024) -> None:
        self.w = World(Disk("/dev/fa", "ssd", GUID_A, disk_mib * MIB))
        self.kube: FakeKube = self.w.kube
        self.parts: FakePartitions = self.w.parts
        self.inv: FakeInventory = self.w.inv
        self.volumes_synced = True
        self.rec = self.reconciler(self.kube.cache(c.SNAPSHOT_PLURAL))

    def reconciler(self, cache: Any) -> SnapshotReconciler:
        return SnapshotReconciler(
            self.kube,
            cache,
            self.kube.cache(c.VOLUME_PLURAL),
            self.parts,
            self.inv,
            NODE,
            DeletionBrake(100, 60.0),
            set,
            lambda: self.volumes_synced,
        )

    async def snapshot(self, source: str, name: str = "snapshot-a", size: int = 64 * MIB) -> str:
        await self.kube.create_snapshot(new_snapshot_body(name, self.kube.namespace, NODE, "ssd", size, source, name))
        return name

    def obj(self, name: str) -> Any:
        raw = self.kube.objects[c.SNAPSHOT_PLURAL].get(name)
        return snapshot_from_dict(raw) if raw is not None else None

    def slot(self, name: str) -> Any:
        return self.parts.named(naming.snapshot_partition_name(name))


async def test_a_snapshot_is_a_copy_in_a_partition_of_its_own() -> None:
    s = Snaps()
    source = await s.w.ready()
    s.w.slot(source).content = "v1"
    name = await s.snapshot(source)
    assert await s.rec.reconcile(name) is None
    snap = s.obj(name)
    assert snap.state is State.READY and snap.finalizers == (c.FINALIZER,)
    assert snap.copied_bytes == 64 * MIB and snap.cut_at and snap.placement.disk_guid == GUID_A
    assert s.slot(name).content == "copy of v1" and s.slot(name).name != s.w.slot(source).name
    # The cut is written before the copy starts (the moment the source is frozen).
    order = [verb for verb, plural, _ in s.kube.writes if plural == c.SNAPSHOT_PLURAL]
    assert order[:3] == ["create", "add-finalizer", "patch-status"]
    # A later write to the source does not reach the snapshot, and reconciling again copies nothing.
    s.w.slot(source).content = "v2"
    assert await s.rec.reconcile(name) is None and s.slot(name).content == "copy of v1"


async def test_a_source_that_is_not_ready_fails_the_snapshot() -> None:
    s = Snaps()
    source = await s.w.volume()  # Pending
    name = await s.snapshot(source)
    assert await s.rec.reconcile(name) is None
    snap = s.obj(name)
    assert snap.state is State.FAILED and "not a ready volume" in snap.error_message
    assert s.slot(name) is None and [e.reason for e in s.kube.events] == ["SnapshotFailed"]


async def test_a_raw_block_source_is_refused() -> None:
    s = Snaps()
    source = await s.w.ready()
    s.parts.frozen_fail.add(naming.partition_name(source))
    name = await s.snapshot(source)
    assert await s.rec.reconcile(name) is None
    assert "refused" in s.obj(name).error_message and "raw block device" in s.obj(name).error_message


async def test_no_room_is_insufficient_capacity() -> None:
    s = Snaps(disk_mib=100)
    source = await s.w.ready()
    name = await s.snapshot(source)
    assert await s.rec.reconcile(name) is None
    assert s.obj(name).error_code.value == "InsufficientCapacity"


async def test_a_copy_cut_short_is_done_again_and_never_twice_once_ready() -> None:
    s = Snaps()
    source = await s.w.ready()
    s.w.slot(source).content = "v1"
    name = await s.snapshot(source)

    def crash() -> None:
        raise RuntimeError("agent killed mid-copy")

    s.parts.on_copy = crash
    with pytest.raises(RuntimeError):
        await s.rec.reconcile(name)
    assert s.obj(name).state is State.PENDING and s.slot(name).content == "blank"
    s.parts.on_copy = None
    s.w.slot(source).content = "v2"  # written while the agent was down: the redone copy holds it
    assert await s.rec.reconcile(name) is None
    assert s.obj(name).state is State.READY and s.slot(name).content == "copy of v2"
    assert sum(1 for sl in s.parts.disks["/dev/fa"].slots if sl.name == s.slot(name).name) == 1
    # A stale cache that still says Pending does not copy again: the API server says Ready.
    s.w.slot(source).content = "v3"
    stale = {name: {**s.kube.objects[c.SNAPSHOT_PLURAL][name], "status": {"state": "Pending"}}}
    assert await s.reconciler(stale).reconcile(name) is None
    assert s.slot(name).content == "copy of v2"


async def test_waits_for_the_volume_cache() -> None:
    s = Snaps()
    source = await s.w.ready()
    name = await s.snapshot(source)
    s.volumes_synced = False
    with pytest.raises(Retry, match="not synced"):
        await s.rec.reconcile(name)
    assert s.slot(name) is None


async def test_deletion_waits_for_a_restore_then_removes_the_partition() -> None:
    s = Snaps()
    source = await s.w.ready()
    name = await s.snapshot(source)
    await s.rec.reconcile(name)
    restoring = await s.w.volume(annotations={c.RESTORE_SOURCE_ANNOTATION: name})  # Pending: its copy reads it
    await s.kube.delete_snapshot(name)
    with pytest.raises(Retry, match=f"volume {restoring} is being restored"):
        await s.rec.reconcile(name)
    assert await s.w.rec.reconcile(restoring) is None  # the restore completes
    assert await s.rec.reconcile(name) is None
    assert s.obj(name) is None and s.slot(name) is None
    assert s.w.slot(restoring) is not None and s.w.slot(source) is not None


async def test_deletion_on_a_missing_disk_says_so() -> None:
    s = Snaps()
    source = await s.w.ready()
    name = await s.snapshot(source)
    await s.rec.reconcile(name)
    s.inv.gone.add("/dev/fa")
    await s.kube.delete_snapshot(name)
    with pytest.raises(Retry, match="not present"):
        await s.rec.reconcile(name)
    cond = next(x for x in s.obj(name).conditions if x.get("type") == c.RELEASED_CONDITION)
    assert cond["reason"] == c.RELEASE_DISK_MISSING
