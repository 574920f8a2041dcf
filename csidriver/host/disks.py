"""Discovery of pool disks. Read-only: nothing in this module ever writes to a disk.

A pool disk is a GPT disk whose partition #1 carries a GPT name equal to a pool name, exactly
(whatever its type GUID, flags or attributes, e.g. parted's ``msftdata``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pyudev

from csidriver.api.naming import GPT_NAME

from .parsers import DiskTable, free_extents, parse_mountinfo, parse_sfdisk_json
from .runner import CommandError, Runner

log = logging.getLogger(__name__)

SECTOR = 512  # /sys/class/block/*/size is always in 512-byte units
_NO_TABLE = "does not contain a recognized partition table"
_VIRTUAL_PREFIXES = ("dm-", "ram", "zram")
_UDEV_IDS = ("ID_SERIAL_SHORT", "ID_WWN")


@dataclass(frozen=True)
class PoolDisk:
    path: str
    pool: str
    guid: str
    size: int
    free: int
    largest_extent: int
    free_entries: int
    table: DiskTable
    serial: str = ""
    wwn: str = ""


@dataclass(frozen=True)
class DiskFailure:
    """A candidate disk whose partition table could not be read (I/O error, timeout...)."""

    path: str
    message: str


@dataclass(frozen=True)
class ScanResult:
    disks: tuple[PoolDisk, ...]
    failures: tuple[DiskFailure, ...]


@dataclass(frozen=True)
class Candidate:
    """A whole disk seen in sysfs that passed the filters."""

    name: str
    path: str
    size: int
    serial: str = ""
    wwn: str = ""


def table_to_pool_disk(candidate: Candidate, table: DiskTable) -> PoolDisk | None:
    """Classify a table: a pool disk only if GPT and partition #1 has a valid pool name.

    Pool names use the same alphabet as volume names ([A-Za-z0-9._-], at most 36), so firmware
    partitions such as "EFI System Partition" never make a disk look like a pool.
    """
    pool = table.pool()
    if pool is None or not GPT_NAME.fullmatch(pool):
        return None
    extents = free_extents(table)
    return PoolDisk(
        path=candidate.path,
        pool=pool,
        guid=table.disk_guid,
        size=candidate.size,
        free=sum(e.size_bytes for e in extents),
        largest_extent=max((e.size_bytes for e in extents), default=0),
        free_entries=max(table.table_length - len(table.partitions), 0),
        table=table,
        serial=candidate.serial,
        wwn=candidate.wwn,
    )


class DiskInventory:
    """Finds pool disks. Filters use ``re.search`` (unanchored: anchor them yourself with ^...$)
    against both the kernel name (``loop3``) and the device path (``/dev/loop3``): a disk is kept
    when ``include_regex`` is unset or matches either, and dropped when ``ignore_regex`` matches either.
    """

    def __init__(
        self,
        runner: Runner,
        include_regex: str | None = None,
        ignore_regex: str | None = None,
        *,
        sys_root: str = "/sys",
    ) -> None:
        self._runner = runner
        self._include = re.compile(include_regex) if include_regex else None
        self._ignore = re.compile(ignore_regex) if ignore_regex else None
        self._sys_root = sys_root

    async def scan(self) -> list[PoolDisk]:
        return list((await self.scan_detailed()).disks)

    async def scan_detailed(self) -> ScanResult:
        """Like ``scan`` but also reports disks whose table could not be read, so they do not vanish."""
        candidates = await asyncio.to_thread(self._candidates)
        results = await asyncio.gather(*(self._classify(c) for c in candidates))
        disks = tuple(r for r in results if isinstance(r, PoolDisk))
        failures = tuple(r for r in results if isinstance(r, DiskFailure))
        return ScanResult(disks, failures)

    async def read(self, path: str) -> PoolDisk | None:
        """Read one disk by path; None when it is not a pool disk. Command failures propagate."""
        real = await asyncio.to_thread(os.path.realpath, path)
        name = os.path.basename(real)
        candidate = await asyncio.to_thread(self._candidate_from_sysfs, name, real)
        table = await self._read_table(real)
        return table_to_pool_disk(candidate, table) if table else None

    async def _classify(self, candidate: Candidate) -> PoolDisk | DiskFailure | None:
        try:
            table = await self._read_table(candidate.path)
        except (CommandError, ValueError) as exc:
            log.warning("cannot read partition table of %s: %s", candidate.path, exc)
            return DiskFailure(candidate.path, str(exc))
        return table_to_pool_disk(candidate, table) if table else None

    async def _read_table(self, path: str) -> DiskTable | None:
        return await read_table(self._runner, path)

    def block_names(self) -> frozenset[str]:
        """Kernel names of every block device and partition (one directory read): changes when a disk appears or
        goes, or gains a partition table, so a caller can rescan only then."""
        return frozenset(_list_dir(os.path.join(self._sys_root, "class", "block")))

    def wanted(self, name: str, path: str) -> bool:
        """Apply the include/ignore filters and the default exclusion of virtual devices."""
        included = self._include is not None and _matches(self._include, name, path)
        if self._include is not None and not included:
            return False
        if self._ignore is not None and _matches(self._ignore, name, path):
            return False
        return included or not name.startswith(_VIRTUAL_PREFIXES)

    def _candidates(self) -> list[Candidate]:
        context = pyudev.Context()
        found = []
        for device in context.list_devices(subsystem="block", DEVTYPE="disk"):
            candidate = self._candidate_from_udev(device)
            if candidate is not None:
                found.append(candidate)
        return found

    def _candidate_from_udev(self, device: pyudev.Device) -> Candidate | None:
        name = str(device.sys_name)
        path = str(device.device_node or f"/dev/{name}")
        if not self.wanted(name, path) or not _usable(device.sys_path, name):
            return None
        props = {key: str(device.properties.get(key, "")) for key in _UDEV_IDS}
        return self._candidate_from_sysfs(name, path, props)

    def _candidate_from_sysfs(self, name: str, path: str, props: Mapping[str, str] | None = None) -> Candidate:
        """Size, serial and WWN from sysfs; udev's IDs win when a udev database exists."""
        base = os.path.join(self._sys_root, "class", "block", name)
        props = props or {}
        serial = props.get("ID_SERIAL_SHORT") or _first_attr(base, "serial", "device/serial")
        wwn = props.get("ID_WWN") or _first_attr(base, "wwid", "device/wwid")
        size = int(_read_attr(base, "size") or 0) * SECTOR
        return Candidate(name=name, path=path, size=size, serial=serial, wwn=wwn)


def _matches(pattern: re.Pattern[str], name: str, path: str) -> bool:
    return bool(pattern.search(name) or pattern.search(path))


def _usable(sys_path: str, name: str) -> bool:
    """Skip empty, read-only and removable disks, and loop devices with no backing file."""
    if int(_read_attr(sys_path, "size") or 0) == 0:
        return False
    if _read_attr(sys_path, "ro") == "1" or _read_attr(sys_path, "removable") == "1":
        return False
    return not (name.startswith("loop") and not _read_attr(sys_path, "loop/backing_file"))


def _read_attr(base: str, attr: str) -> str:
    try:
        with open(os.path.join(base, attr), encoding="utf-8", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _first_attr(base: str, *attrs: str) -> str:
    return next((v for v in (_read_attr(base, a) for a in attrs) if v), "")


@dataclass(frozen=True)
class KernelPartition:
    """What sysfs says about a partition the kernel knows."""

    name: str
    number: int
    dev: str
    disk_path: str


def kernel_partition(sys_root: str, name: str) -> KernelPartition | None:
    """The partition ``name`` (e.g. ``loop0p2``) as sysfs knows it; None if it is not a partition."""
    base = os.path.join(sys_root, "class", "block", name)
    number = _read_attr(base, "partition")
    if not number.isdigit():
        return None
    parent = os.path.basename(os.path.dirname(os.path.realpath(base)))
    return KernelPartition(name, int(number), _read_attr(base, "dev"), f"/dev/{parent}")


def kernel_geometry(sys_root: str, name: str) -> tuple[int, int] | None:
    """(start, size) of a partition in 512-byte units, as the kernel currently has it."""
    base = os.path.join(sys_root, "class", "block", name)
    start, size = _read_attr(base, "start"), _read_attr(base, "size")
    return (int(start), int(size)) if start.isdigit() and size.isdigit() else None


def device_users(node: str, sys_root: str = "/sys", mountinfo_path: str = "/proc/self/mountinfo") -> list[str]:
    """Why a block device is busy: filesystem mounts, bind mounts of its node, holders, loop devices."""
    return devices_users([node], sys_root, mountinfo_path)[node]


def devices_users(
    nodes: Sequence[str], sys_root: str = "/sys", mountinfo_path: str = "/proc/self/mountinfo"
) -> dict[str, list[str]]:
    """``device_users`` of several block devices, reading the mount table and the loop devices' backing files once."""
    with open(mountinfo_path, encoding="utf-8", errors="surrogateescape") as handle:
        mounts = parse_mountinfo(handle.read())
    backs = _loop_backings(sys_root) if nodes else {}
    out: dict[str, list[str]] = {}
    for node in nodes:
        name = os.path.basename(node)
        base = os.path.join(sys_root, "class", "block", name)
        dev = _read_attr(base, "dev")
        users = [f"mounted at {m.mount_point}" for m in mounts if (dev and m.major_minor == dev) or m.source == node]
        users += [f"bound at {m.mount_point}" for m in mounts if m.fstype == "devtmpfs" and m.root == f"/{name}"]
        users += [f"held by {h}" for h in _list_dir(os.path.join(base, "holders"))]
        out[node] = users + [f"backs {loop}" for loop in backs.get(dev, [])] if dev else users
    return out


def _loop_backings(sys_root: str) -> dict[str, list[str]]:
    """Block devices that back a loop device ("major:minor" -> the loop devices they back)."""
    found: dict[str, list[str]] = {}
    for loop in _list_dir(os.path.join(sys_root, "class", "block")):
        backing = _read_attr(os.path.join(sys_root, "class", "block", loop), "loop/backing_file")
        try:
            info = os.stat(backing) if backing else None
        except OSError:
            continue
        if info is not None and stat.S_ISBLK(info.st_mode):
            found.setdefault(f"{os.major(info.st_rdev)}:{os.minor(info.st_rdev)}", []).append(loop)
    return found


def _list_dir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def partition_of(name: str, disk: str) -> bool:
    """Whether kernel name `name` is a partition of disk `disk` by the kernel's naming rule: the disk's name, then
    the number, with a "p" between when the disk's name ends in a digit (sda1, nvme0n1p1, loop20p1)."""
    if not disk or not name.startswith(disk) or name == disk:
        return False
    rest = name[len(disk) :]
    if disk[-1].isdigit():
        return rest.startswith("p") and rest[1:].isdigit()
    return rest.isdigit()


def sys_identity(name: str) -> tuple[str, str] | None:
    """What sysfs says of a block device without running a command: (diskseq, size in sectors), or None when it
    is gone. diskseq (Linux 5.15+) changes whenever other media appear under the same name (a disk swapped for
    another at the same kernel name); the size is the fallback on older kernels."""
    base = f"/sys/class/block/{name}"
    try:
        with open(f"{base}/size") as f:
            size = f.read().strip()
    except OSError:
        return None
    try:
        with open(f"{base}/diskseq") as f:
            seq = f.read().strip()
    except OSError:
        seq = ""
    return seq, size


async def read_table(runner: Runner, disk: str) -> DiskTable | None:
    """A disk's partition table as sfdisk reads it; None when it has none."""
    done = await runner.run(["sfdisk", "--json", "--", disk], timeout=30.0, check=False)
    if done.returncode == 0:
        return parse_sfdisk_json(done.stdout)
    if _NO_TABLE in done.stderr:
        return None
    raise CommandError(done.argv, done.returncode, done.stderr)
