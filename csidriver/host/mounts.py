"""Mounting and unmounting, with the mount table read from /proc/self/mountinfo."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence

from .parsers import MountInfo, parse_mountinfo
from .runner import CommandError, Runner

_OPTION = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII except space and comma
_FSTYPE = re.compile(r"[a-z0-9][a-z0-9._+-]*")


def validate_options(options: Sequence[str]) -> list[str]:
    """Each option: non-empty printable ASCII, no comma, no space, no leading '-'."""
    checked = []
    for option in options:
        if not isinstance(option, str) or not _OPTION.fullmatch(option) or option.startswith("-"):
            raise ValueError(f"invalid mount option {option!r}")
        checked.append(option)
    return checked


def _path_arg(value: str, what: str) -> str:
    if not value or value.startswith("-") or "\x00" in value or "\n" in value:
        raise ValueError(f"invalid {what} {value!r}")
    return value


class Mounter:
    def __init__(self, runner: Runner, mountinfo_path: str = "/proc/self/mountinfo") -> None:
        self._runner = runner
        self._mountinfo = mountinfo_path

    async def mounts(self) -> list[MountInfo]:
        return parse_mountinfo(await asyncio.to_thread(_read_text, self._mountinfo))

    async def mount_at(self, target: str) -> MountInfo | None:
        """The topmost mount whose mount point is exactly ``target`` (after resolving symlinks)."""
        real = await asyncio.to_thread(os.path.realpath, target)
        found = [m for m in await self.mounts() if m.mount_point == real]
        return found[-1] if found else None

    async def mount(self, source: str, target: str, fstype: str, options: Sequence[str]) -> None:
        if not _FSTYPE.fullmatch(fstype):
            raise ValueError(f"invalid filesystem type {fstype!r}")
        argv = ["mount", "-t", fstype, *_joined(validate_options(options))]
        await self._runner.run([*argv, "--", _path_arg(source, "source"), _path_arg(target, "target")])

    async def bind_mount(self, source: str, target: str, read_only: bool) -> None:
        """Bind ``source`` (e.g. a partition's device node) onto ``target`` (e.g. a regular file).

        A read-only bind needs a second step (remount with bind,ro); if that fails the bind is undone.
        """
        await self._runner.run(["mount", "--bind", "--", _path_arg(source, "source"), _path_arg(target, "target")])
        if not read_only:
            return
        try:
            await self._runner.run(["mount", "-o", "remount,bind,ro", "--", target])
        except CommandError:
            await self._runner.run(["umount", "--", target], check=False)
            raise

    async def unmount(self, target: str) -> None:
        """Unmount the topmost mount at ``target``; nothing to do when it is not a mount point."""
        if await self.mount_at(target) is None:
            return
        try:
            await self._runner.run(["umount", "--", _path_arg(target, "target")])
        except CommandError:
            if await self.mount_at(target) is not None:
                raise


def _joined(options: list[str]) -> list[str]:
    return ["-o", ",".join(options)] if options else []


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read()
