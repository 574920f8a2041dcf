"""Probing, formatting and measuring filesystems."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

from csidriver.api import constants as c

from .parsers import parse_blkid_probe
from .runner import CommandError, Runner

SUPPORTED_FS = c.SUPPORTED_FS

# ext4: -m 0 (no root reserve in a volume), lazy inode tables (the kernel zeroes them in the background
# and uninit_bg hides them meanwhile) but a fully zeroed journal, so that stale journal blocks of a
# previous tenant can never be replayed after a crash.
_MKFS: dict[str, tuple[str, ...]] = {
    "ext4": ("mkfs.ext4", "-F", "-q", "-m", "0", "-E", "lazy_itable_init=1,lazy_journal_init=0"),
    "xfs": ("mkfs.xfs", "-f", "-q"),
    "btrfs": ("mkfs.btrfs", "-f", "-q"),
}
_NOTHING_FOUND = 2  # blkid's exit status when no signature is found
_NOT_SIGNATURES = ("DEVNAME",)


class FilesystemExists(Exception):
    """Refusing to format a device that carries a signature."""


@dataclass(frozen=True)
class FsStats:
    total: int
    used: int
    available: int
    inodes: int
    inodes_used: int
    inodes_free: int


def signatures(probe: dict[str, str]) -> dict[str, str]:
    """Drop what blkid reports about the partition entry itself; what remains is content."""
    return {k: v for k, v in probe.items() if k not in _NOT_SIGNATURES and not k.startswith("PART_ENTRY_")}


def _device(node: str) -> str:
    if not node.startswith("/"):
        raise ValueError(f"expected an absolute device path, got {node!r}")
    return node


class Filesystems:
    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    async def probe(self, node: str) -> dict[str, str]:
        """Signatures on ``node`` ({} when blank). blkid's partition-entry keys do not count as content;
        an ambivalent result (several signatures, exit 8) raises CommandError, never reads as blank."""
        argv = ["blkid", "-p", "-o", "export", "--", _device(node)]
        done = await self._runner.run(argv, timeout=30.0, check=False)
        if done.returncode == _NOTHING_FOUND:
            return {}
        if done.returncode != 0:
            raise CommandError(done.argv, done.returncode, done.stderr)
        return signatures(parse_blkid_probe(done.stdout))

    async def make_filesystem(self, node: str, fstype: str) -> None:
        """Format a blank device; refuses (FilesystemExists) if any signature is present."""
        if fstype not in SUPPORTED_FS:
            raise ValueError(f"unsupported filesystem {fstype!r}; supported: {', '.join(SUPPORTED_FS)}")
        found = await self.probe(node)
        if found:
            raise FilesystemExists(f"{node} already carries {found.get('TYPE') or found.get('PTTYPE')}")
        await self._runner.run([*_MKFS[fstype], "--", node], timeout=600.0)

    async def grow_filesystem(self, node: str, mount_point: str, fstype: str) -> None:
        """Grow the filesystem mounted at ``mount_point`` (on ``node``) to fill its device, online. ext4 needs
        CAP_SYS_RESOURCE for an online resize (the kernel answers EPERM without it)."""
        argv = {
            "ext4": ["resize2fs", "--", _device(node)],
            "xfs": ["xfs_growfs", "--", _device(mount_point)],
            # btrfs takes no "--"; the absolute path cannot read as an option.
            "btrfs": ["btrfs", "filesystem", "resize", "max", _device(mount_point)],
        }.get(fstype)
        if argv is None:
            raise ValueError(f"cannot grow a {fstype!r} filesystem; supported: {', '.join(SUPPORTED_FS)}")
        await self._runner.run(argv, timeout=600.0)

    async def block_size(self, node: str) -> int:
        """Size of a block device in bytes."""
        done = await self._runner.run(["blockdev", "--getsize64", _device(node)], timeout=30.0)
        return int(done.stdout.strip())

    async def filesystem_stats(self, path: str) -> FsStats:
        """Capacity and inode counts of the filesystem mounted at ``path`` (statvfs in a thread)."""
        st = await asyncio.to_thread(os.statvfs, path)
        return FsStats(
            total=st.f_blocks * st.f_frsize,
            used=(st.f_blocks - st.f_bfree) * st.f_frsize,
            available=st.f_bavail * st.f_frsize,
            inodes=st.f_files,
            inodes_used=st.f_files - st.f_ffree,
            inodes_free=st.f_ffree,
        )
