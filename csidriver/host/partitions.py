"""Creating, wiping and deleting volume partitions on pool disks.

Safety invariant: every write is preceded, under the per-disk lock, by a fresh read proving that the
disk is GPT and that its partition #1 carries the caller's pool name; partition #1 is never touched,
and only partitions carrying the caller's (validated) name are created, wiped or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import os
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from csidriver.api.naming import GPT_NAME

from .clone import Freezer, SourceBusy, copy_device, source_use
from .disks import PoolDisk, device_users, devices_users, kernel_geometry, kernel_partition, read_table
from .parsers import MIB, DiskTable, Extent, PartitionEntry, free_extents, parse_mountinfo, partition_node
from .runner import Runner

log = logging.getLogger(__name__)
LINUX_FS_TYPE = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
# sfdisk locks only when asked (--lock or $LOCK_BLOCK_DEVICE); we hold the flock, so forbid it.
_SFDISK_WRITE = ("sfdisk", "--lock=no", "--no-reread", "--no-tell-kernel", "--wipe=never", "--quiet")


class PartitionError(Exception):
    """Base class of the partition layer's domain errors."""


class NotAPoolDisk(PartitionError):
    """The disk is not (or no longer) a GPT disk whose partition #1 is named after the pool."""


class InsufficientCapacity(PartitionError):
    """No aligned free extent (or no free GPT entry) can hold the requested size."""

    def __init__(self, largest_extent: int, requested: int = 0, reason: str = "") -> None:
        self.largest_extent = largest_extent
        self.requested = requested
        why = reason or f"no free extent holds {requested} bytes"
        super().__init__(f"{why}; largest free extent is {largest_extent} bytes")


class PartitionBusy(PartitionError):
    """The partition is mounted or otherwise in use."""


class UnsafeOperation(PartitionError):
    """The request would touch something the driver does not own (partition #1, a whole disk...)."""


@dataclass(frozen=True)
class Partition:
    disk_path: str
    number: int
    name: str
    uuid: str
    node: str
    size: int
    start: int


def validate_name(name: str) -> str:
    """GPT names we write: 1..36 characters of [A-Za-z0-9._-]."""
    if not isinstance(name, str) or not GPT_NAME.fullmatch(name):
        raise ValueError(f"invalid partition name {name!r}: want 1-36 characters of [A-Za-z0-9._-]")
    return name


def named(table: DiskTable, name: str) -> PartitionEntry | None:
    """The lowest-numbered partition carrying ``name``, never partition #1."""
    return next((p for p in table.partitions if p.name == name and p.number != 1), None)


def room_after(table: DiskTable, entry: PartitionEntry) -> int:
    """The first sector a partition may not reach when it grows: the start of the next partition on the disk, or
    the end of the usable area."""
    following = [p.start for p in table.partitions if p.start > entry.start]
    return min(following, default=table.last_lba + 1)


def _fitting(table: DiskTable, size: int) -> list[Extent]:
    """The aligned free extents that hold ``size`` bytes; InsufficientCapacity when none does, or no GPT entry is
    free."""
    extents = free_extents(table, MIB)
    largest = max((e.size_bytes for e in extents), default=0)
    if len(table.partitions) >= table.table_length:
        raise InsufficientCapacity(largest, size, "no free GPT entry")
    fits = [e for e in extents if e.size_bytes >= size]
    if not fits:
        raise InsufficientCapacity(largest, size)
    return fits


def best_fit(table: DiskTable, size: int) -> Extent:
    """The smallest aligned free extent holding ``size`` bytes (lowest start on ties)."""
    return min(_fitting(table, size), key=lambda e: (e.size_bytes, e.start_bytes))


def roomy_fit(table: DiskTable, size: int) -> Extent:
    """Room to grow: the smallest aligned free extent that holds twice ``size`` (room for the new partition to
    double in place), else the largest that holds it. Partitions grow only forward: after a volume, the new
    partition is placed so that the volume before it keeps room to double too (up to half the spare room); right
    after the meta partition, or at the start of the disk, at the extent's start."""
    fits = _fitting(table, size)
    roomy = [e for e in fits if e.size_bytes >= 2 * size]
    if roomy:
        extent = min(roomy, key=lambda e: (e.size_bytes, e.start_bytes))
    else:
        extent = max(fits, key=lambda e: (e.size_bytes, -e.start_bytes))
    sector = table.sector_size
    before = [p for p in table.partitions if (p.start + p.size) * sector <= extent.start_bytes]
    prev = max(before, key=lambda p: p.start + p.size, default=None)
    offset = 0
    if prev is not None and prev.number != 1:
        offset = min((extent.size_bytes - size) // 2, prev.size * sector) // MIB * MIB
    return Extent(extent.start_bytes + offset, extent.size_bytes - offset)


@dataclass(frozen=True)
class Want:
    """One partition asked of a batch: its GPT name, its size in bytes (rounded up to 1 MiB), and its placement rule
    (best fit, or with ``room_to_grow`` roomy fit). With ``adopt``, a partition of that name that exists already is
    wiped too, as a new one is: the caller has proven it was never handed out (its volume is still Pending on the API
    server), so a crash between writing it and reporting it Ready leaves nothing of its old bytes."""

    name: str
    size: int
    room_to_grow: bool = False
    adopt: bool = False


def plan(table: DiskTable, wants: Sequence[Want]) -> list[PartitionEntry | PartitionError | ValueError]:
    """Place several partitions at once, exactly as one after the other would be: each in the table as the
    previous ones leave it, by its own rule. A name already in the table (or earlier in ``wants``) is that entry,
    not a new one. One per want, in order: the entry (number 0 and no UUID when new: sfdisk assigns them), or why it
    cannot be made (InsufficientCapacity, an invalid name or size), which does not affect the others."""
    out: list[PartitionEntry | PartitionError | ValueError] = []
    sector = table.sector_size
    for want in wants:
        try:
            validate_name(want.name)
            if want.size <= 0:
                raise ValueError(f"size must be positive, got {want.size}")
        except ValueError as e:
            out.append(e)
            continue
        if table.pool() == want.name:
            out.append(UnsafeOperation(f"{want.name!r} names the meta partition #1"))
            continue
        existing = named(table, want.name)
        if existing is not None:
            out.append(existing)
            continue
        size = -(-want.size // MIB) * MIB
        try:
            extent = roomy_fit(table, size) if want.room_to_grow else best_fit(table, size)
        except InsufficientCapacity as e:
            out.append(e)
            continue
        entry = PartitionEntry(0, "", extent.start_bytes // sector, size // sector, LINUX_FS_TYPE, "", want.name, "")
        table = replace(table, partitions=(*table.partitions, entry))
        out.append(entry)
    return out


@dataclass
class BatchTimes:
    """Where a batch's time went, in seconds: waiting for the disk's lock, reading, planning, writing and reading back
    the table, telling the kernel, wiping the new partitions."""

    members: int = 0
    created: int = 0
    lock: float = 0.0
    table: float = 0.0
    kernel: float = 0.0
    wipe: float = 0.0


@dataclass
class Batch:
    """What ``create_many`` made: one result per want, in order (the partition and whether this batch wiped it: it
    created it, or adopted it; or why not), and its timings."""

    results: list[tuple[Partition, bool] | Exception] = field(default_factory=list)
    times: BatchTimes = field(default_factory=BatchTimes)


class PartitionManager:
    def __init__(
        self,
        runner: Runner,
        lock_dir: str = "/run/device-localpv/locks",
        *,
        settle_timeout: float = 5.0,
        sys_root: str = "/sys",
        mountinfo_path: str = "/proc/self/mountinfo",
    ) -> None:
        self._runner = runner
        self._lock_dir = lock_dir
        self._locks: dict[str, asyncio.Lock] = {}
        self._settle_timeout = settle_timeout
        self._sys_root = sys_root
        self._mountinfo = mountinfo_path
        self._freezer = Freezer(runner, lock_dir)
        self._reads: dict[str, _SharedRead] = {}

    async def find(self, disks: Sequence[PoolDisk], name: str) -> tuple[PoolDisk, PartitionEntry] | None:
        """Look a partition up by exact GPT name on fresh reads of the given pool disks: reads that began after this
        call did (concurrent lookups share one read of a disk)."""
        validate_name(name)
        for disk in disks:
            table = await self._reads.setdefault(
                disk.path, _SharedRead(functools.partial(self._read, disk.path))
            ).fresh()
            if table is None or table.pool() != disk.pool:
                continue
            entry = named(table, name)
            if entry is not None:
                return disk, entry
        return None

    async def create(self, disk_path: str, pool: str, name: str, size: int, *, room_to_grow: bool = False) -> Partition:
        """Find-or-create partition ``name`` of at least ``size`` bytes (rounded up to 1 MiB): in the smallest free
        extent that holds it (best fit), or with ``room_to_grow`` where it leaves the most room to grow in place
        (``roomy_fit``)."""
        validate_name(name)
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        want = -(-size // MIB) * MIB
        disk = await asyncio.to_thread(os.path.realpath, disk_path)
        async with self._locked(disk):
            table = _require_pool(disk, pool, await self._read(disk), name)
            entry = named(table, name) or await self._append(disk, table, name, want, room_to_grow)
            return await self._activate(disk, table.sector_size, entry)

    async def create_many(self, disk_path: str, pool: str, wants: Sequence[Want]) -> Batch:
        """Find-or-create several partitions on one disk with ONE table write: under the disk's lock, one fresh read
        proves the disk is the pool's, each want is placed as if made one after the other (``plan``: best fit or
        roomy fit, exact), all new entries are appended by one sfdisk call and read back once, the kernel is told
        about each (BLKPG, one partition at a time), and each new partition is wiped before it is returned.

        A partition of a wanted name that exists is returned as it is, not wiped, unless the want adopts it.
        A want that cannot be made (no room, a bad name or size) gets its error and does not fail the others; a
        failure of the disk itself (not the pool's, a table that cannot be read or written) fails them all (raised).
        Crash-safe: the table write is one atomic step (the GPT holds all of the batch or none of it), and every
        partition is recognised by its GPT name, so a caller that repeats the batch after a crash adopts what was
        written (found, not created again) and wipes it again."""
        batch = Batch(times=BatchTimes(members=len(wants)))
        times = batch.times
        disk = await asyncio.to_thread(os.path.realpath, disk_path)
        started = time.monotonic()
        async with self._locked(disk):
            times.lock = time.monotonic() - started
            mark = time.monotonic()
            table = _require_pool(disk, pool, await self._read(disk))
            planned = plan(table, wants)
            # A name asked twice is planned once (the second want is the first's entry).
            new = list({p.name: p for p in planned if isinstance(p, PartitionEntry) and p.number == 0}.values())
            if new:
                script = "".join(
                    f'start={p.start}, size={p.size}, type={LINUX_FS_TYPE}, name="{p.name}"\n' for p in new
                )
                await self._runner.run([*_SFDISK_WRITE, "--append", "--", disk], input=script.encode())
                table = _require_pool(disk, pool, await self._read(disk))
            times.table = time.monotonic() - mark
            times.created = len(new)
            # What this batch wipes: what it wrote, and what its caller adopts.
            fresh = {p.name for p in new} | {
                w.name for w, p in zip(wants, planned, strict=True) if w.adopt and isinstance(p, PartitionEntry)
            }
            entries: list[PartitionEntry | Exception] = []
            for want, p in zip(wants, planned, strict=True):
                if not isinstance(p, PartitionEntry):
                    entries.append(p)
                    continue
                entry = named(table, want.name)
                if entry is None or entry.start != p.start:
                    entries.append(
                        PartitionError(f"{disk}: partition {want.name!r} not at sector {p.start} after writing it")
                    )
                else:
                    entries.append(entry)
            mark = time.monotonic()
            parts = await self._activate_all(disk, table, entries)
            times.kernel = time.monotonic() - mark
            mark = time.monotonic()
            wiped = await self._wipe_new([p for p in parts if isinstance(p, Partition) and p.name in fresh])
            times.wipe = time.monotonic() - mark
            for part in parts:
                if isinstance(part, Partition):
                    failed = wiped.get(part.name)
                    batch.results.append(failed if failed is not None else (part, part.name in fresh))
                else:
                    batch.results.append(part)
        return batch

    async def _activate_all(
        self, disk: str, table: DiskTable, entries: Sequence[PartitionEntry | Exception]
    ) -> list[Partition | Exception]:
        """The kernel told about each entry. New partitions are added in one partx call over the range of their
        numbers (BLKPG, one partition at a time; a number already known to the kernel is refused and left as it is),
        then each is checked, and brought up to date one by one when it is not right."""
        sector = table.sector_size
        listed = [e for e in entries if isinstance(e, PartitionEntry)]

        def kernel_views() -> dict[int, tuple[int, int] | None]:
            views = {
                e.number: kernel_geometry(self._sys_root, os.path.basename(partition_node(disk, e.number)))
                for e in listed
            }
            return {
                n: v if v is None or os.path.exists(partition_node(disk, n)) else (-1, -1) for n, v in views.items()
            }

        missing = sorted(n for n, v in (await asyncio.to_thread(kernel_views)).items() if v is None)
        if len(missing) > 1:
            await self._runner.run(["partx", "--add", "--nr", f"{missing[0]}:{missing[-1]}", "--", disk], check=False)
        views = await asyncio.to_thread(kernel_views)
        out: list[Partition | Exception] = []
        for entry in entries:
            if not isinstance(entry, PartitionEntry):
                out.append(entry)
                continue
            if views[entry.number] == (entry.start * sector // 512, entry.size * sector // 512):
                node = partition_node(disk, entry.number)
                out.append(
                    Partition(
                        disk, entry.number, entry.name, entry.uuid, node, entry.size * sector, entry.start * sector
                    )
                )
                continue
            try:
                out.append(await self._activate(disk, sector, entry))
            except Exception as e:  # this partition's failure only (partx refused it, its node did not appear)
                out.append(e)
        return out

    async def _wipe_new(self, parts: Sequence[Partition]) -> dict[str, Exception]:
        """Wipe partitions this batch created or adopted (one wipefs call for all of them, then their first and last
        MiB), under the disk's lock. The failures by partition name; a partition in use is never wiped."""
        by_node = await asyncio.to_thread(devices_users, [p.node for p in parts], self._sys_root, self._mountinfo)
        users = {p.name: by_node[p.node] for p in parts}
        failed: dict[str, Exception] = {
            p.name: PartitionBusy(f"{p.node} is in use: {', '.join(users[p.name])}") for p in parts if users[p.name]
        }
        idle = [p for p in parts if not users[p.name]]
        if not idle:
            return failed
        done = await self._runner.run(
            ["wipefs", "--all", "--force", "--quiet", "--", *(p.node for p in idle)], check=False
        )
        if done.returncode != 0:  # which one failed: each on its own
            for part in list(idle):
                again = await self._runner.run(["wipefs", "--all", "--force", "--quiet", "--", part.node], check=False)
                if again.returncode != 0:
                    failed[part.name] = PartitionError(f"wipefs {part.node}: {again.stderr.strip()}")
                    idle.remove(part)
        zeroed = await asyncio.to_thread(zero_ends_all, [p.node for p in idle], MIB)
        for part in idle:
            if part.node in zeroed:
                e = zeroed[part.node]
                failed[part.name] = PartitionBusy(f"{part.node} is in use (exclusive open failed)") if _busy(e) else e
        return failed

    async def grow(self, disk_path: str, pool: str, name: str, size: int) -> Partition:
        """Grow partition ``name`` in place to at least ``size`` bytes (rounded up to 1 MiB): its start stays, its
        end moves into the free space right after it, the table entry is rewritten (name, GUID and type kept) and
        the kernel is told the new size of that one partition (BLKPG resize, which works while it is mounted and
        keeps its device number).
        Idempotent: a partition already that big only has the kernel's view brought up to date. Raises
        InsufficientCapacity (with the bytes available in place) and changes nothing when the room is too small;
        PartitionError when there is no such partition."""
        validate_name(name)
        if size <= 0:
            raise ValueError(f"size must be positive, got {size}")
        disk = await asyncio.to_thread(os.path.realpath, disk_path)
        async with self._locked(disk):
            table = _require_pool(disk, pool, await self._read(disk), name)
            entry = named(table, name)
            if entry is None:
                raise PartitionError(f"{disk}: no partition named {name!r} to grow")
            sector = table.sector_size
            want = -(-size // MIB) * MIB // sector
            if entry.size < want:
                limit = room_after(table, entry)
                if entry.start + want > limit:
                    grown = (limit - entry.start) * sector
                    raise InsufficientCapacity(
                        grown, size, f"the partition can grow in place to {grown} bytes only, not {want * sector}"
                    )
                script = f"size={want}\n"
                await self._runner.run([*_SFDISK_WRITE, "-N", str(entry.number), "--", disk], input=script.encode())
                fresh = await self._read(disk)
                after = named(fresh, name) if fresh else None
                if after is None or (after.start, after.size, after.uuid) != (entry.start, want, entry.uuid):
                    raise PartitionError(f"{disk}: partition {name!r} does not read back as grown to {want} sectors")
                entry = after
            return await self._activate(disk, sector, entry)

    async def activate(self, disk_path: str, pool: str, name: str) -> Partition | None:
        """Make the kernel's view of partition ``name`` current (its device node present, at the table's geometry),
        as a create does; None when the disk has no such partition. Reads the table, never writes it."""
        validate_name(name)
        disk = await asyncio.to_thread(os.path.realpath, disk_path)
        async with self._locked(disk):
            table = _require_pool(disk, pool, await self._read(disk))
            entry = named(table, name)
            if entry is None:
                return None
            return await self._activate(disk, table.sector_size, entry)

    async def fill_from(
        self, source: str, target: str, pool: str, progress: Callable[[int], None] | None = None
    ) -> int:
        """Make partition ``target`` (of a ``pool`` disk, never #1) a block copy of partition ``source``: the
        source's bytes, then the target's last MiB zeroed when it is bigger (no stale end-of-device signature).
        A source mounted as a filesystem is frozen during the copy; one published as a raw block device is
        refused (SourceBusy). Returns the bytes copied; `progress` is called (from the copy's thread) with the bytes
        copied so far. Repeatable: a copy cut short is simply done again."""
        real = await asyncio.to_thread(os.path.realpath, target)
        info = await asyncio.to_thread(kernel_partition, self._sys_root, os.path.basename(real))
        if info is None or info.number == 1:
            raise UnsafeOperation(f"{target} is not a volume partition")
        _require_pool(info.disk_path, pool, await self._read(info.disk_path))
        src = await asyncio.to_thread(os.path.realpath, source)
        src_geo = await asyncio.to_thread(kernel_geometry, self._sys_root, os.path.basename(src))
        dst_geo = await asyncio.to_thread(kernel_geometry, self._sys_root, os.path.basename(real))
        if src_geo is None or dst_geo is None:
            raise PartitionError(f"{source} or {target} is not a partition the kernel knows")
        length, size = src_geo[1] * 512, dst_geo[1] * 512
        if length > size:
            raise PartitionError(f"{target} ({size} bytes) is smaller than its source {source} ({length} bytes)")
        await self._ensure_idle(real)
        use = await asyncio.to_thread(source_use, src, self._mountinfo)
        if use.raw_binds:
            raise SourceBusy(f"{source} is published as a raw block device at {use.raw_binds[0]} and cannot be frozen")
        async with self._freezer.frozen(use.mount_points):
            await asyncio.to_thread(copy_device, src, real, length, progress)
        if size > length:
            await asyncio.to_thread(zero_tail, real, MIB)
        await self._new_identity(real)
        return length

    async def _new_identity(self, node: str) -> None:
        """A block copy carries its source's filesystem UUID, and xfs refuses to mount a filesystem whose UUID is
        already mounted (a clone beside its source, a restore beside the volume snapshotted): an xfs copy gets a UUID
        of its own. Its log is not clean (a frozen filesystem keeps its log), and xfs_admin changes only a clean
        one: the copy is mounted once with `nouuid` in a private directory and unmounted (log replayed), then given
        a new UUID. Best effort: a copy that keeps its source's UUID still mounts while the source is not mounted.
        ext4 mounts duplicates; btrfs gives a single-device duplicate a temporary fsid."""
        if await self._fs_type(node) != "xfs":
            return
        before = await self._fs_uuid(node)
        scratch = await asyncio.to_thread(tempfile.mkdtemp, prefix="copy-", dir=self._lock_dir)
        try:
            mounted = await self._runner.run(["mount", "-t", "xfs", "-o", "nouuid", "--", node, scratch], check=False)
            if mounted.returncode == 0:
                await self._runner.run(["umount", "--", scratch], timeout=60.0)
            await self._runner.run(["xfs_admin", "-U", "generate", "--", node], timeout=60.0, check=False)
        finally:
            await asyncio.to_thread(os.rmdir, scratch)
        if await self._fs_uuid(node) == before:
            log.warning("%s: the copied xfs keeps its source's UUID %s", node, before)

    async def _fs_type(self, node: str) -> str:
        done = await self._runner.run(["blkid", "-p", "-o", "value", "-s", "TYPE", "--", node], check=False)
        return done.stdout.strip()

    async def _fs_uuid(self, node: str) -> str:
        done = await self._runner.run(["blkid", "-p", "-o", "value", "-s", "UUID", "--", node], check=False)
        return done.stdout.strip()

    async def thaw_leftovers(self) -> list[str]:
        """Undo what a copy cut short by a crash left: thaw the filesystems it froze, and unmount and remove the
        private mount of a copy being given a new identity (which would keep its partition busy)."""
        thawed = await self._freezer.thaw_leftovers()
        for point in await asyncio.to_thread(_copy_mounts, self._lock_dir, self._mountinfo):
            await self._runner.run(["umount", "--", point], timeout=60.0, check=False)
            log.warning("unmounted %s, left by a copy that did not finish", point)
        await asyncio.to_thread(_remove_copy_dirs, self._lock_dir)
        return thawed

    async def wipe(self, node: str, *, pool: str | None = None) -> None:
        """Erase signatures and the first/last MiB of a partition (never #1, never a whole disk).

        With ``pool`` set, the parent disk must also be that pool's disk.
        """
        real = await asyncio.to_thread(os.path.realpath, node)
        info = await asyncio.to_thread(kernel_partition, self._sys_root, os.path.basename(real))
        if info is None:
            raise UnsafeOperation(f"{node} is not a partition")
        if info.number == 1:
            raise UnsafeOperation(f"{node} is partition #1 (the pool meta partition)")
        if pool is not None:
            _require_pool(info.disk_path, pool, await self._read(info.disk_path))
        # Under the disk's lock: sfdisk holds the whole disk open exclusively while it writes, which makes the
        # exclusive open of a partition fail for that moment.
        async with self._locked(info.disk_path):
            await self._ensure_idle(real)
            await self._wipe_unchecked(real)

    async def delete(self, disk_path: str, pool: str, name: str) -> bool:
        """Wipe and delete partition(s) named ``name``; False when there was none."""
        validate_name(name)
        disk = await asyncio.to_thread(os.path.realpath, disk_path)
        async with self._locked(disk):
            table = _require_pool(disk, pool, await self._read(disk), name)
            entries = [p for p in table.partitions if p.name == name and p.number != 1]
            for entry in entries:
                await self._remove(disk, table.sector_size, entry)
            return bool(entries)

    @contextlib.asynccontextmanager
    async def _locked(self, disk: str) -> AsyncIterator[None]:
        """In-process asyncio lock, then flock(LOCK_EX) on a lock file named by the disk's device
        number (for agents that see different /dev inodes) and on the whole-disk device itself
        (which makes udev skip it). Other disks proceed in parallel."""
        async with self._locks.setdefault(disk, asyncio.Lock()):
            fds = await _flock_in_thread(self._lock_dir, disk)
            try:
                yield
            finally:
                _close_all(fds)

    async def _read(self, disk: str) -> DiskTable | None:
        return await read_table(self._runner, disk)

    async def _append(
        self, disk: str, table: DiskTable, name: str, size: int, room_to_grow: bool = False
    ) -> PartitionEntry:
        extent = roomy_fit(table, size) if room_to_grow else best_fit(table, size)
        sector = table.sector_size
        start = extent.start_bytes // sector
        script = f'start={start}, size={size // sector}, type={LINUX_FS_TYPE}, name="{name}"\n'
        await self._runner.run([*_SFDISK_WRITE, "--append", "--", disk], input=script.encode())
        fresh = await self._read(disk)
        entry = named(fresh, name) if fresh else None
        if entry is None or entry.start != start:
            raise PartitionError(f"{disk}: partition {name!r} not found at sector {start} after writing it")
        return entry

    async def _activate(self, disk: str, sector: int, entry: PartitionEntry) -> Partition:
        """Make the kernel's view of one partition match the table (BLKPG via partx, never BLKRRPART)."""
        node = partition_node(disk, entry.number)
        part = Partition(disk, entry.number, entry.name, entry.uuid, node, entry.size * sector, entry.start * sector)
        want = (part.start // 512, part.size // 512)
        seen = await asyncio.to_thread(kernel_geometry, self._sys_root, os.path.basename(node))
        if seen == want and await asyncio.to_thread(os.path.exists, node):
            return part
        number = str(entry.number)
        if seen is not None and seen[0] == want[0] and await asyncio.to_thread(os.path.exists, node):
            # Only the size differs (a grown partition): resize the kernel's partition in place with
            # BLKPG_RESIZE_PARTITION. Never delete and add it: a re-added partition may get another device number,
            # which breaks a raw block volume bind-mounted from the old node (partx --update does that when the
            # partition is not held open). resizepart takes no "--"; the disk path is absolute.
            await self._runner.run(["resizepart", disk, number, str(want[1])])
            await self._wait_for(node, want, "after partx --update")
            return part
        if seen is not None and seen != want:
            await self._runner.run(["partx", "--delete", "--nr", number, "--", disk])
        added = await self._runner.run(["partx", "--add", "--nr", number, "--", disk], check=False)
        if added.returncode != 0 and not await asyncio.to_thread(self._node_ready, node, want):
            # BLKPG is synchronous: a failed add that left nothing behind will not fix itself.
            raise PartitionError(f"cannot add {node} to the kernel: {added.stderr.strip()}")
        await self._wait_for(node, want, added.stderr)
        return part

    async def _wait_for(self, node: str, want: tuple[int, int], detail: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settle_timeout
        while True:
            if await asyncio.to_thread(self._node_ready, node, want):
                return
            if loop.time() >= deadline:
                raise PartitionError(f"{node} did not appear with the expected geometry: {detail.strip()}")
            await asyncio.sleep(0.01)

    def _node_ready(self, node: str, want: tuple[int, int]) -> bool:
        geometry = kernel_geometry(self._sys_root, os.path.basename(node))
        return geometry == want and os.path.exists(node)

    async def _remove(self, disk: str, sector: int, entry: PartitionEntry) -> None:
        part = await self._activate(disk, sector, entry)
        await self._ensure_idle(part.node)
        await self._wipe_unchecked(part.node)
        await self._runner.run(["partx", "--delete", "--nr", str(entry.number), "--", disk])
        await self._runner.run([*_SFDISK_WRITE, "--delete", "--", disk, str(entry.number)])

    async def _ensure_idle(self, node: str) -> None:
        users = await asyncio.to_thread(device_users, node, self._sys_root, self._mountinfo)
        if users:
            raise PartitionBusy(f"{node} is in use: {', '.join(users)}")

    async def _wipe_unchecked(self, node: str) -> None:
        await self._runner.run(["wipefs", "--all", "--force", "--quiet", "--", node])
        try:
            await asyncio.to_thread(zero_ends, node, MIB)
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise PartitionBusy(f"{node} is in use (exclusive open failed)") from exc
            raise


class _SharedRead:
    """Concurrent callers of ``fresh`` share one run of ``read``, one that began after each of them asked: what it
    returns (or raises) is as fresh as a read of its own."""

    def __init__(self, read: Callable[[], Awaitable[DiskTable | None]]) -> None:
        self._read = read
        self._lock = asyncio.Lock()
        self._started = 0
        self._completed = 0
        self._result: DiskTable | None = None
        self._error: Exception | None = None

    async def fresh(self) -> DiskTable | None:
        want = self._started + 1
        async with self._lock:
            if self._completed < want:
                self._started += 1
                ticket = self._started
                try:
                    self._result, self._error = await self._read(), None
                except Exception as e:
                    self._result, self._error = None, e
                self._completed = ticket
            if self._error is not None:
                raise self._error
            return self._result


def _busy(error: Exception) -> bool:
    return isinstance(error, OSError) and error.errno == errno.EBUSY


def _require_pool(disk: str, pool: str, table: DiskTable | None, volume: str = "") -> DiskTable:
    """The table, if it proves ``disk`` belongs to ``pool``; a volume may not share the pool's name."""
    if table is None or not pool or table.pool() != pool:
        meta = table.by_number(1) if table else None
        found = "no partition table" if table is None else f"{table.label}, #1={meta.name if meta else None!r}"
        raise NotAPoolDisk(f"{disk} is not a disk of pool {pool!r} ({found})")
    if volume == pool:
        raise UnsafeOperation(f"{volume!r} names the meta partition #1 of {disk}")
    return table


def zero_ends(node: str, length: int) -> None:
    """Zero the first and last ``length`` bytes of a device opened exclusively, then fsync."""
    fd = os.open(node, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        chunk = min(length, size)
        for offset in sorted({0, size - chunk}):
            _pwrite_all(fd, bytes(chunk), offset)
        os.fsync(fd)
    finally:
        os.close(fd)


# BLKZEROOUT (linux/fs.h, _IO(0x12, 127)): zero a byte range of a block device, by the device's own write-zeroes
# command when it has one (a loop device punches the range in its backing file), else by the kernel writing zero
# pages; the range is dropped from the page cache. Argument: two u64, start and length (512-byte aligned).
_BLKZEROOUT = 0x127F


def zero_ends_all(nodes: Sequence[str], length: int) -> dict[str, OSError]:
    """``zero_ends`` for several partitions of one disk, with one flush of the disk's write cache instead of one per
    partition: each is opened exclusively and its ends zeroed by BLKZEROOUT (written as ``zero_ends`` does where the
    device refuses it), then one fsync makes them all durable. The failures by node (EBUSY: in use)."""
    failed: dict[str, OSError] = {}
    zeroed: list[str] = []
    for node in nodes:
        try:
            fd = os.open(node, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        except OSError as e:
            failed[node] = e
            continue
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            chunk = min(length, size)
            for offset in sorted({0, size - chunk}):
                try:
                    fcntl.ioctl(fd, _BLKZEROOUT, struct.pack("QQ", offset, chunk))
                except OSError as e:
                    if e.errno not in (errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    _pwrite_all(fd, bytes(chunk), offset)
                    os.fsync(fd)
            zeroed.append(node)
        except OSError as e:
            failed[node] = e
        finally:
            os.close(fd)
    if zeroed:
        fd = os.open(zeroed[0], os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)  # a flush of the whole disk's write cache
        except OSError as e:
            failed.update({n: e for n in zeroed})
        finally:
            os.close(fd)
    return failed


def zero_tail(node: str, length: int) -> None:
    """Zero the last ``length`` bytes of a device opened exclusively, then fsync."""
    fd = os.open(node, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        chunk = min(length, size)
        _pwrite_all(fd, bytes(chunk), size - chunk)
        os.fsync(fd)
    finally:
        os.close(fd)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


async def _flock_in_thread(lock_dir: str, disk: str) -> list[int]:
    """Take both flocks in a worker thread; if we are cancelled meanwhile, release them once taken."""
    task = asyncio.ensure_future(asyncio.to_thread(_acquire_flocks, lock_dir, disk))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_release_abandoned)
        raise


def _release_abandoned(task: asyncio.Future[list[int]]) -> None:
    if not task.cancelled() and task.exception() is None:
        _close_all(task.result())


def _acquire_flocks(lock_dir: str, disk: str) -> list[int]:
    fds: list[int] = []
    try:
        fds.append(os.open(disk, os.O_RDONLY | os.O_CLOEXEC))
        rdev = os.fstat(fds[0]).st_rdev
        os.makedirs(lock_dir, mode=0o755, exist_ok=True)
        lock_file = os.path.join(lock_dir, f"{os.major(rdev)}-{os.minor(rdev)}.lock")
        fds.insert(0, os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
        for fd in fds:
            fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        _close_all(fds)
        raise
    return fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _copy_mounts(lock_dir: str, mountinfo: str) -> list[str]:
    """Mount points of copies being given a new identity (`copy-*` under the lock directory), newest first."""
    prefix = os.path.join(os.path.realpath(lock_dir), "copy-")
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        mounts = parse_mountinfo(f.read())
    return [m.mount_point for m in reversed(mounts) if m.mount_point.startswith(prefix)]


def _remove_copy_dirs(lock_dir: str) -> None:
    if not os.path.isdir(lock_dir):
        return
    for name in os.listdir(lock_dir):
        if name.startswith("copy-"):
            with contextlib.suppress(OSError):
                os.rmdir(os.path.join(lock_dir, name))
