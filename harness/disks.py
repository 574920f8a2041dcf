"""Loop-device disks for tests: pool disks made the way an admin makes them, and foreign disks to leave alone."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NotRequired, TypedDict

MIB = 1 << 20


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class LoopDisk:
    image: Path
    device: str
    # A reserved loop device name rather than a disk: bound to a small blank image so that no other process's
    # `losetup --find` takes the name while it stands empty (see `LoopDisks.placeholder`).
    placeholder: bool = False

    @property
    def name(self) -> str:
        return os.path.basename(self.device)

    def sha256(self) -> str:
        h = hashlib.sha256()
        with open(self.device, "rb") as f:
            while chunk := f.read(4 * MIB):
                h.update(chunk)
        return h.hexdigest()


@dataclass
class LoopDisks:
    """Creates loop disks and always detaches them (call `cleanup`, or use as a context manager)."""

    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dlpv-disks-")))
    disks: list[LoopDisk] = field(default_factory=list)

    def blank(self, size_mib: int) -> LoopDisk:
        image = self.workdir / f"disk{len(self.disks)}.img"
        with open(image, "wb") as f:
            f.truncate(size_mib * MIB)
        device = run("losetup", "--find", "--show", "--partscan", str(image)).strip()
        disk = LoopDisk(image, device)
        self.disks.append(disk)
        return disk

    def pool(self, pool: str, size_mib: int, msftdata: bool = False) -> LoopDisk:
        """GPT disk whose partition #1 (1-10 MiB) is named after the pool: the documented admin procedure."""
        disk = self.blank(size_mib)
        run("parted", "-s", disk.device, "mklabel", "gpt", "mkpart", pool, "1MiB", "10MiB")
        if msftdata:
            run("parted", "-s", disk.device, "set", "1", "msftdata", "on")
        return disk

    def placeholder(self) -> LoopDisk:
        """Reserves a loop device name for a disk plugged in later (`swap`): bound to a 1 MiB blank image, which
        holds no partition table and so is never a pool disk, and keeps the name from other processes."""
        disk = self.blank(1)
        disk.placeholder = True
        return disk

    def swap(self, one: LoopDisk, other: LoopDisk, timeout: float = 30) -> None:
        """Exchanges the loop devices of two disks: each image is detached and attached again (its partitions known
        to the kernel) under the other's device name, its bytes untouched. Used to move a disk between nodes whose disk
        filters name different devices: unplugging `one` and plugging it in where the placeholder `other` was.

        Refused while a partition of either is in use (mounted, in any mount namespace): the loop device would only
        be detached when it is released, and the image would meanwhile be attached twice. Each name is free only
        for the moment between its detach and the next attach."""
        deadline = time.monotonic() + 5  # sfdisk, run by an agent, holds a disk exclusively while it writes
        while busy := _claimed(one.device) + _claimed(other.device):
            if time.monotonic() > deadline:
                raise RuntimeError(f"in use, not moved: {busy}")
            time.sleep(0.2)
        for disk in (one, other):
            _detach(disk.device, timeout)
        for disk, device in ((one, other.device), (other, one.device)):
            done = subprocess.run(
                ["losetup", "--partscan", device, str(disk.image)], capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"losetup {device} {disk.image}: {done.stderr.strip()} (taken meanwhile?)")
            # This VM's kernel has no partition table parsers (--partscan finds nothing): partx reads the table and
            # adds the partitions to the kernel, as a kernel's own scan does when a disk is plugged in.
            subprocess.run(["partx", "--update", device], capture_output=True, check=False)
        one.device, other.device = other.device, one.device

    def foreign_ext4(self, size_mib: int) -> LoopDisk:
        """Someone else's data: an ext4 filesystem on the whole disk, no partition table, a file inside."""
        disk = self.blank(size_mib)
        run("mkfs.ext4", "-q", "-F", disk.device)
        return disk

    def cleanup(self) -> None:
        for disk in self.disks:
            subprocess.run(["losetup", "--detach", disk.device], check=False, capture_output=True)
            disk.image.unlink(missing_ok=True)
        self.disks.clear()

    def __enter__(self) -> LoopDisks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def backing_file(device: str) -> str:
    """The image a loop device is attached to; empty when it is free."""
    try:
        return Path(f"/sys/block/{os.path.basename(device)}/loop/backing_file").read_text().strip()
    except OSError:
        return ""


def _claimed(device: str) -> list[str]:
    """The disk and partitions that cannot be opened exclusively: a mounted filesystem claims its partition, and
    with it the whole disk, whichever mount namespace it is mounted in."""
    name = os.path.basename(device)
    parts = sorted(p.name for p in Path(f"/sys/block/{name}").glob(f"{name}p*"))
    busy = []
    for node in [device, *(f"/dev/{p}" for p in parts)]:
        try:
            os.close(os.open(node, os.O_RDONLY | os.O_EXCL))
        except FileNotFoundError:
            continue
        except OSError as e:
            busy.append(f"{node}: {e.strerror}")
    return busy


def _detach(device: str, timeout: float) -> None:
    """Detaches a loop device and waits until it is free: a device still open (a scan reading it) is detached by
    the kernel when it is closed."""
    subprocess.run(["losetup", "--detach", device], capture_output=True, check=False)
    deadline = time.monotonic() + timeout
    while backing_file(device):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{device} still attached to {backing_file(device)} after {timeout}s")
        time.sleep(0.02)


class Partition(TypedDict):
    """One entry of `sfdisk --json`'s partition table (start and size in sectors)."""

    node: str
    start: int
    size: int
    type: str
    uuid: NotRequired[str]
    name: NotRequired[str]
    attrs: NotRequired[str]


def partitions(device: str) -> list[Partition]:
    """Partition entries of a disk as sfdisk reports them (for assertions)."""
    import json

    out = subprocess.run(["sfdisk", "--json", device], capture_output=True, text=True, check=True).stdout
    entries: list[Partition] = json.loads(out)["partitiontable"].get("partitions", [])
    return entries


def disk_guid(device: str) -> str:
    """The GPT disk GUID (upper case, as DeviceNode reports it)."""
    import json

    out = subprocess.run(["sfdisk", "--json", device], capture_output=True, text=True, check=True).stdout
    return str(json.loads(out)["partitiontable"]["id"]).upper()
