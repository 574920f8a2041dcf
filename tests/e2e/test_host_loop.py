"""The host layer against real loop disks: partitioning, wiping, mounting, and the safety invariant.

Needs root, losetup, parted, sfdisk, partx, wipefs, blkid and mkfs.ext4. Each test gets its own
loop disks (detached in teardown even on failure), so it never sees another test's devices.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from csidriver.host import (
    DiskInventory,
    FilesystemExists,
    Filesystems,
    InsufficientCapacity,
    Mounter,
    NotAPoolDisk,
    PartitionBusy,
    PartitionManager,
    Runner,
    UnsafeOperation,
)
from csidriver.host.parsers import parse_mountinfo, parse_sfdisk_json

MiB = 1 << 20
TOOLS = ("losetup", "parted", "sfdisk", "partx", "wipefs", "blkid", "mkfs.ext4", "mount", "umount")
_missing = [t for t in TOOLS if shutil.which(t) is None]

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create loop devices"),
    pytest.mark.skipif(bool(_missing), reason=f"missing tools: {', '.join(_missing)}"),
]


def sh(*argv: str, stdin: bytes | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, check=True)
    return done.stdout.decode()


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(4 * MiB), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Disks:
    pool: str  # GPT, partition #1 "ssd" made with parted (msftdata flag, as on some clouds)
    decoy: str  # GPT, partition #1 "nvme-ssd2"
    foreign: str  # ext4 directly on the disk, no partition table
    tmp: Path

    @property
    def include(self) -> str:
        names = "|".join(os.path.basename(d) for d in (self.pool, self.decoy, self.foreign))
        return f"^({names})$"


def _attach(image: Path, size: int, devices: list[str]) -> str:
    with open(image, "wb") as handle:
        handle.truncate(size)
    device = sh("losetup", "--find", "--show", "--partscan", str(image)).strip()
    devices.append(device)
    return device


def _cleanup(tmp: Path, devices: list[str]) -> None:
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        mounts = parse_mountinfo(handle.read())
    for mount in reversed(mounts):
        if mount.mount_point.startswith(str(tmp)):
            subprocess.run(["umount", "--", mount.mount_point], check=False)
    for device in devices:
        subprocess.run(["losetup", "--detach", device], check=False)


@pytest.fixture
def disks(tmp_path: Path) -> Iterator[Disks]:
    devices: list[str] = []
    try:
        pool = _attach(tmp_path / "pool.img", 512 * MiB, devices)
        sh("parted", "-s", pool, "mklabel", "gpt", "mkpart", "ssd", "1MiB", "10MiB", "set", "1", "msftdata", "on")
        decoy = _attach(tmp_path / "decoy.img", 128 * MiB, devices)
        sh("parted", "-s", decoy, "mklabel", "gpt", "mkpart", "nvme-ssd2", "1MiB", "10MiB")
        foreign = _attach(tmp_path / "foreign.img", 64 * MiB, devices)
        sh("mkfs.ext4", "-q", "-F", foreign)
        before = sha256(foreign)
        yield Disks(pool, decoy, foreign, tmp_path)
        assert sha256(foreign) == before, "the foreign disk was modified"
    finally:
        _cleanup(tmp_path, devices)


def table_of(disk: str) -> list[tuple[int, int, int, str]]:
    """(number, start MiB, size MiB, name) of every partition, from a fresh sfdisk read."""
    table = parse_sfdisk_json(sh("sfdisk", "--json", disk))
    return [(p.number, p.start * 512 // MiB, p.size * 512 // MiB, p.name) for p in table.partitions]


def exists(path: str) -> bool:
    return os.path.exists(path)


def kernel_size(node: str) -> int:
    """The partition's size in bytes as the kernel sees it."""
    with open(f"/sys/class/block/{os.path.basename(node)}/size") as handle:
        return int(handle.read()) * 512


def ends_are_zero(node: str, size: int) -> bool:
    with open(node, "rb") as handle:
        head = handle.read(MiB)
        handle.seek(size - MiB)
        return head == bytes(MiB) and handle.read(MiB) == bytes(MiB)


def manager(disks: Disks) -> PartitionManager:
    return PartitionManager(Runner(), str(disks.tmp / "locks"))


async def test_scan_finds_only_exact_pool_disks(disks: Disks) -> None:
    inventory = DiskInventory(Runner(), disks.include, None)
    result = await inventory.scan_detailed()
    assert result.failures == ()
    by_path = {d.path: d for d in result.disks}
    assert set(by_path) == {disks.pool, disks.decoy}
    assert [d.path for d in result.disks if d.pool == "ssd"] == [disks.pool]
    assert by_path[disks.decoy].pool == "nvme-ssd2"
    pool = by_path[disks.pool]
    assert (pool.size, pool.free, pool.largest_extent, pool.free_entries) == (512 * MiB, 501 * MiB, 501 * MiB, 127)
    assert pool.guid == pool.table.disk_guid and len(pool.guid) == 36
    assert await inventory.read(disks.pool) == pool
    assert await inventory.read(disks.foreign) is None
    ignoring = DiskInventory(Runner(), disks.include, os.path.basename(disks.decoy) + "$")
    assert [d.path for d in await ignoring.scan()] == [disks.pool]


async def test_create_find_delete_cycle(disks: Disks) -> None:
    parts = manager(disks)
    inventory = DiskInventory(Runner(), disks.include, None)
    created = await parts.create(disks.pool, "ssd", "vol-a", 20 * MiB - 5)
    assert (created.number, created.start, created.size, created.name) == (2, 10 * MiB, 20 * MiB, "vol-a")
    assert exists(created.node) and created.disk_path == disks.pool
    again = await parts.create(disks.pool, "ssd", "vol-a", 20 * MiB)
    assert again == created
    pool_disks = await inventory.scan()
    found = await parts.find(pool_disks, "vol-a")
    assert found is not None and found[0].path == disks.pool and found[1].uuid == created.uuid
    assert await parts.find(pool_disks, "ssd") is None  # partition #1 is never a volume
    assert await parts.delete(disks.pool, "ssd", "vol-a") is True
    assert not exists(created.node)
    assert await parts.find(pool_disks, "vol-a") is None
    assert await parts.delete(disks.pool, "ssd", "vol-a") is False
    assert table_of(disks.pool) == [(1, 1, 9, "ssd")]


async def test_refuses_disks_of_other_pools(disks: Disks) -> None:
    parts = manager(disks)
    for disk in (disks.decoy, disks.foreign):
        with pytest.raises(NotAPoolDisk):
            await parts.create(disk, "ssd", "vol-a", MiB)
        with pytest.raises(NotAPoolDisk):
            await parts.delete(disk, "ssd", "vol-a")
    with pytest.raises(NotAPoolDisk):
        await parts.create(disks.pool, "nvme-ssd2", "vol-a", MiB)
    for node in (disks.foreign, disks.pool, disks.pool + "p1"):
        with pytest.raises(UnsafeOperation):
            await parts.wipe(node)
    assert table_of(disks.decoy) == [(1, 1, 9, "nvme-ssd2")]


async def test_best_fit_placement(disks: Disks) -> None:
    parts = manager(disks)
    await parts.create(disks.pool, "ssd", "a", 10 * MiB)
    await parts.create(disks.pool, "ssd", "b", 30 * MiB)
    await parts.create(disks.pool, "ssd", "c", 10 * MiB)
    assert await parts.delete(disks.pool, "ssd", "b")
    d = await parts.create(disks.pool, "ssd", "d", 25 * MiB)  # the 30 MiB hole beats the big tail
    assert d.start == 20 * MiB
    e = await parts.create(disks.pool, "ssd", "e", 5 * MiB)  # exactly the 5 MiB left in that hole
    assert e.start == 45 * MiB
    f = await parts.create(disks.pool, "ssd", "f", 6 * MiB)
    assert f.start == 60 * MiB


async def test_insufficient_capacity_reports_largest_extent(disks: Disks) -> None:
    parts = manager(disks)
    with pytest.raises(InsufficientCapacity) as caught:
        await parts.create(disks.pool, "ssd", "huge", 502 * MiB)
    assert caught.value.largest_extent == 501 * MiB
    await parts.create(disks.pool, "ssd", "big", 400 * MiB)
    with pytest.raises(InsufficientCapacity) as caught:
        await parts.create(disks.pool, "ssd", "more", 200 * MiB)
    assert caught.value.largest_extent == 101 * MiB
    assert [p[3] for p in table_of(disks.pool)] == ["ssd", "big"]


async def test_concurrent_creates_and_deletes(disks: Disks) -> None:
    """Two managers (as two agents would be) race on one disk: only the flock serialises them."""
    managers = [manager(disks), manager(disks)]
    names = [f"vol-{i:02d}" for i in range(20)]
    async with asyncio.TaskGroup() as group:  # a failure cancels and awaits the siblings
        tasks = [
            group.create_task(managers[i % 2].create(disks.pool, "ssd", n, (i % 3 + 1) * MiB))
            for i, n in enumerate(names)
        ]
    created = [t.result() for t in tasks]
    assert sorted(p.name for p in created) == names
    assert len({p.number for p in created}) == 20 and len({p.node for p in created}) == 20
    spans = sorted((p.start, p.start + p.size) for p in created)
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    assert spans[0][0] >= 10 * MiB
    assert all(kernel_size(p.node) == p.size for p in created)
    assert len(table_of(disks.pool)) == 21
    async with asyncio.TaskGroup() as group:
        removals = [group.create_task(managers[i % 2].delete(disks.pool, "ssd", n)) for i, n in enumerate(names)]
    assert all(t.result() for t in removals)
    assert table_of(disks.pool) == [(1, 1, 9, "ssd")]


async def test_stale_kernel_partition_is_replaced(disks: Disks) -> None:
    parts = manager(disks)
    old = await parts.create(disks.pool, "ssd", "old", 10 * MiB)
    sh("sfdisk", "--delete", "--no-reread", "--no-tell-kernel", disks.pool, str(old.number))
    new = await parts.create(disks.pool, "ssd", "new", 20 * MiB)
    assert (new.number, new.start) == (old.number, old.start)
    assert kernel_size(new.node) == 20 * MiB


async def test_wipe_clears_ext4(disks: Disks) -> None:
    parts, fs = manager(disks), Filesystems(Runner())
    part = await parts.create(disks.pool, "ssd", "wipe-me", 16 * MiB)
    assert await fs.probe(part.node) == {}
    await fs.make_filesystem(part.node, "ext4")
    assert (await fs.probe(part.node))["TYPE"] == "ext4"
    with pytest.raises(FilesystemExists):
        await fs.make_filesystem(part.node, "ext4")
    with pytest.raises(NotAPoolDisk):
        await parts.wipe(part.node, pool="nvme-ssd2")
    await parts.wipe(part.node, pool="ssd")
    assert await fs.probe(part.node) == {}
    assert ends_are_zero(part.node, part.size)
    assert await fs.block_size(part.node) == 16 * MiB


async def test_delete_refuses_mounted_partition(disks: Disks) -> None:
    parts, fs, mounter = manager(disks), Filesystems(Runner()), Mounter(Runner())
    part = await parts.create(disks.pool, "ssd", "busy", 16 * MiB)
    await fs.make_filesystem(part.node, "ext4")
    target = disks.tmp / "mnt dir"
    target.mkdir()
    await mounter.mount(part.node, str(target), "ext4", ["noatime"])
    info = await mounter.mount_at(str(target))
    assert info is not None and info.fstype == "ext4" and "noatime" in info.options
    stats = await fs.filesystem_stats(str(target))
    assert 0 < stats.available <= stats.total <= 16 * MiB and stats.inodes_free > 0
    with pytest.raises(PartitionBusy):
        await parts.delete(disks.pool, "ssd", "busy")
    with pytest.raises(PartitionBusy):
        await parts.wipe(part.node)
    await mounter.unmount(str(target))
    await mounter.unmount(str(target))  # not mounted any more: fine
    assert await mounter.mount_at(str(target)) is None
    assert (await fs.probe(part.node))["TYPE"] == "ext4"  # the refusals changed nothing
    assert await parts.delete(disks.pool, "ssd", "busy")


async def test_raw_block_bind_mount_blocks_delete(disks: Disks) -> None:
    parts, mounter = manager(disks), Mounter(Runner())
    part = await parts.create(disks.pool, "ssd", "raw", 4 * MiB)
    target = disks.tmp / "block-file"
    target.touch()
    await mounter.bind_mount(part.node, str(target), read_only=True)
    info = await mounter.mount_at(str(target))
    assert info is not None and info.read_only and info.root == "/" + os.path.basename(part.node)
    with pytest.raises(PartitionBusy, match="bound at"):
        await parts.delete(disks.pool, "ssd", "raw")
    await mounter.unmount(str(target))
    assert await parts.delete(disks.pool, "ssd", "raw")
