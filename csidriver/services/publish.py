"""NodePublishVolume / NodeUnpublishVolume / NodeGetVolumeStats on local partitions.

Everything here reads the disks and the mount table of this host; nothing needs the API server, so existing
volumes can be published and unpublished while it is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.host.parsers import MountInfo
from csidriver.host.targets import NoParent, NotABlockDevice, NotEmpty, WrongKind
from csidriver.services.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from csidriver.services.mountflags import FORCED
from csidriver.services.requests import DEFAULT_FS, AccessMode, Capability, capability_problem


@dataclass(frozen=True)
class LocatedVolume:
    device: str  # partition device node
    major_minor: str


@dataclass(frozen=True)
class VolumeStats:
    block: bool
    total: int
    used: int = 0
    available: int = 0
    inodes: int = 0
    inodes_used: int = 0
    inodes_free: int = 0
    abnormal: str = ""  # why the volume is not healthy (VolumeCondition), empty when it is


class Host(Protocol):
    """What publishing needs of the host (csidriver.host provides it; tests may pass a fake)."""

    async def locate(self, pool: str | None, partition: str) -> str | None: ...
    async def mounts(self) -> list[MountInfo]: ...
    async def probe(self, device: str) -> Mapping[str, str]: ...
    async def make_filesystem(self, device: str, fstype: str) -> None: ...
    async def mount(self, source: str, target: str, fstype: str, options: list[str]) -> None: ...
    async def bind_mount(self, source: str, target: str, read_only: bool) -> None: ...
    async def unmount(self, target: str) -> None: ...
    async def stats(self, path: str) -> VolumeStats: ...
    async def block_size(self, device: str) -> int: ...
    async def grow_filesystem(self, device: str, mount_point: str, fstype: str) -> None: ...
    async def read_problem(self, device: str) -> str | None: ...
    async def make_target(self, path: str, directory: bool) -> bool: ...
    async def target_removable(self, path: str) -> bool: ...
    async def remove_target(self, path: str) -> None: ...
    async def device_number(self, device: str) -> str: ...
    async def exists(self, path: str) -> bool: ...
    async def is_dir(self, path: str) -> bool: ...
    async def link_problem(self, path: str) -> str | None: ...


def check_target(path: str, what: str = "target_path", roots: Sequence[str] = ()) -> None:
    """The path's shape: absolute, normalised, no `..`, no control character, and strictly under one of `roots` when
    given (kubelet's directories: a mount over /etc or any other path is refused). What is on the disk along it
    (symbolic links) is the host's to check: Publisher.check_target does both."""
    if not path:
        raise InvalidArgument(f"{what} must not be empty")
    if any(not ch.isprintable() and ch != " " for ch in path):
        raise InvalidArgument(f"{what} {path!r} contains a control character")
    trimmed = path.rstrip("/") or "/"
    if not os.path.isabs(path) or os.path.normpath(path) != trimmed or "/../" in path + "/":
        raise InvalidArgument(f"{what} {path!r} must be an absolute, normalised path without '..'")
    if roots and not any(trimmed.startswith(root + "/") for root in roots):
        raise InvalidArgument(f"{what} {path!r} is outside the directories kubelet publishes to ({', '.join(roots)})")


class Publisher:
    def __init__(self, host: Host, roots: Sequence[str] = (), default_fs: str = DEFAULT_FS) -> None:
        self._host = host
        self._roots = tuple(roots)
        self._default_fs = default_fs  # when a mount capability names no filesystem
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def check_target(self, path: str, what: str = "target_path") -> None:
        """check_target's shape rules, then no symbolic link anywhere on the way (no escape, no loop)."""
        check_target(path, what, self._roots)
        problem = await self._host.link_problem(path.rstrip("/") or "/")
        if problem:
            raise InvalidArgument(f"{what} {path!r} {problem}")

    async def locate(self, volume_id: str, context: Mapping[str, str]) -> LocatedVolume:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        pool = context.get(c.CTX_DEVICE_NAME) or None
        device = None
        if naming.is_valid_volume_id(volume_id):
            device = await self._host.locate(pool, naming.partition_name(volume_id))
        if device is None:
            raise NotFound(f"volume {volume_id} has no partition on this node")
        try:
            number = await self._host.device_number(device)
        except NotABlockDevice as e:
            raise Internal(str(e)) from None
        return LocatedVolume(device=device, major_minor=number)

    async def _mounted_at(self, target: str) -> MountInfo | None:
        found = None
        for m in await self._host.mounts():
            if m.mount_point == target:
                found = m  # the last one stacked on the path is the visible one
        return found

    async def publish(
        self, volume_id: str, target: str, cap: Capability | None, read_only: bool, context: Mapping[str, str]
    ) -> None:
        await self.check_target(target)
        if cap is None:
            raise InvalidArgument("volume_capability must be set")
        problem = capability_problem(cap, self._default_fs)
        if problem:
            raise InvalidArgument(problem)
        vol = await self.locate(volume_id, context)
        async with self._lock(volume_id):
            existing = await self._mounted_at(target)
            if existing is not None:
                if not _same_device(existing, vol):
                    raise AlreadyExists(f"{target} already has another device mounted")
                if existing.read_only != read_only:
                    raise AlreadyExists(f"{target} is published with read_only={existing.read_only}")
                published_block = existing.fstype == "devtmpfs"
                if cap.block != published_block:
                    kind = "a raw block device" if published_block else "a filesystem"
                    raise AlreadyExists(f"{target} is published as {kind}")
                if not cap.block and (cap.fs_type or self._default_fs) != existing.fstype:
                    raise AlreadyExists(f"{target} is published with filesystem {existing.fstype}")
                return
            if cap.access_mode is AccessMode.SINGLE_NODE_SINGLE_WRITER:
                # ReadWriteOncePod: published once, at one target, at any time.
                others = [m.mount_point for m in await self._host.mounts() if _same_device(m, vol)]
                if others:
                    raise FailedPrecondition(
                        f"volume {volume_id} is SINGLE_NODE_SINGLE_WRITER and already published at {others[0]}"
                    )
            if cap.block:
                await self._publish_block(vol, target, read_only)
            else:
                await self._publish_fs(vol, target, cap, read_only)

    async def _publish_block(self, vol: LocatedVolume, target: str, read_only: bool) -> None:
        created = await self._make_target(target, directory=False)
        try:
            await self._host.bind_mount(vol.device, target, read_only)
        except Exception:
            if created:
                await self._remove_target(target)
            raise

    async def _publish_fs(self, vol: LocatedVolume, target: str, cap: Capability, read_only: bool) -> None:
        fstype = cap.fs_type or self._default_fs
        found = await self._host.probe(vol.device)
        if not found:
            if read_only:
                raise FailedPrecondition(f"{vol.device} holds no filesystem and cannot be formatted read-only")
            await self._host.make_filesystem(vol.device, fstype)
        elif found.get("TYPE") != fstype:
            raise FailedPrecondition(
                f"{vol.device} already holds {found.get('TYPE') or 'an unknown signature'}, not {fstype}"
            )
        created = await self._make_target(target, directory=True)
        options = [*cap.mount_flags, *(["ro"] if read_only else []), *FORCED]
        try:
            await self._host.mount(vol.device, target, fstype, options)
        except Exception:
            if created:
                await self._remove_target(target)
            raise

    async def _make_target(self, target: str, directory: bool) -> bool:
        try:
            return await self._host.make_target(target, directory)
        except NoParent as e:
            raise FailedPrecondition(str(e)) from None
        except WrongKind as e:
            raise AlreadyExists(str(e)) from None
        except NotEmpty as e:
            raise FailedPrecondition(str(e)) from None

    async def _remove_target(self, target: str) -> None:
        try:
            await self._host.remove_target(target)
        except NotEmpty as e:
            raise FailedPrecondition(str(e)) from None

    async def unpublish(self, volume_id: str, target: str) -> None:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        await self.check_target(target)
        async with self._lock(volume_id):
            mounted = await self._mounted_at(target)
            if mounted is not None:
                await self._check_ours(volume_id, target, mounted)
            elif not await self._host.target_removable(target) or not await self._known(volume_id):
                # Not mounted, and not an empty directory or file left by publishing a volume of this node: not ours
                # to delete (kubelet removes its own empty target directories).
                return
            for _ in range(8):  # a path may carry stacked mounts
                if await self._mounted_at(target) is None:
                    break
                await self._host.unmount(target)
            else:
                raise Internal(f"{target} is still mounted after repeated unmounts")
            await self._remove_target(target)

    async def _known(self, volume_id: str) -> bool:
        try:
            await self.locate(volume_id, {})
            return True
        except NotFound:
            return False

    async def _check_ours(self, volume_id: str, target: str, mounted: MountInfo) -> None:
        """Unmount only this volume: another volume's mount at the target is refused. When this volume's partition
        cannot be found (its disk is gone), a mount whose device no longer exists is accepted as its own."""
        try:
            vol = await self.locate(volume_id, {})
        except NotFound:
            # Accepted as this volume's only when what is mounted is a device that no longer exists (its disk is
            # gone); any other mount (another device, a tmpfs, a bind) is someone else's.
            if mounted.source.startswith("/dev/") and not await self._host.exists(mounted.source):
                return
            raise FailedPrecondition(
                f"{target} has {mounted.source} ({mounted.fstype}) mounted, which is not volume {volume_id}; nothing"
                " unmounted"
            ) from None
        if not _same_device(mounted, vol):
            raise FailedPrecondition(
                f"{target} has {mounted.source} mounted, not volume {volume_id} ({vol.device}); nothing unmounted"
            )

    async def stats(self, volume_id: str, path: str) -> VolumeStats:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        if not path:
            raise InvalidArgument("volume_path must not be empty")
        try:
            await self.check_target(path, "volume_path")
        except InvalidArgument as e:
            # No volume is ever published at such a path: not found there (what csi-sanity and the spec expect).
            raise NotFound(f"volume {volume_id} is not published at {path!r}: {e}") from None
        if not await self._host.exists(path):
            raise NotFound(f"volume_path {path} does not exist")
        mount = await self._mounted_at(path)
        try:
            vol = await self.locate(volume_id, {})
        except NotFound:
            # Its partition cannot be found: abnormal if what is mounted there lost its device (the disk is gone)
            # or cannot be read (the disk fails, so its table cannot be read either); a readable device mounted
            # there is some other volume's.
            if mount is None or not mount.source.startswith("/dev/"):
                raise NotFound(f"volume {volume_id} is not published at {path}") from None
            if not await self._host.exists(mount.source):
                return VolumeStats(block=False, total=0, abnormal="the volume's partition is on no readable pool disk")
            problem = await self._host.read_problem(mount.source)
            if problem is None:
                raise NotFound(f"volume {volume_id} is not published at {path}") from None
            return VolumeStats(block=False, total=0, abnormal=f"the volume's disk fails: {problem}")
        if mount is None or not _same_device(mount, vol):
            raise NotFound(f"volume {volume_id} is not published at {path}")
        if not await self._host.is_dir(path):  # a bind-mounted device node
            stats = VolumeStats(block=True, total=await self._host.block_size(vol.device))
        else:
            stats = await self._host.stats(path)
        problem = await self._host.read_problem(vol.device)
        return dataclasses.replace(stats, abnormal=problem) if problem else stats

    async def expand(self, volume_id: str, path: str, required: int, block: bool | None) -> int:
        """NodeExpandVolume: grow the filesystem of the volume published at ``path`` to fill its partition (which
        the agent already grew); a raw block volume needs nothing. Returns the partition's size in bytes."""
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        if not path:
            raise InvalidArgument("volume_path must not be empty")
        if required < 0:
            raise InvalidArgument("capacity_range bytes must not be negative")
        vol = await self.locate(volume_id, {})
        await self.check_target(path, "volume_path")
        async with self._lock(volume_id):
            mount = await self._mounted_at(path)
            if mount is None or not _same_device(mount, vol):
                raise NotFound(f"volume {volume_id} is not published at {path}")
            size = await self._host.block_size(vol.device)
            if required > size:
                raise FailedPrecondition(
                    f"the partition of volume {volume_id} is {size} bytes, below the {required} requested: the"
                    " controller's expansion has not grown it yet"
                )
            if mount.fstype == "devtmpfs" or block:
                return size
            await self._host.grow_filesystem(vol.device, path, mount.fstype)
            return size


def _same_device(mount: MountInfo, vol: LocatedVolume) -> bool:
    """The mount at a target shows the volume: its device (filesystem), its source path (btrfs reports an
    anonymous device number) or, for a bind-mounted device node, the node's path inside /dev."""
    if mount.fstype == "devtmpfs":
        return mount.root == vol.device.removeprefix("/dev")
    return mount.major_minor == vol.major_minor or mount.source == vol.device
