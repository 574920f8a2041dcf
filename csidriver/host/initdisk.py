"""Turning a blank disk into a pool disk: GPT label plus a meta partition #1 (1-10 MiB) named after the pool.

Refuses a disk that holds any signature or partition table (unless forced) and, always, a disk that is mounted
or has a mounted partition. The plan is computed first and can be shown without writing anything.
"""

from __future__ import annotations

import asyncio
import os
import stat
from dataclasses import dataclass

from .mounts import Mounter
from .partitions import LINUX_FS_TYPE, validate_name
from .runner import Runner

MIB = 1 << 20


class InitDiskRefused(Exception):
    pass


@dataclass(frozen=True)
class InitPlan:
    device: str
    pool: str
    size: int
    found: tuple[str, ...]  # signatures and tables that --force would erase
    script: str

    def describe(self) -> str:
        lines = [f"disk {self.device} ({self.size} bytes) becomes a pool disk of pool {self.pool!r}:"]
        lines += [f"  erase existing {f}" for f in self.found]
        lines += ["  write a new GPT partition table", f"  create partition 1 named {self.pool!r}, 1 MiB to 10 MiB"]
        return "\n".join(lines)


def _whole_disk(device: str) -> tuple[str, set[str]]:
    """The disk's real path and the major:minor of it and of each of its partitions."""
    real = os.path.realpath(device)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise InitDiskRefused(f"{device} does not exist") from None
    except OSError as e:
        raise InitDiskRefused(f"{device} cannot be read: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InitDiskRefused(f"{device} is not a block device")
    name = os.path.basename(real)
    sysdir = f"/sys/class/block/{name}"
    if os.path.exists(f"{sysdir}/partition"):
        raise InitDiskRefused(f"{device} is a partition, not a whole disk")
    ids = {f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"}
    for child in os.listdir(sysdir):
        if os.path.exists(f"{sysdir}/{child}/partition"):
            with open(f"{sysdir}/{child}/dev") as f:
                ids.add(f.read().strip())
    return real, ids


async def plan_init(runner: Runner, device: str, pool: str, force: bool) -> InitPlan:
    validate_name(pool)
    real, ids = await asyncio.to_thread(_whole_disk, device)
    for m in await Mounter(runner).mounts():
        if m.major_minor in ids or m.source == real:
            raise InitDiskRefused(f"{device} (or one of its partitions) is mounted at {m.mount_point}")
    sigs = await runner.run(["wipefs", "--noheadings", "--output", "TYPE,OFFSET", "--", real])
    found = tuple(line.strip() for line in sigs.stdout.splitlines() if line.strip())
    if found and not force:
        raise InitDiskRefused(f"{device} is not blank ({', '.join(found)}); pass --force to erase it")
    size = int((await runner.run(["blockdev", "--getsize64", real])).stdout.strip())
    if size < 64 * MIB:
        raise InitDiskRefused(f"{device} is too small for a pool disk ({size} bytes)")
    script = f'label: gpt\nstart=2048, size=18432, type={LINUX_FS_TYPE}, name="{pool}"\n'
    return InitPlan(real, pool, size, found, script)


async def apply_init(runner: Runner, plan: InitPlan) -> None:
    await runner.run(["wipefs", "--all", "--force", "--", plan.device])
    await runner.run(
        ["sfdisk", "--quiet", "--wipe", "always", "--wipe-partitions", "always", "--", plan.device],
        input=plan.script.encode(),
    )
