"""The Host that publishing needs, assembled from the host layer's pieces."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping

from csidriver.host import DiskInventory, Filesystems, Mounter, MountInfo, PartitionManager
from csidriver.services.publish import VolumeStats


class LocalHost:
    def __init__(
        self,
        inventory: DiskInventory,
        partitions: PartitionManager,
        mounter: Mounter,
        filesystems: Filesystems,
    ) -> None:
        self._inventory = inventory
        self._parts = partitions
        self._mounter = mounter
        self._fs = filesystems

    async def locate(self, pool: str | None, partition: str) -> str | None:
        """The device node of the partition named `partition` on this node's pool disks (fresh read)."""
        disks = [d for d in await self._inventory.scan() if pool is None or d.pool == pool]
        found = await self._parts.find(disks, partition)
        if found is None:
            return None
        node = found[1].node
        return node if await asyncio.to_thread(os.path.exists, node) else None

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

    async def block_size(self, device: str) -> int:
        return await self._fs.block_size(device)
