"""In-memory pool disks and partitions behind the agent's `Partitions` and `Inventory` seams (csidriver.agent.ports).

Each partition holds a label standing for its bytes ("blank", "wiped", or a copy of another partition's label), so
a test can tell a wiped volume from a filled clone. Failures are injected by name: `busy` partitions refuse deletion
(mounted), `frozen_fail` sources refuse a copy (SourceBusy), `fail_next[method]` raises once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from csidriver.host.clone import SourceBusy
from csidriver.host.disks import PoolDisk
from csidriver.host.parsers import MIB, DiskTable, PartitionEntry
from csidriver.host.partitions import Batch, BatchTimes, InsufficientCapacity, Partition, PartitionBusy, Want, plan

SECTOR = 512


@dataclass
class Slot:
    number: int
    name: str
    start: int  # bytes
    size: int  # bytes
    content: str = "blank"


@dataclass
class Disk:
    path: str
    pool: str
    guid: str
    size: int
    slots: list[Slot] = field(default_factory=list)

    def node(self, slot: Slot) -> str:
        return f"{self.path}p{slot.number}"

    def free_after(self, slot: Slot) -> int:
        following = [s.start for s in self.slots if s.start > slot.start]
        return min(following, default=self.size) - slot.start - slot.size

    def place(self, size: int) -> int:
        """First aligned gap that holds `size` (after the 10 MiB meta partition), or raise."""
        cursor, largest = 10 * MIB, 0
        for s in sorted(self.slots, key=lambda x: x.start):
            gap = s.start - cursor
            if gap >= size:
                return cursor
            largest = max(largest, gap)
            cursor = s.start + s.size
        if self.size - cursor >= size:
            return cursor
        raise InsufficientCapacity(max(largest, self.size - cursor), size)

    def table(self) -> DiskTable:
        """The slots as a GPT table (1 MiB first usable, a meta partition #1 up to 10 MiB) for the real planner."""
        meta = PartitionEntry(1, f"{self.path}p1", 2048, 9 * MIB // SECTOR, "", "", self.pool, "")
        entries = tuple(
            PartitionEntry(s.number, self.node(s), s.start // SECTOR, s.size // SECTOR, "", "", s.name, "")
            for s in self.slots
        )
        return DiskTable("gpt", self.guid, SECTOR, 2048, self.size // SECTOR - 34, 128, (meta, *entries))

    def as_pool_disk(self) -> PoolDisk:
        used = sum(s.size for s in self.slots)
        table = DiskTable("gpt", self.guid, SECTOR, 2048, self.size // SECTOR - 34, 128, ())
        free = self.size - 10 * MIB - used
        return PoolDisk(self.path, self.pool, self.guid, self.size, free, free, 127 - len(self.slots), table)


class FakePartitions:
    def __init__(self, *disks: Disk) -> None:
        self.disks = {d.path: d for d in disks}
        self.busy: set[str] = set()  # partition names refusing deletion (mounted)
        self.frozen_fail: set[str] = set()  # partition names that cannot be frozen as a copy's source
        self.fail_next: dict[str, Exception] = {}
        self.calls: list[tuple[str, str]] = []  # (method, partition name)
        self.on_copy: Callable[[], None] | None = None  # runs in the middle of a copy (a test's crash point)
        self.batches: list[list[str]] = []  # the names of each create_many call, in order
        self.table_writes = 0  # create_many calls that wrote the table (one write each, however many they made)
        # Runs in create_many after the table is written and before anything else (a test's crash point or pause).
        self.after_write: Callable[[], Awaitable[None]] | None = None

    def _hook(self, method: str, name: str) -> None:
        self.calls.append((method, name))
        err = self.fail_next.pop(method, None)
        if err is not None:
            raise err

    def _slot(self, disk_path: str, name: str) -> Slot | None:
        return next((s for s in self.disks[disk_path].slots if s.name == name), None)

    def _partition(self, disk: Disk, slot: Slot) -> Partition:
        return Partition(disk.path, slot.number, slot.name, f"uuid-{slot.name}", disk.node(slot), slot.size, slot.start)

    def by_node(self, node: str) -> tuple[Disk, Slot]:
        for disk in self.disks.values():
            for slot in disk.slots:
                if disk.node(slot) == node:
                    return disk, slot
        raise AssertionError(f"no partition {node}")

    def named(self, name: str) -> Slot | None:
        return next((s for d in self.disks.values() for s in d.slots if s.name == name), None)

    # -- the Partitions seam -------------------------------------------------------------------------------------
    async def find(self, disks: Sequence[PoolDisk], name: str) -> tuple[PoolDisk, PartitionEntry] | None:
        self._hook("find", name)
        for pd in disks:
            disk = self.disks.get(pd.path)
            slot = self._slot(pd.path, name) if disk is not None and disk.pool == pd.pool else None
            if disk is not None and slot is not None:
                entry = PartitionEntry(
                    slot.number, disk.node(slot), slot.start // SECTOR, slot.size // SECTOR, "", "", slot.name, ""
                )
                return pd, entry
        return None

    async def create(self, disk_path: str, pool: str, name: str, size: int, *, room_to_grow: bool = False) -> Partition:
        self._hook("create", name)
        disk = self.disks[disk_path]
        assert disk.pool == pool, f"{disk_path} is not a {pool} disk"
        slot = self._slot(disk_path, name)
        if slot is None:
            want = -(-size // MIB) * MIB
            number = next(n for n in range(2, 200) if n not in {s.number for s in disk.slots})
            slot = Slot(number, name, disk.place(want), want)
            disk.slots.append(slot)
        return self._partition(disk, slot)

    async def create_many(self, disk_path: str, pool: str, wants: Sequence[Want]) -> Batch:
        """Like PartitionManager.create_many: the real planner places every want on the disk as it stands, all new
        ones are written at once (one table write) and wiped; one result per want."""
        self.batches.append([w.name for w in wants])
        self._hook("create_many", ",".join(w.name for w in wants))
        disk = self.disks[disk_path]
        assert disk.pool == pool, f"{disk_path} is not a {pool} disk"
        planned = plan(disk.table(), wants)
        made: dict[str, Slot] = {}
        for entry in planned:
            if isinstance(entry, PartitionEntry) and entry.number == 0 and entry.name not in made:
                number = next(n for n in range(2, 200) if n not in {s.number for s in disk.slots})
                slot = Slot(number, entry.name, entry.start * SECTOR, entry.size * SECTOR)
                disk.slots.append(slot)
                made[entry.name] = slot
        if made:
            self.table_writes += 1
            if self.after_write is not None:
                await self.after_write()
            for slot in made.values():
                slot.content = "wiped"
        batch = Batch(times=BatchTimes(members=len(wants), created=len(made)))
        for want, entry in zip(wants, planned, strict=True):
            if isinstance(entry, Exception):
                batch.results.append(entry)
                continue
            found = self._slot(disk_path, want.name)
            assert found is not None
            if want.adopt:
                found.content = "wiped"
            batch.results.append((self._partition(disk, found), want.name in made or want.adopt))
        return batch

    async def grow(self, disk_path: str, pool: str, name: str, size: int) -> Partition:
        self._hook("grow", name)
        disk = self.disks[disk_path]
        slot = self._slot(disk_path, name)
        assert slot is not None
        want = -(-size // MIB) * MIB
        if want > slot.size:
            room = slot.size + disk.free_after(slot)
            if room < want:
                raise InsufficientCapacity(room, want, f"only {room} bytes are available in place")
            slot.size = want
        return self._partition(disk, slot)

    async def activate(self, disk_path: str, pool: str, name: str) -> Partition | None:
        self._hook("activate", name)
        slot = self._slot(disk_path, name)
        return self._partition(self.disks[disk_path], slot) if slot is not None else None

    async def fill_from(
        self, source: str, target: str, pool: str, progress: Callable[[int], None] | None = None
    ) -> int:
        _, src = self.by_node(source)
        _, dst = self.by_node(target)
        self._hook("fill_from", dst.name)
        if src.name in self.frozen_fail:
            raise SourceBusy(f"{source} is published as a raw block device at /pods/x and cannot be frozen")
        assert dst.size >= src.size
        if self.on_copy is not None:
            self.on_copy()
        dst.content = f"copy of {src.content}"
        if progress is not None:
            progress(src.size)
        return src.size

    async def wipe(self, node: str, *, pool: str | None = None) -> None:
        _, slot = self.by_node(node)
        self._hook("wipe", slot.name)
        slot.content = "wiped"

    async def delete(self, disk_path: str, pool: str, name: str) -> bool:
        self._hook("delete", name)
        if name in self.busy:
            raise PartitionBusy(f"partition {name} is mounted")
        disk = self.disks[disk_path]
        before = len(disk.slots)
        disk.slots = [s for s in disk.slots if s.name != name]
        return len(disk.slots) < before


class FakeInventory:
    """The node reporter's view: the pool disks of FakePartitions that are present (not `gone`)."""

    def __init__(self, parts: FakePartitions) -> None:
        self._parts = parts
        self.gone: set[str] = set()  # disk paths whose disk vanished
        self.refreshes = 0
        self.stamps = 0

    @property
    def disks(self) -> Sequence[PoolDisk]:
        return [d.as_pool_disk() for p, d in self._parts.disks.items() if p not in self.gone]

    async def refresh(self, gather: float = 0.0) -> Sequence[PoolDisk]:
        self.refreshes += 1
        return self.disks

    def stamp(self) -> int:
        self.stamps += 1
        return self.stamps
