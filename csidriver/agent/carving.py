"""What the volume and snapshot reconcilers share: carving a partition, reporting a copy's progress, and the
status pieces they both write (conditions, failure classes, placement)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from csidriver.agent.ports import Partitions
from csidriver.api import constants as c
from csidriver.api.objects import Placement
from csidriver.host.disks import PoolDisk
from csidriver.host.partitions import InsufficientCapacity, NotAPoolDisk, Partition, PartitionBusy, PartitionError
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


async def carve(
    parts: Partitions,
    disks: Sequence[PoolDisk],
    skip: set[str],
    node: str,
    pool: str,
    name: str,
    size: int,
    room_to_grow: bool = False,
) -> tuple[Partition, str] | NoRoom:
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
