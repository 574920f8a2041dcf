"""The DeviceVolume reconciler's logic, every state transition and crash point, on in-memory fakes (no process, no
disk): tests/fakes/kube.py (checked against a real API server by tests/contract) and tests/fakes/partitions.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from csidriver.agent.brake import DeletionBrake
from csidriver.agent.volumes import RESIZE_RETRY, VolumeReconciler
from csidriver.agent.workqueue import Retry
from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import State, new_snapshot_body, new_volume_body, volume_from_dict
from csidriver.host.parsers import MIB
from csidriver.host.runner import CommandError
from tests.fakes.kube import FakeKube
from tests.fakes.partitions import Disk, FakeInventory, FakePartitions

NODE = "n1"
GUID_A, GUID_B = "AAAAAAAA-0000-0000-0000-000000000001", "BBBBBBBB-0000-0000-0000-000000000002"


class World:
    def __init__(self, *disks: Disk, brake: int = 100, cordoned: set[str] | None = None) -> None:
        self.kube = FakeKube()
        self.parts = FakePartitions(*(disks or (Disk("/dev/fa", "ssd", GUID_A, 1024 * MIB),)))
        self.inv = FakeInventory(self.parts)
        self.snapshots_synced = True
        self.rec = self.reconciler(self.kube.cache(c.VOLUME_PLURAL), brake, cordoned or set())

    def reconciler(self, cache: Mapping[str, Any], brake: int = 100, cordoned: set[str] | None = None) -> Any:
        return VolumeReconciler(
            self.kube,
            cache,
            self.parts,
            self.inv,
            NODE,
            DeletionBrake(brake, 60.0),
            lambda: cordoned or set(),
            self.kube.cache(c.SNAPSHOT_PLURAL),
            lambda: self.snapshots_synced,
        )

    async def volume(self, size: int = 64 * MIB, node: str = NODE, annotations: Mapping[str, str] | None = None) -> str:
        name = f"pvc-0000000{len(self.kube.objects[c.VOLUME_PLURAL])}-0000-0000-0000-000000000000"
        body = new_volume_body(name, self.kube.namespace, node, "ssd", size, name)
        body["metadata"]["annotations"].update(annotations or {})
        await self.kube.create_volume(body)
        return name

    async def ready(self, size: int = 64 * MIB, annotations: Mapping[str, str] | None = None) -> str:
        name = await self.volume(size, annotations=annotations)
        assert await self.rec.reconcile(name) is None
        return name

    def obj(self, name: str) -> Any:
        raw = self.kube.objects[c.VOLUME_PLURAL].get(name)
        return volume_from_dict(raw) if raw is not None else None

    def slot(self, name: str) -> Any:
        return self.parts.named(naming.partition_name(name))


def _conditions(vol: Any, kind: str) -> list[Mapping[str, Any]]:
    return [x for x in vol.conditions if x.get("type") == kind]


async def test_pending_volume_is_carved_wiped_and_reported_ready() -> None:
    w = World()
    name = await w.volume()
    assert await w.rec.reconcile(name) is None
    vol = w.obj(name)
    slot = w.slot(name)
    assert vol.state is State.READY and vol.finalizers == (c.FINALIZER,)
    assert slot.content == "wiped" and slot.size == 64 * MIB
    assert vol.placement.disk_guid == GUID_A and vol.placement.device_path == f"/dev/fap{slot.number}"
    assert vol.capacity_bytes == 64 * MIB
    # The finalizer goes on before any disk is touched; Ready carries the inventory stamp instead of waiting for a
    # DeviceNode write.
    assert w.kube.writes[1] == ("add-finalizer", c.VOLUME_PLURAL, name)
    assert w.parts.calls[0] == ("find", naming.partition_name(name)) and w.inv.refreshes == 0
    assert w.inv.stamps == 1 and vol.inventory_generation == 1


async def test_a_ready_volume_is_left_alone() -> None:
    w = World()
    name = await w.ready()
    writes, calls = len(w.kube.writes), len(w.parts.calls)
    assert await w.rec.reconcile(name) is None
    assert len(w.kube.writes) == writes
    assert all(m in ("find", "activate") for m, _ in w.parts.calls[calls:]) or len(w.parts.calls) == calls


async def test_a_volume_of_another_node_is_ignored() -> None:
    w = World()
    name = await w.volume(node="n2")
    assert await w.rec.reconcile(name) is None
    assert w.parts.calls == [] and len(w.kube.writes) == 1


async def test_crash_between_carving_and_ready_is_wiped_again() -> None:
    w = World()
    name = await w.volume()

    async def killed() -> None:
        raise RuntimeError("agent killed here")  # after the table write, before the batch wipes

    w.parts.after_write = killed
    with pytest.raises(RuntimeError):
        await w.rec.reconcile(name)
    w.parts.after_write = None
    assert w.slot(name).content == "blank" and w.obj(name).state is State.PENDING
    w.parts.fail_next["create_many"] = RuntimeError("agent killed again, in the batch adopting the partition found")
    with pytest.raises(RuntimeError):
        await w.rec.reconcile(name)
    assert w.slot(name).content == "blank" and w.obj(name).state is State.PENDING
    assert await w.rec.reconcile(name) is None
    assert w.slot(name).content == "wiped" and w.obj(name).state is State.READY
    assert len(w.parts.disks["/dev/fa"].slots) == 1  # never carved twice


async def test_a_stale_cache_never_wipes_a_volume_the_api_server_has_ready() -> None:
    w = World()
    name = await w.ready()
    w.slot(name).content = "a pod's data"
    stale = {name: {**w.kube.objects[c.VOLUME_PLURAL][name], "status": {"state": "Pending"}}}
    assert await w.reconciler(stale).reconcile(name) is None
    assert w.slot(name).content == "a pod's data"


async def test_no_room_is_failed_with_the_largest_extent() -> None:
    w = World(Disk("/dev/fa", "ssd", GUID_A, 100 * MIB))
    name = await w.volume(size=200 * MIB)
    assert await w.rec.reconcile(name) is None
    vol = w.obj(name)
    assert vol.state is State.FAILED and vol.error_code.value == "InsufficientCapacity"
    assert "cannot fit" in vol.error_message and "largest free extent is" in vol.error_message
    assert [e.reason for e in w.kube.events] == ["ProvisioningFailed"] and w.inv.refreshes == 1


async def test_cordoned_disk_is_never_carved() -> None:
    small = Disk("/dev/fa", "ssd", GUID_A, 200 * MIB)  # best fit would pick it
    big = Disk("/dev/fb", "ssd", GUID_B, 1024 * MIB)
    w = World(small, big, cordoned={GUID_A})
    name = await w.ready()
    assert w.obj(name).placement.disk_guid == GUID_B


async def test_room_to_grow_prefers_a_disk_with_room_to_double() -> None:
    small = Disk("/dev/fa", "ssd", GUID_A, 100 * MIB)
    big = Disk("/dev/fb", "ssd", GUID_B, 1024 * MIB)
    w = World(small, big)
    tight = await w.ready(size=64 * MIB)
    assert w.obj(tight).placement.disk_guid == GUID_A  # best fit
    roomy = await w.ready(size=32 * MIB, annotations={c.PLACEMENT_ANNOTATION: c.PLACEMENT_ROOM_TO_GROW})
    assert w.obj(roomy).placement.disk_guid == GUID_B


async def test_a_failure_retried_is_explained_once() -> None:
    w = World()
    name = await w.volume()
    for _ in range(2):
        w.parts.fail_next["create_many"] = CommandError(["sfdisk"], 1, "device busy")
        with pytest.raises(CommandError):
            await w.rec.reconcile(name)
    ready = _conditions(w.obj(name), "Ready")
    assert len(ready) == 1 and ready[0]["reason"] == "CommandFailed" and ready[0]["status"] == "False"
    assert sum(1 for verb, _, _ in w.kube.writes if verb == "patch-status") == 1  # written once, not per retry


async def test_deletion_removes_the_partition_then_only_our_finalizer() -> None:
    w = World()
    name = await w.ready()
    vol = w.obj(name)
    await w.kube.add_finalizer(name, vol.finalizers, "backup.example.com/keep")
    refreshes = w.inv.refreshes
    await w.kube.delete_volume(name)
    assert await w.rec.reconcile(name) is None
    assert w.slot(name) is None
    assert w.obj(name).finalizers == ("backup.example.com/keep",)
    # DeviceNode shows the space free again before the object goes.
    assert w.inv.refreshes == refreshes + 1


async def test_deletion_of_a_mounted_volume_waits_and_says_why() -> None:
    w = World()
    name = await w.ready()
    w.parts.busy.add(naming.partition_name(name))
    await w.kube.delete_volume(name)
    for _ in range(2):
        with pytest.raises(Retry):
            await w.rec.reconcile(name)
    released = _conditions(w.obj(name), c.RELEASED_CONDITION)
    assert released[0]["reason"] == c.RELEASE_IN_USE and released[0]["status"] == "False"
    assert w.slot(name) is not None and w.obj(name).deleting
    w.parts.busy.clear()
    assert await w.rec.reconcile(name) is None
    assert w.obj(name) is None and w.slot(name) is None


async def test_deletion_on_a_missing_disk_keeps_the_finalizer() -> None:
    w = World()
    name = await w.ready()
    w.inv.gone.add("/dev/fa")
    await w.kube.delete_volume(name)
    with pytest.raises(Retry, match="not present"):
        await w.rec.reconcile(name)
    assert _conditions(w.obj(name), c.RELEASED_CONDITION)[0]["reason"] == c.RELEASE_DISK_MISSING
    assert [e.reason for e in w.kube.events] == ["DiskMissing"]


async def test_the_brake_holds_back_deletions_beyond_its_limit() -> None:
    w = World(brake=1)
    w.rec = w.reconciler(w.kube.cache(c.VOLUME_PLURAL), brake=1)
    first, second = await w.ready(), await w.ready()
    for name in (first, second):
        await w.kube.delete_volume(name)
    assert await w.rec.reconcile(first) is None
    wait = await w.rec.reconcile(second)
    assert wait is not None and wait > 0 and w.slot(second) is not None
    assert [e.reason for e in w.kube.events] == ["DeletionsThrottled"]


async def test_a_clone_is_filled_from_its_source_not_wiped() -> None:
    w = World()
    source = await w.ready()
    w.slot(source).content = "source data"
    clone = await w.ready(annotations={c.CLONE_SOURCE_ANNOTATION: source})
    assert w.slot(clone).content == "copy of source data"
    assert w.obj(clone).state is State.READY
    assert w.kube.objects[c.VOLUME_PLURAL][clone]["status"]["copiedBytes"] == 64 * MIB


async def test_a_clone_of_a_source_that_cannot_be_frozen_fails() -> None:
    w = World()
    source = await w.ready()
    w.parts.frozen_fail.add(naming.partition_name(source))
    clone = await w.ready(annotations={c.CLONE_SOURCE_ANNOTATION: source})
    vol = w.obj(clone)
    assert vol.state is State.FAILED and "refused" in vol.error_message and "raw block" in vol.error_message


async def test_a_restore_is_filled_from_its_snapshot() -> None:
    w = World()
    source = await w.ready()
    snap = "snapshot-1"
    body = new_snapshot_body(snap, w.kube.namespace, NODE, "ssd", 64 * MIB, source, snap)
    await w.kube.create_snapshot(body)
    await w.kube.patch_snapshot_status(snap, {"state": "Ready"})
    made = await w.parts.create("/dev/fa", "ssd", naming.snapshot_partition_name(snap), 64 * MIB)
    w.parts.by_node(made.node)[1].content = "snapshot data"
    w.snapshots_synced = False
    restored = await w.volume(annotations={c.RESTORE_SOURCE_ANNOTATION: snap})
    with pytest.raises(Retry, match="not synced"):
        await w.rec.reconcile(restored)
    w.snapshots_synced = True
    assert await w.rec.reconcile(restored) is None
    assert w.slot(restored).content == "copy of snapshot data"


async def test_a_source_being_snapshotted_is_not_deleted() -> None:
    w = World()
    source = await w.ready()
    body = new_snapshot_body("snapshot-2", w.kube.namespace, NODE, "ssd", 64 * MIB, source, "snapshot-2")
    await w.kube.create_snapshot(body)  # Pending: its copy reads the source
    await w.kube.delete_volume(source)
    with pytest.raises(Retry, match="snapshot snapshot-2 is being copied"):
        await w.rec.reconcile(source)
    await w.kube.patch_snapshot_status("snapshot-2", {"state": "Ready"})
    assert await w.rec.reconcile(source) is None and w.obj(source) is None


async def test_growth_in_place_and_a_refusal_naming_the_request() -> None:
    w = World(Disk("/dev/fa", "ssd", GUID_A, 300 * MIB))
    name = await w.ready(size=64 * MIB)
    await w.kube.patch_volume(name, {"spec": {"capacity": str(128 * MIB)}})
    assert await w.rec.reconcile(name) is None
    vol = w.obj(name)
    assert vol.capacity_bytes == 128 * MIB and w.slot(name).size == 128 * MIB
    assert _conditions(vol, c.RESIZED_CONDITION)[0]["status"] == "True"
    patch = {"metadata": {"annotations": {c.RESIZE_REQUEST_ANNOTATION: "req-7"}}, "spec": {"capacity": str(1 << 30)}}
    await w.kube.patch_volume(name, patch)
    assert await w.rec.reconcile(name) == RESIZE_RETRY
    refused = _conditions(w.obj(name), c.RESIZED_CONDITION)[0]
    assert refused["status"] == "False" and refused["message"].endswith("(request req-7)")
    assert w.slot(name).size == 128 * MIB
