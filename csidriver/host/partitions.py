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
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from csidriver.api.naming import GPT_NAME

from .clone import Freezer, SourceBusy, copy_device, source_use
from .disks import PoolDisk, device_users, kernel_geometry, kernel_partition, read_table
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

    async def find(self, disks: Sequence[PoolDisk], name: str) -> tuple[PoolDisk, PartitionEntry] | None:
        """Look a partition up by exact GPT name on fresh reads of the given pool disks."""
        validate_name(name)
        for disk in disks:
            table = await self._read(disk.path)
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
