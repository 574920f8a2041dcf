"""An in-memory host behind the Publisher's `Host` seam (csidriver.services.publish.Host): partitions, filesystem
signatures, a mount table and the paths publishing creates. tests/contract/test_host.py runs the same checks against
it and against the real host layer on a loop device, so it cannot drift.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from csidriver.host.parsers import MountInfo
from csidriver.host.targets import NoParent, NotABlockDevice, NotEmpty, WrongKind
from csidriver.services.publish import VolumeStats


@dataclass
class Node:
    directory: bool
    empty: bool = True


@dataclass
class FakeHost:
    partitions: dict[str, str] = field(default_factory=dict)  # GPT partition name -> device node
    numbers: dict[str, str] = field(default_factory=dict)  # device node -> "major:minor"
    sizes: dict[str, int] = field(default_factory=dict)  # device node -> bytes
    signatures: dict[str, str] = field(default_factory=dict)  # device node -> filesystem type
    failing: dict[str, str] = field(default_factory=dict)  # device node -> read error
    paths: dict[str, Node] = field(default_factory=dict)  # every path that exists, directories included
    links: set[str] = field(default_factory=set)  # paths that are symbolic links
    table: list[MountInfo] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    fail_mount: Exception | None = None

    def add_device(self, device: str, number: str, size: int, partition: str = "") -> None:
        self.numbers[device] = number
        self.sizes[device] = size
        if partition:
            self.partitions[partition] = device

    def add_dir(self, path: str, empty: bool = True) -> None:
        self.paths[path] = Node(True, empty)

    def add_file(self, path: str, empty: bool = True) -> None:
        self.paths[path] = Node(False, empty)

    def add_link(self, path: str) -> None:
        self.links.add(path)

    async def locate(self, pool: str | None, partition: str) -> str | None:
        return self.partitions.get(partition)

    async def mounts(self) -> list[MountInfo]:
        return list(self.table)

    async def probe(self, device: str) -> Mapping[str, str]:
        fs = self.signatures.get(device)
        return {"TYPE": fs} if fs else {}

    async def make_filesystem(self, device: str, fstype: str) -> None:
        self.signatures[device] = fstype

    def _entry(
        self, source: str, target: str, fstype: str, options: tuple[str, ...], root: str = "/", number: str = ""
    ) -> MountInfo:
        number = number or self.numbers.get(source, "0:0")
        return MountInfo(len(self.table) + 100, 1, number, root, target, options, fstype, source, ())

    async def mount(self, source: str, target: str, fstype: str, options: list[str]) -> None:
        if self.fail_mount is not None:
            raise self.fail_mount
        opts = ("ro" if "ro" in options else "rw", *(o for o in options if o not in ("ro", "rw")))
        self.table.append(self._entry(source, target, fstype, opts))
        self.paths[target].empty = False

    async def bind_mount(self, source: str, target: str, read_only: bool) -> None:
        if self.fail_mount is not None:
            raise self.fail_mount
        root = source.removeprefix("/dev")
        self.table.append(self._entry("udev", target, "devtmpfs", ("ro" if read_only else "rw",), root, "0:5"))

    async def unmount(self, target: str) -> None:
        for i in range(len(self.table) - 1, -1, -1):
            if self.table[i].mount_point == target:
                del self.table[i]
                if target in self.paths and not any(m.mount_point == target for m in self.table):
                    self.paths[target].empty = True
                return

    async def stats(self, path: str) -> VolumeStats:
        device = next(m.source for m in reversed(self.table) if m.mount_point == path)
        return VolumeStats(block=False, total=self.sizes[device], used=0, available=self.sizes[device])

    async def read_problem(self, device: str) -> str | None:
        return self.failing.get(device)

    async def block_size(self, device: str) -> int:
        return self.sizes[device]

    async def grow_filesystem(self, device: str, mount_point: str, fstype: str) -> None:
        self.grown.append(mount_point)

    async def make_target(self, path: str, directory: bool) -> bool:
        found = self.paths.get(path)
        if found is None:
            if os.path.dirname(path) not in self.paths:
                raise NoParent(f"the parent directory of {path} does not exist (the CO creates it)")
            self.paths[path] = Node(directory)
            return True
        if found.directory != directory:
            raise WrongKind(f"{path} exists and is not a {'directory' if directory else 'regular file'}")
        if not found.empty:
            raise NotEmpty(f"{path} is not empty")
        return False

    async def target_removable(self, path: str) -> bool:
        found = self.paths.get(path)
        return found is not None and found.empty

    async def remove_target(self, path: str) -> None:
        found = self.paths.get(path)
        if found is None:
            return
        if not found.empty:
            raise NotEmpty(f"{path} is not empty after unmount; refusing to delete data")
        del self.paths[path]

    async def device_number(self, device: str) -> str:
        if device not in self.numbers:
            raise NotABlockDevice(f"{device} is not a block device")
        return self.numbers[device]

    async def exists(self, path: str) -> bool:
        return path in self.paths or path in self.numbers

    async def is_dir(self, path: str) -> bool:
        found = self.paths.get(path)
        return found is not None and found.directory

    async def link_problem(self, path: str) -> str | None:
        if any(path.startswith(link + "/") for link in self.links):
            return "goes through a symbolic link"
        return "is a symbolic link" if path in self.links else None
