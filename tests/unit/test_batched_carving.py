"""Creates queued on one disk share one partition-table write: the planner places several partitions exactly as one
after the other would, and the volume reconciler's batches (carving.Batcher) keep every rule of a single create:
a member's failure is its own, a crash after the table write is adopted by name, a member deleted meanwhile leaves
no partition. On in-memory fakes (tests/fakes), with the real planner (host.partitions.plan)."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import itertools
from typing import Any

import pytest

from csidriver.agent.carving import Batcher
from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import State
from csidriver.host.parsers import MIB, DiskTable, PartitionEntry
from csidriver.host.partitions import (
    InsufficientCapacity,
    PartitionError,
    UnsafeOperation,
    Want,
    best_fit,
    plan,
    roomy_fit,
)
from tests.fakes.partitions import Disk
from tests.unit.test_volume_reconciler import GUID_A, GUID_B, World

S = 512


def _table(*parts: tuple[int, int], total_mib: int = 1024) -> DiskTable:
    entries = [PartitionEntry(1, "", MIB // S, 9 * MIB // S, "", "", "pool", "")]
    for n, (start, size) in enumerate(parts, start=2):
        entries.append(PartitionEntry(n, "", start * MIB // S, size * MIB // S, "", "", f"old{n}", ""))
    return DiskTable("gpt", "", S, 2048, total_mib * MIB // S - 34, 128, tuple(entries))


def _one_by_one(table: DiskTable, wants: list[Want]) -> list[tuple[int, int] | None]:
    """Each want placed by best_fit/roomy_fit on the table as the previous ones left it (the unbatched way)."""
    out: list[tuple[int, int] | None] = []
    for w in wants:
        try:
            extent = (roomy_fit if w.room_to_grow else best_fit)(table, w.size)
        except InsufficientCapacity:
            out.append(None)
            continue
        entry = PartitionEntry(99, "", extent.start_bytes // S, w.size // S, "", "", w.name, "")
        table = dataclasses.replace(table, partitions=(*table.partitions, entry))
        out.append((entry.start, entry.size))
    return out


def test_a_batch_is_placed_exactly_as_one_create_after_the_other() -> None:
    table = _table((10, 100), (300, 50), (600, 20))  # gaps of 190, 250, ~400 MiB
    wants = [
        Want("a", 180 * MIB),
        Want("b", 60 * MIB, room_to_grow=True),
        Want("c", 240 * MIB),
        Want("d", 500 * MIB),  # fits nowhere once the others are placed
        Want("e", 5 * MIB),
        Want("f", 100 * MIB, room_to_grow=True),
    ]
    planned = plan(table, wants)
    got = [(p.start, p.size) if isinstance(p, PartitionEntry) else None for p in planned]
    assert got == _one_by_one(table, wants)
    assert isinstance(planned[3], InsufficientCapacity)
    spans = sorted((p.start, p.start + p.size) for p in [*table.partitions, *planned] if isinstance(p, PartitionEntry))
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans)), "extents overlap"
    assert all(p.start * S % MIB == 0 and p.size * S % MIB == 0 for p in planned if isinstance(p, PartitionEntry))


def test_a_bad_member_fails_alone_and_a_known_name_is_not_made_twice() -> None:
    table = _table((10, 100))
    planned = plan(
        table,
        [Want("x", 10 * MIB), Want("bad name", MIB), Want("y", 0), Want("pool", MIB), Want("old2", MIB), Want("x", 1)],
    )
    assert isinstance(planned[0], PartitionEntry) and planned[0].number == 0  # new
    assert isinstance(planned[1], ValueError) and isinstance(planned[2], ValueError)
    assert isinstance(planned[3], UnsafeOperation)  # the meta partition's name
    assert isinstance(planned[4], PartitionEntry) and planned[4].number == 2  # exists: found, not made
    assert planned[5] == planned[0]  # asked twice: one partition


def test_a_batch_respects_the_free_gpt_entries() -> None:
    table = DiskTable("gpt", "", S, 2048, 1024 * MIB // S - 34, 3, _table((10, 10)).partitions)  # 3 entries, 2 used
    planned = plan(table, [Want("a", MIB), Want("b", MIB)])
    assert isinstance(planned[0], PartitionEntry)
    assert isinstance(planned[1], InsufficientCapacity) and "no free GPT entry" in str(planned[1])


async def _reconcile_all(w: World, names: list[str]) -> list[Any]:
    return await asyncio.gather(*(w.rec.reconcile(n) for n in names), return_exceptions=True)


def _check_disk(disk: Disk) -> None:
    spans = sorted((s.start, s.start + s.size) for s in disk.slots)
    assert spans[0][0] >= 10 * MIB
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans)), "partitions overlap"
    assert len({s.name for s in disk.slots}) == len(disk.slots) == len({s.number for s in disk.slots})


async def test_concurrent_creates_on_one_disk_share_one_table_write() -> None:
    w = World()
    names = [await w.volume(size=(i % 3 + 1) * MIB) for i in range(12)]
    assert await _reconcile_all(w, names) == [None] * 12
    # All twelve asked before the first batch began (the fakes answer without waiting): one table write.
    assert [len(b) for b in w.parts.batches] == [12] and w.parts.table_writes == 1
    disk = w.parts.disks["/dev/fa"]
    _check_disk(disk)
    for i, name in enumerate(names):
        vol, slot = w.obj(name), w.slot(name)
        assert vol.state is State.READY and slot.content == "wiped"
        assert slot.size == (i % 3 + 1) * MIB and vol.placement.device_path == disk.node(slot)
    # The batch wiped them: no separate wipe of any of them.
    assert not [m for m, _ in w.parts.calls if m == "wipe"]


async def test_one_member_without_room_fails_alone() -> None:
    w = World(Disk("/dev/fa", "ssd", GUID_A, 200 * MIB))
    first = await w.volume(size=10 * MIB)
    big = await w.volume(size=500 * MIB)
    others = [await w.volume(size=20 * MIB) for _ in range(3)]
    await _reconcile_all(w, [first, big, *others])
    assert [len(b) for b in w.parts.batches] == [5] and w.parts.table_writes == 1
    assert w.obj(big).state is State.FAILED and w.obj(big).error_code is not None
    assert "cannot fit" in w.obj(big).error_message and w.parts.named(naming.partition_name(big)) is None
    assert all(w.obj(n).state is State.READY for n in [first, *others])
    _check_disk(w.parts.disks["/dev/fa"])


async def test_a_disk_failure_fails_its_batch_and_the_next_batch_goes_on() -> None:
    w = World()
    names = [await w.volume(size=MIB) for _ in range(4)]
    w.parts.fail_next["create_many"] = PartitionError("the disk refused the write")
    results = await _reconcile_all(w, names[:1])
    assert isinstance(results[0], PartitionError) and w.obj(names[0]).state is State.PENDING
    assert await _reconcile_all(w, names) == [None] * 4
    assert all(w.obj(n).state is State.READY for n in names)


async def test_best_fit_across_disks_holds_for_batched_members() -> None:
    # Disk B is the tighter fit for 30 MiB volumes: its batch holds two of them (89 usable MiB), the other four are
    # refused there alone and carved on A in the next batch.
    w = World(Disk("/dev/fa", "ssd", GUID_A, 1024 * MIB), Disk("/dev/fb", "ssd", GUID_B, 100 * MIB))
    names = [await w.volume(size=30 * MIB) for _ in range(6)]
    assert await _reconcile_all(w, names) == [None] * 6
    assert len(w.parts.disks["/dev/fb"].slots) == 2 and len(w.parts.disks["/dev/fa"].slots) == 4
    assert [len(b) for b in w.parts.batches] == [6, 4]
    for disk in w.parts.disks.values():
        _check_disk(disk)


async def test_a_crash_after_the_table_write_is_adopted_by_name() -> None:
    w = World()
    names = [await w.volume(size=2 * MIB) for _ in range(6)]
    await w.rec.reconcile(names[0])
    crashed = asyncio.Event()

    async def killed() -> None:
        crashed.set()
        raise RuntimeError("agent killed after the table write")

    w.parts.after_write = killed
    results = await _reconcile_all(w, names[1:])
    assert crashed.is_set() and all(isinstance(r, RuntimeError) for r in results)
    written = {s.name: s for s in w.parts.disks["/dev/fa"].slots}
    assert all(written[naming.partition_name(n)].content == "blank" for n in names[1:])  # never wiped, never Ready
    assert all(w.obj(n).state is State.PENDING for n in names[1:])

    # A new agent: its memory is empty; every member is found by its name, wiped, and Ready; nothing is made twice.
    w.parts.after_write = None
    w.rec = w.reconciler(w.kube.cache(c.VOLUME_PLURAL))
    assert await _reconcile_all(w, names[1:]) == [None] * 5
    slots = w.parts.disks["/dev/fa"].slots
    assert len(slots) == 6 and all(s.content == "wiped" for s in slots)
    assert all(w.obj(n).state is State.READY for n in names)
    assert {w.slot(n).number for n in names[1:]} == {written[naming.partition_name(n)].number for n in names[1:]}


async def test_a_member_deleted_while_its_batch_is_written_leaves_no_partition() -> None:
    w = World()
    names = [await w.volume(size=2 * MIB) for _ in range(4)]
    await w.rec.reconcile(names[0])
    doomed = names[2]

    async def deleted_meanwhile() -> None:
        await w.kube.delete_volume(doomed)  # has our finalizer: it only gets a deletionTimestamp

    w.parts.after_write = deleted_meanwhile
    await _reconcile_all(w, names[1:])
    w.parts.after_write = None
    assert w.parts.named(naming.partition_name(doomed)) is not None  # written with its batch
    # Its deletion is the next event: the partition goes, then our finalizer, then the object.
    assert await w.rec.reconcile(doomed) is None
    assert w.parts.named(naming.partition_name(doomed)) is None
    assert doomed not in w.kube.objects[c.VOLUME_PLURAL]
    assert all(w.obj(n).state is State.READY for n in names if n != doomed)


async def test_a_crash_after_the_write_with_a_member_deleted_meanwhile_leaves_no_partition() -> None:
    w = World()
    names = [await w.volume(size=2 * MIB) for _ in range(4)]
    await w.rec.reconcile(names[0])

    async def killed() -> None:
        raise RuntimeError("agent killed after the table write")

    w.parts.after_write = killed
    await _reconcile_all(w, names[1:])
    w.parts.after_write = None
    await w.kube.delete_volume(names[1])  # deleted while no agent runs
    w.rec = w.reconciler(w.kube.cache(c.VOLUME_PLURAL))
    assert await _reconcile_all(w, names[1:]) == [None] * 3
    assert w.parts.named(naming.partition_name(names[1])) is None and names[1] not in w.kube.objects[c.VOLUME_PLURAL]
    assert sorted(s.name for s in w.parts.disks["/dev/fa"].slots) == sorted(
        naming.partition_name(n) for n in names if n != names[1]
    )


async def test_a_stale_pending_pass_after_our_ready_touches_nothing() -> None:
    w = World()
    name = await w.volume()
    stale = copy.deepcopy(w.kube.objects[c.VOLUME_PLURAL][name])  # as the cache held it before our Ready
    cache: dict[str, Any] = {}
    w.rec = w.reconciler(cache)
    cache[name] = w.kube.objects[c.VOLUME_PLURAL][name]
    assert await w.rec.reconcile(name) is None and w.obj(name).state is State.READY
    calls, writes = len(w.parts.calls), len(w.kube.writes)
    reads: list[str] = []
    get_volume = w.kube.get_volume

    async def counted(n: str) -> Any:
        reads.append(n)
        return await get_volume(n)

    w.kube.get_volume = counted  # type: ignore[method-assign,assignment]
    cache[name] = {**stale, "metadata": {**stale["metadata"], "finalizers": [c.FINALIZER]}}
    assert await w.rec.reconcile(name) is None
    assert len(w.parts.calls) == calls and len(w.kube.writes) == writes and not reads  # no table read, no request
    # Another object under the same name (deleted and made again) is not taken for ours.
    cache[name] = {**cache[name], "metadata": {**cache[name]["metadata"], "uid": "another"}}
    assert await w.rec.reconcile(name) is None
    assert reads == [name]  # found by name, so the API server is asked (and says Ready): never wiped


async def test_a_caller_gone_before_its_batch_began_is_left_out() -> None:
    w = World()
    batcher = Batcher(w.parts)
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()

    w.parts.after_write = slow
    first = asyncio.ensure_future(batcher.create("/dev/fa", "ssd", "p1", MIB))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(batcher.create("/dev/fa", "ssd", "p2", MIB))
    third = asyncio.ensure_future(batcher.create("/dev/fa", "ssd", "p3", MIB))
    await asyncio.sleep(0)
    second.cancel()
    gate.set()
    made = await first
    assert made.wiped and made.partition.name == "p1"
    assert (await third).partition.name == "p3"
    assert w.parts.batches == [["p1"], ["p3"]]
    with pytest.raises(asyncio.CancelledError):
        await second
    assert [s.name for s in w.parts.disks["/dev/fa"].slots] == ["p1", "p3"]
