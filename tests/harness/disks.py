"""Loop-device disks for tests: pool disks made the way an admin makes them, and foreign disks to leave alone."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class LoopDisk:
    image: Path
    device: str

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


def partitions(device: str) -> list[dict[str, object]]:
    """Partition entries of a disk as sfdisk reports them (for assertions)."""
    import json

    out = subprocess.run(["sfdisk", "--json", device], capture_output=True, text=True, check=True).stdout
    return list(json.loads(out)["partitiontable"].get("partitions", []))
