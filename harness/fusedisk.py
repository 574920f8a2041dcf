"""A disk that fails like hardware: a loop device over a file served by a small FUSE filesystem that answers EIO to
every read and write while a switch is on.

The FUSE server runs as its own process (`python -m harness.fusedisk IMAGE MOUNTPOINT SWITCH`) exposing one
file, `disk`, whose reads and writes go to IMAGE with pread/pwrite, or fail with EIO while the file SWITCH exists.
The loop device uses direct I/O and the mount `direct_io`, so every read of the device reaches the server: the page
cache cannot hide the failure. The kernel then logs I/O errors for the loop device, as for a dying disk.
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.disks import MIB, LoopDisk, run


def _serve(image: str, mountpoint: str, switch: str) -> None:
    from fuse import FUSE, FuseOSError, Operations

    size = os.path.getsize(image)
    fd = os.open(image, os.O_RDWR)

    class OneFile(Operations):  # type: ignore[misc]
        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            now = time.time()
            if path == "/":
                return {
                    "st_mode": stat.S_IFDIR | 0o755,
                    "st_nlink": 2,
                    "st_ctime": now,
                    "st_mtime": now,
                    "st_atime": now,
                }
            if path == "/disk":
                return {
                    "st_mode": stat.S_IFREG | 0o600,
                    "st_nlink": 1,
                    "st_size": size,
                    "st_ctime": now,
                    "st_mtime": now,
                    "st_atime": now,
                }
            raise FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: Any) -> list[str]:
            return [".", "..", "disk"]

        def open(self, path: str, flags: int) -> int:
            return 0

        def read(self, path: str, length: int, offset: int, fh: Any) -> bytes:
            if os.path.exists(switch):
                raise FuseOSError(errno.EIO)
            return os.pread(fd, length, offset)

        def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
            if os.path.exists(switch):
                raise FuseOSError(errno.EIO)
            return os.pwrite(fd, data, offset)

        def truncate(self, path: str, length: int, fh: Any = None) -> None:
            raise FuseOSError(errno.EPERM)

        def flush(self, path: str, fh: Any) -> None:
            return None

        def fsync(self, path: str, datasync: int, fh: Any) -> None:
            if os.path.exists(switch):
                raise FuseOSError(errno.EIO)
            os.fsync(fd)

    FUSE(OneFile(), mountpoint, foreground=True, direct_io=True, nothreads=False)


class FailingDisk:
    def __init__(self, disk: LoopDisk, switch: Path) -> None:
        self.disk = disk
        self._switch = switch

    @property
    def device(self) -> str:
        return self.disk.device

    def fail(self) -> None:
        self._switch.touch()

    def heal(self) -> None:
        self._switch.unlink(missing_ok=True)


@contextmanager
def failing_pool_disk(pool: str, size_mib: int) -> Iterator[FailingDisk]:
    """A pool disk (GPT, partition #1 named after the pool) that fails on demand; always torn down."""
    work = Path(tempfile.mkdtemp(prefix="dlpv-fuse-"))
    image, mnt, switch = work / "image", work / "mnt", work / "failing"
    with open(image, "wb") as f:
        f.truncate(size_mib * MIB)
    mnt.mkdir()
    with (work / "server.log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "harness.fusedisk", str(image), str(mnt), str(switch)],
            cwd=Path(__file__).resolve().parents[1],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    device = ""
    try:
        deadline = time.monotonic() + 15
        while not (mnt / "disk").exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"FUSE server did not start: {(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        device = run("losetup", "--find", "--show", "--direct-io=on", str(mnt / "disk")).strip()
        for attempt in range(20):  # a loop device just released may still be settling in the kernel
            done = subprocess.run(
                ["parted", "-s", device, "mklabel", "gpt", "mkpart", pool, "1MiB", "10MiB"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0:
                break
            if attempt == 19:
                raise RuntimeError(f"parted {device}: {done.stderr.strip()}")
            time.sleep(0.25)
        yield FailingDisk(LoopDisk(image, device), switch)
    finally:
        switch.unlink(missing_ok=True)
        if device:
            for _ in range(50):
                if subprocess.run(["losetup", "--detach", device], capture_output=True).returncode == 0:
                    break
                time.sleep(0.1)
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        image.unlink(missing_ok=True)


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], sys.argv[3])
