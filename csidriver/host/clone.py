"""Filling a new volume's partition with a block copy of another (clones), freezing the source's filesystem meanwhile.

A source mounted as a filesystem is frozen (FIFREEZE through `fsfreeze`) only for the copy, so the copy is
consistent; before freezing, a marker naming the mount point is written to a state directory and removed after the
thaw, so an agent that died while a filesystem was frozen thaws it when it starts again (`thaw_leftovers`). A source
bind-mounted as a raw block device cannot be frozen and is refused. The copy uses O_DIRECT in large aligned blocks
(no page-cache pollution), reading the next block while writing this one, then fsync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .parsers import parse_mountinfo
from .runner import Runner

log = logging.getLogger(__name__)
BLOCK = 4 << 20  # bytes per read/write: large enough to reach the disk's throughput, small enough to stay light


class SourceBusy(Exception):
    """The source cannot be copied consistently now (published as a raw block device, or it cannot be frozen)."""


@dataclass(frozen=True)
class SourceUse:
    mount_points: tuple[str, ...]  # filesystem mounts of the device (frozen during the copy)
    raw_binds: tuple[str, ...]  # bind mounts of its device node (raw block use: cannot be frozen)


def source_use(node: str, mountinfo_path: str = "/proc/self/mountinfo") -> SourceUse:
    st = os.stat(node)
    dev = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    with open(mountinfo_path, encoding="utf-8", errors="surrogateescape") as f:
        mounts = parse_mountinfo(f.read())
    name = os.path.basename(node)
    fs = tuple(m.mount_point for m in mounts if m.fstype != "devtmpfs" and (m.major_minor == dev or m.source == node))
    raw = tuple(m.mount_point for m in mounts if m.fstype == "devtmpfs" and m.root == f"/{name}")
    return SourceUse(fs, raw)


def copy_device(src: str, dst: str, length: int, progress: Callable[[int], None] | None = None) -> None:
    """Copy the first `length` bytes of `src` onto `dst` with O_DIRECT, then fsync `dst`. Two aligned buffers: the
    next block is read (in a helper thread; the system calls release the GIL) while this one is written."""
    bufs = [mmap.mmap(-1, BLOCK), mmap.mmap(-1, BLOCK)]  # page-aligned, as O_DIRECT wants
    views = [memoryview(b) for b in bufs]
    fin = os.open(src, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    try:
        fout = os.open(dst, os.O_WRONLY | os.O_DIRECT | os.O_EXCL | os.O_CLOEXEC)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="copy-read") as reader:

                def read(slot: int, offset: int) -> int:
                    want = min(BLOCK, length - offset)
                    got = os.preadv(fin, [views[slot][:want]], offset)
                    if got <= 0:
                        raise OSError(f"{src}: short read at byte {offset}")
                    return got

                done, slot = 0, 0
                pending = reader.submit(read, slot, 0) if length > 0 else None
                while pending is not None:
                    got = pending.result()
                    nxt = done + got
                    pending = reader.submit(read, 1 - slot, nxt) if nxt < length else None
                    wrote = 0
                    while wrote < got:
                        wrote += os.pwritev(fout, [views[slot][wrote:got]], done + wrote)
                    done, slot = nxt, 1 - slot
                    if progress is not None:
                        progress(done)
            os.fsync(fout)
        finally:
            os.close(fout)
    finally:
        os.close(fin)
        for v in views:
            v.release()
        for b in bufs:
            b.close()


class Freezer:
    def __init__(self, runner: Runner, state_dir: str) -> None:
        self._runner = runner
        self._dir = os.path.join(state_dir, "frozen")

    def _marker(self, mount_point: str) -> str:
        return os.path.join(self._dir, mount_point.strip("/").replace("/", "_") or "root")

    def _mark(self, mount_point: str) -> None:
        os.makedirs(self._dir, mode=0o700, exist_ok=True)
        with open(self._marker(mount_point), "w", encoding="utf-8") as f:
            f.write(mount_point)

    def _marked(self) -> list[tuple[str, str]]:
        if not os.path.isdir(self._dir):
            return []
        found = []
        for name in sorted(os.listdir(self._dir)):
            path = os.path.join(self._dir, name)
            with open(path, encoding="utf-8") as f:
                found.append((path, f.read()))
        return found

    @contextlib.asynccontextmanager
    async def frozen(self, mount_points: tuple[str, ...]) -> AsyncIterator[None]:
        done: list[str] = []
        try:
            for mp in mount_points:
                await asyncio.to_thread(self._mark, mp)
                try:
                    await self._runner.run(["fsfreeze", "--freeze", mp], timeout=60.0)
                except Exception as e:
                    os.unlink(self._marker(mp))
                    raise SourceBusy(f"cannot freeze {mp} for a consistent copy: {e}") from e
                done.append(mp)
            yield
        finally:
            for mp in reversed(done):
                await self._runner.run(["fsfreeze", "--unfreeze", mp], timeout=60.0, check=False)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._marker(mp))

    async def thaw_leftovers(self) -> list[str]:
        """Thaw every filesystem a previous run froze and did not thaw (it died during a copy)."""
        thawed = []
        for path, mp in await asyncio.to_thread(self._marked):
            await self._runner.run(["fsfreeze", "--unfreeze", mp], timeout=60.0, check=False)
            await asyncio.to_thread(os.unlink, path)
            thawed.append(mp)
            log.warning("thawed %s, left frozen by a copy that did not finish", mp)
        return thawed
