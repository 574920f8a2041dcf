"""The Host that publishing needs, assembled from the host layer's pieces."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from csidriver.host import DiskInventory, Filesystems, Mounter, MountInfo, targets
from csidriver.host.health import read_problem
from csidriver.host.partitions import named, validate_name
from csidriver.services.publish import VolumeStats


class LocalHost:
    def __init__(
        self,
        inventory: DiskInventory,
        mounter: Mounter,
        filesystems: Filesystems,
    ) -> None:
        self._inventory = inventory
        self._mounter = mounter
        self._fs = filesystems

    async def locate(self, pool: str | None, partition: str) -> str | None:
        """The device node of the partition named `partition` on this node's pool disks (one fresh scan)."""
        validate_name(partition)
        entries = [named(d.table, partition) for d in await self._inventory.scan() if pool is None or d.pool == pool]
        entry = next((e for e in entries if e is not None), None)
        if entry is None:
            return None
        node = entry.node
        return node if await asyncio.to_thread(targets.exists, node) else None

    async def mounts(self) -> list[MountInfo]:
        return await self._mounter.mounts()

    async def probe(self, device: str) -> Mapping[str, str]:
        return await self._fs.probe(device)

    async def make_filesystem(self, device: str, fstype: str) -> None:
        await self._fs.make_filesystem(device, fstype)

    async def mount(self, source: str, target: str, fstype: str, options: list[str]) -> None:
        await self._mounter.mount(source, target, fstype, options)

    async def bind_mount(self, source: str, target: str, read_only: bool) -> None:
        await self._mounter.bind_mount(source, target, read_only)

    async def unmount(self, target: str) -> None:
        await self._mounter.unmount(target)

    async def stats(self, path: str) -> VolumeStats:
        st = await self._fs.filesystem_stats(path)
        return VolumeStats(
            block=False,
            total=st.total,
            used=st.used,
            available=st.available,
            inodes=st.inodes,
            inodes_used=st.inodes_used,
            inodes_free=st.inodes_free,
        )

    async def read_problem(self, device: str) -> str | None:
        """None when the first 4 KiB of the device read back (bypassing the page cache), else the error."""
        return await asyncio.to_thread(read_problem, device)

    async def block_size(self, device: str) -> int:
        return await self._fs.block_size(device)

    async def grow_filesystem(self, device: str, mount_point: str, fstype: str) -> None:
        await self._fs.grow_filesystem(device, mount_point, fstype)

    async def make_target(self, path: str, directory: bool) -> bool:
        return await asyncio.to_thread(targets.make, path, directory)

    async def target_removable(self, path: str) -> bool:
        return await asyncio.to_thread(targets.removable, path)

    async def remove_target(self, path: str) -> None:
        await asyncio.to_thread(targets.remove, path)

    async def device_number(self, device: str) -> str:
        return await asyncio.to_thread(targets.device_number, device)

    async def exists(self, path: str) -> bool:
        return await asyncio.to_thread(targets.exists, path)

    async def is_dir(self, path: str) -> bool:
        return await asyncio.to_thread(targets.is_dir, path)

    async def link_problem(self, path: str) -> str | None:
        return await asyncio.to_thread(targets.link_problem, path)
