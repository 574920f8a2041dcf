"""NodePublishVolume / NodeUnpublishVolume / NodeGetVolumeStats on local partitions.

Everything here reads the disks and the mount table of this host; nothing needs the API server, so existing
volumes can be published and unpublished while it is down.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.host.parsers import MountInfo
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


def check_target(path: str, what: str = "target_path", roots: Sequence[str] = ()) -> None:
    """Absolute, normalised, no `..`, no control character, no symbolic link anywhere on the way (no escape, no
    loop), and strictly under one of `roots` when given (kubelet's directories: a mount over /etc or any other
    path is refused)."""
    if not path:
        raise InvalidArgument(f"{what} must not be empty")
    if any(not ch.isprintable() and ch != " " for ch in path):
        raise InvalidArgument(f"{what} {path!r} contains a control character")
    trimmed = path.rstrip("/") or "/"
    if not os.path.isabs(path) or os.path.normpath(path) != trimmed or "/../" in path + "/":
        raise InvalidArgument(f"{what} {path!r} must be an absolute, normalised path without '..'")
    if roots and not any(trimmed.startswith(root + "/") for root in roots):
        raise InvalidArgument(f"{what} {path!r} is outside the directories kubelet publishes to ({', '.join(roots)})")
    parent = os.path.dirname(trimmed)
    try:
        resolved = os.path.realpath(parent, strict=True)
    except FileNotFoundError:
        resolved = os.path.realpath(parent)  # a missing parent is answered later, precisely
    except OSError as e:
        raise InvalidArgument(f"{what} {path!r} cannot be resolved: {e.strerror}") from e
    if resolved != parent:
        raise InvalidArgument(f"{what} {path!r} goes through a symbolic link")
    if os.path.islink(path):
        raise InvalidArgument(f"{what} {path!r} is a symbolic link")


def _major_minor(device: str) -> str:
    st = os.stat(device)
    if not stat.S_ISBLK(st.st_mode):
        raise Internal(f"{device} is not a block device")
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


class Publisher:
    def __init__(self, host: Host, roots: Sequence[str] = (), default_fs: str = DEFAULT_FS) -> None:
        self._host = host
        self._roots = tuple(roots)
        self._default_fs = default_fs  # when a mount capability names no filesystem
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def locate(self, volume_id: str, context: Mapping[str, str]) -> LocatedVolume:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        pool = context.get(c.CTX_DEVICE_NAME) or None
        device = None
        if naming.is_valid_volume_id(volume_id):
            device = await self._host.locate(pool, naming.partition_name(volume_id))
        if device is None:
            raise NotFound(f"volume {volume_id} has no partition on this node")
        return LocatedVolume(device=device, major_minor=await asyncio.to_thread(_major_minor, device))

    async def _mounted_at(self, target: str) -> MountInfo | None:
        found = None
        for m in await self._host.mounts():
            if m.mount_point == target:
                found = m  # the last one stacked on the path is the visible one
        return found

    async def publish(
        self, volume_id: str, target: str, cap: Capability | None, read_only: bool, context: Mapping[str, str]
    ) -> None:
        check_target(target, roots=self._roots)
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
        created = await asyncio.to_thread(_make_file, target)
        try:
            await self._host.bind_mount(vol.device, target, read_only)
        except Exception:
            if created:
                await asyncio.to_thread(_remove, target)
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
        created = await asyncio.to_thread(_make_dir, target)
        options = [*cap.mount_flags, *(["ro"] if read_only else []), *FORCED]
        try:
            await self._host.mount(vol.device, target, fstype, options)
        except Exception:
            if created:
                await asyncio.to_thread(_remove, target)
            raise

    async def unpublish(self, volume_id: str, target: str) -> None:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        check_target(target, roots=self._roots)
        async with self._lock(volume_id):
            mounted = await self._mounted_at(target)
            if mounted is not None:
                await self._check_ours(volume_id, target, mounted)
            elif not await asyncio.to_thread(_ours_to_remove, target) or not await self._known(volume_id):
                # Not mounted, and not an empty directory or file left by publishing a volume of this node: not ours
                # to delete (kubelet removes its own empty target directories).
                return
            for _ in range(8):  # a path may carry stacked mounts
                if await self._mounted_at(target) is None:
                    break
                await self._host.unmount(target)
            else:
                raise Internal(f"{target} is still mounted after repeated unmounts")
            await asyncio.to_thread(_remove, target)

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
            if mounted.source.startswith("/dev/") and not await asyncio.to_thread(os.path.exists, mounted.source):
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
            await asyncio.to_thread(check_target, path, "volume_path", self._roots)
        except InvalidArgument as e:
            # No volume is ever published at such a path: not found there (what csi-sanity and the spec expect).
            raise NotFound(f"volume {volume_id} is not published at {path!r}: {e}") from None
        if not await asyncio.to_thread(os.path.exists, path):
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
            if not await asyncio.to_thread(os.path.exists, mount.source):
                return VolumeStats(block=False, total=0, abnormal="the volume's partition is on no readable pool disk")
            problem = await self._host.read_problem(mount.source)
            if problem is None:
                raise NotFound(f"volume {volume_id} is not published at {path}") from None
            return VolumeStats(block=False, total=0, abnormal=f"the volume's disk fails: {problem}")
        if mount is None or not _same_device(mount, vol):
            raise NotFound(f"volume {volume_id} is not published at {path}")
        if not await asyncio.to_thread(os.path.isdir, path):  # a bind-mounted device node
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
        check_target(path, "volume_path", roots=self._roots)
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


def _missing_parent(path: str) -> FailedPrecondition:
    return FailedPrecondition(f"the parent directory of {path} does not exist (the CO creates it)")


def _make_dir(path: str) -> bool:
    try:
        os.mkdir(path, 0o750)
        return True
    except FileNotFoundError:
        raise _missing_parent(path) from None
    except FileExistsError:
        if not os.path.isdir(path):
            raise AlreadyExists(f"{path} exists and is not a directory") from None
        if os.listdir(path):
            raise FailedPrecondition(
                f"{path} is a directory that is not empty: a volume is never mounted over files"
            ) from None
        return False


def _make_file(path: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
        os.close(fd)
        return True
    except FileNotFoundError:
        raise _missing_parent(path) from None
    except FileExistsError:
        if not os.path.isfile(path):
            raise AlreadyExists(f"{path} exists and is not a regular file") from None
        if os.path.getsize(path):
            raise FailedPrecondition(f"{path} is a file that is not empty: a device is never bound over data") from None
        return False


def _ours_to_remove(path: str) -> bool:
    """What a publish of this driver leaves at a target once unmounted: an empty directory or an empty file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return not os.listdir(path)
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _remove(path: str) -> None:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.ENOTEMPTY:
            raise FailedPrecondition(f"{path} is not empty after unmount; refusing to delete data") from e
        raise
