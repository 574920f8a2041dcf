"""What the volume and snapshot reconcilers share: carving a partition, reporting a copy's progress, and the
status pieces they both write (conditions, failure classes, placement)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from csidriver.agent.ports import Partitions
from csidriver.api import constants as c
from csidriver.api.objects import Placement
from csidriver.host.disks import PoolDisk
from csidriver.host.partitions import (
    BatchTimes,
    InsufficientCapacity,
    NotAPoolDisk,
    Partition,
    PartitionBusy,
    PartitionError,
    Want,
)
from csidriver.host.runner import CommandError

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(kind: str, ok: bool, reason: str, message: str) -> dict[str, Any]:
    """A status condition (message capped at 1 KiB)."""
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message[:1024],
        "lastTransitionTime": now(),
    }


_FAILURE_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (NotAPoolDisk, "NotAPoolDisk"),
    (PartitionBusy, "PartitionBusy"),
    (CommandError, "CommandFailed"),
    (PartitionError, "PartitionFailed"),
)


def failure_class(error: Exception) -> str:
    """The reason a retried failure is reported under (the controller maps NotAPoolDisk and PartitionBusy to
    FAILED_PRECONDITION, the rest to INTERNAL)."""
    return next((r for cls, r in _FAILURE_CLASSES if isinstance(error, cls)), "AgentError")


def placement(part: Partition, disk_guid: str) -> Placement:
    return Placement(
        disk_guid=disk_guid,
        disk_path=part.disk_path,
        partition_name=part.name,
        partition_uuid=part.uuid,
        partition_number=part.number,
        device_path=part.node,
    )


@dataclass(frozen=True)
class NoRoom:
    """Why no usable disk of the pool could hold the partition."""

    reason: str


T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class Creator(Protocol[T_co]):
    """What carving asks of a disk: find-or-create one named partition (PartitionManager, or a Batcher)."""

    async def create(self, disk_path: str, pool: str, name: str, size: int, *, room_to_grow: bool = False) -> T_co: ...


@dataclass(frozen=True)
class Carved:
    """A partition a batch found or created: whether that batch created (and wiped) it, how long the request waited
    for its batch to begin (the batch before it on that disk, holding the disk), and the batch's timings."""

    partition: Partition
    wiped: bool
    waited: float
    times: BatchTimes


_Member = tuple[Want, float, "asyncio.Future[Carved]"]


class Batcher:
    """Creates on one disk share one partition-table write: a create asked while a batch is being made on its disk
    waits, and all that waited go together in the next batch (PartitionManager.create_many), in the order asked, so
    each is placed exactly as if made one after the other. The first create on an idle disk starts at once.

    A member's own failure (no room, a bad name or size) is its alone; a failure of the disk fails that batch's
    members. A member whose caller went away before its batch began is left out; one that went away after still has
    its partition made, found by its name when the volume is reconciled again (or deleted)."""

    def __init__(self, parts: Partitions) -> None:
        self._parts = parts
        self._waiting: dict[tuple[str, str], list[_Member]] = {}  # a key is present while its batches run
        self._tasks: set[asyncio.Task[None]] = set()

    async def create(
        self, disk_path: str, pool: str, name: str, size: int, *, room_to_grow: bool = False, adopt: bool = False
    ) -> Carved:
        """The partition named ``name`` on this disk, made (and wiped) by the next batch unless it exists; with
        ``adopt``, one that exists is wiped by that batch too (see host.partitions.Want)."""
        key = (disk_path, pool)
        future: asyncio.Future[Carved] = asyncio.get_running_loop().create_future()
        members = self._waiting.get(key)
        if members is None:
            members = self._waiting[key] = []
            task = asyncio.create_task(self._run(key))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        members.append((Want(name, size, room_to_grow, adopt), time.monotonic(), future))
        return await future

    async def _run(self, key: tuple[str, str]) -> None:
        disk, pool = key
        members: list[_Member] = []
        try:
            while True:
                members = [m for m in self._waiting[key] if not m[2].done()]
                self._waiting[key] = []
                if not members:
                    return
                began = time.monotonic()
                try:
                    batch = await self._parts.create_many(disk, pool, [want for want, _, _ in members])
                except Exception as e:
                    log.warning("batch of %d partitions on %s failed: %s", len(members), disk, e)
                    for _, _, future in members:
                        if not future.done():
                            future.set_exception(e)
                    continue
                for (_, asked, future), result in zip(members, batch.results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(Carved(result[0], result[1], began - asked, batch.times))
                if batch.times.created > 1:
                    t = batch.times
                    log.info(
                        "%s: %d partitions in one table write (lock %.0f ms, table %.0f ms, kernel %.0f ms, wipe %.0f"
                        " ms)",
                        disk,
                        t.created,
                        t.lock * 1000,
                        t.table * 1000,
                        t.kernel * 1000,
                        t.wipe * 1000,
                    )
        finally:
            left = [*members, *self._waiting.pop(key, [])]
            for _, _, future in left:
                if not future.done():
                    future.set_exception(PartitionError(f"the batch on {disk} was stopped"))


async def carve(
    parts: Creator[T],
    disks: Sequence[PoolDisk],
    skip: set[str],
    node: str,
    pool: str,
    name: str,
    size: int,
    room_to_grow: bool = False,
) -> tuple[T, str] | NoRoom:
    """Create partition `name` of `size` bytes on the pool disk whose largest free extent is the smallest that
    still holds it (best fit), or with `room_to_grow` one with room for it to double (`roomy_fit`), never on a
    disk whose GUID is in `skip` (cordoned). Returns the partition and its disk's GUID, or why it cannot be made."""
    usable = [d for d in disks if d.guid.upper() not in skip]
    if room_to_grow:  # the disk whose smallest extent holding twice the size is smallest, else the roomiest
        order = sorted(
            usable,
            key=lambda d: (
                d.largest_extent < 2 * size,
                d.largest_extent if d.largest_extent >= 2 * size else -d.largest_extent,
                d.guid,
            ),
        )
    else:
        order = sorted(usable, key=lambda d: (d.largest_extent < size, d.largest_extent, d.guid))
    largest = 0
    for disk in order:
        try:
            return await parts.create(disk.path, pool, name, size, room_to_grow=room_to_grow), disk.guid
        except InsufficientCapacity as e:
            largest = max(largest, e.largest_extent)
    if not usable:
        return NoRoom(f"node {node} has no usable (present, not cordoned) disk in pool {pool!r}")
    return NoRoom(f"pool {pool!r} on node {node} cannot fit {size} bytes: largest free extent is {largest} bytes")


@contextlib.asynccontextmanager
async def copy_progress(
    report: Callable[[int], Awaitable[object]], every: float = c.COPY_PROGRESS_SECONDS
) -> AsyncIterator[Callable[[int], None]]:
    """Yields the callback a copy calls (from its thread) with the bytes copied so far; meanwhile `report` is
    awaited with the latest count every `every` seconds when it changed (status.copiedBytes). Reporting is best
    effort: a failed report is logged, never fatal to the copy."""
    latest = [0]
    reported = 0

    def seen(done: int) -> None:
        latest[0] = done  # one int written by the copy's thread, read by the loop: no lock needed

    async def loop() -> None:
        nonlocal reported
        while True:
            await asyncio.sleep(every)
            if latest[0] != reported:
                reported = latest[0]
                try:
                    await report(reported)
                except Exception as e:
                    log.debug("copy progress not reported: %s", e)

    task = asyncio.create_task(loop())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
