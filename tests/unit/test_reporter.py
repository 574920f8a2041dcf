"""NodeReporter: the DeviceNode is created when absent, written only when its content changes, keeps its owner and
the operator's annotations, lists failed disks as unhealthy, and rescans when poked or when the host changes.

In memory: the API server side is a DeviceNode store with optimistic concurrency, the inventory a scripted list of
pool disks, the read probe a dict. NodeReporter also reads sysfs directly (host.disks.sys_identity, which has
/sys/class/block hard-coded, and host.health.present): the tests replace those two names in the reporter's module.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from csidriver.agent import reporter as reporter_module
from csidriver.agent.reporter import NodeReporter
from csidriver.api import constants as c
from csidriver.host.disks import DiskInventory, PoolDisk, ScanResult, partition_of
from csidriver.host.parsers import DiskTable
from csidriver.kube.resources import Conflict, Gone, Kube

NODE = "node-a"
GUID_A = "AAAAAAAA-0000-0000-0000-000000000001"
GUID_B = "BBBBBBBB-0000-0000-0000-000000000002"
GIB = 1 << 30
OWNER = {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": "1234", "controller": False}
LABELS = {"topology.device.csi.openebs.io/node": NODE}
GEN = c.INVENTORY_GENERATION_ANNOTATION


def disk(path: str, guid: str, free: int = 10 * GIB, pool: str = "ssd") -> PoolDisk:
    table = DiskTable("gpt", guid, 512, 2048, 2 * GIB // 512, 128, ())
    return PoolDisk(path, pool, guid, 20 * GIB, free, free, 3, table)


@dataclass
class Store:
    """The DeviceNodes of the namespace as the API server keeps them: replace needs the version last read."""

    namespace: str = "openebs"
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 0
    writes: int = 0
    wrote: asyncio.Event = field(default_factory=asyncio.Event)

    def _stamp(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.wrote.set()
        obj = copy.deepcopy(dict(body))
        obj["metadata"]["resourceVersion"] = str(self.version)
        return obj

    def edit(self, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """Someone else (an operator, kubectl) writes the object."""
        obj = copy.deepcopy(self.nodes[name])
        change(obj)
        self.nodes[name] = self._stamp(obj)

    async def get_device_node(self, name: str) -> dict[str, Any] | None:
        got = self.nodes.get(name)
        return copy.deepcopy(got) if got is not None else None

    async def create_device_node(self, body: Mapping[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in self.nodes:
            raise Conflict(name)
        self.writes += 1
        self.nodes[name] = self._stamp(body)
        return copy.deepcopy(self.nodes[name])

    async def replace_device_node(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        current = self.nodes.get(name)
        if current is None:
            raise Gone(name)
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict(name)
        self.writes += 1
        self.nodes[name] = self._stamp(body)
        return copy.deepcopy(self.nodes[name])

    def devices(self) -> dict[str, dict[str, Any]]:
        return {d["uuid"]: d for d in self.nodes[NODE]["devices"]}


@dataclass
class Inventory:
    """The pool disks a scan finds and the kernel's block device names; a scan can be held at a gate."""

    disks: list[PoolDisk] = field(default_factory=list)
    names: set[str] = field(default_factory=set)
    scans: int = 0
    gate: asyncio.Event | None = None
    scanning: asyncio.Event = field(default_factory=asyncio.Event)

    def block_names(self) -> frozenset[str]:
        return frozenset(self.names)

    async def scan_detailed(self) -> ScanResult:
        self.scans += 1
        self.scanning.set()
        if self.gate is not None:
            await self.gate.wait()
        return ScanResult(tuple(self.disks), ())


async def until(event: asyncio.Event, cond: Callable[[], bool]) -> None:
    """Until `cond` holds, checking it each time `event` fires (a scan starts, a write lands)."""

    async def wait() -> None:
        while not cond():
            event.clear()
            await event.wait()

    await asyncio.wait_for(wait(), 5)


@dataclass
class Host:
    """sysfs as the reporter reads it: (diskseq, size) by kernel name, device nodes present, read failures."""

    identity: dict[str, tuple[str, str]] = field(default_factory=dict)
    failing: dict[str, str] = field(default_factory=dict)

    def sys_identity(self, name: str) -> tuple[str, str] | None:
        return self.identity.get(name)

    def present(self, path: str) -> bool:
        return path.removeprefix("/dev/") in self.identity

    def probe(self, path: str) -> str | None:
        return self.failing.get(path)

    def plug(self, *disks: PoolDisk, seq: int = 1) -> None:
        for d in disks:
            self.identity[d.path.removeprefix("/dev/")] = (str(seq), str(d.size // 512))


@dataclass
class World:
    store: Store
    inventory: Inventory
    host: Host
    held: set[str] = field(default_factory=set)
    owner: dict[str, Any] | None = field(default_factory=lambda: dict(OWNER))

    recovered: list[set[str]] = field(default_factory=list)

    def reporter(self, write_delay: float = 10.0) -> NodeReporter:
        return NodeReporter(
            cast(Kube, self.store),
            cast(DiskInventory, self.inventory),
            NODE,
            LABELS,
            self.owner,
            3600.0,
            held=lambda: set(self.held),
            probe=self.host.probe,
            write_delay=write_delay,
            recovered=self.recovered.append,
        )

    def add(self, *disks: PoolDisk) -> None:
        self.inventory.disks.extend(disks)
        self.inventory.names.update(d.path.removeprefix("/dev/") for d in disks)
        self.host.plug(*disks)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> World:
    host = Host()
    monkeypatch.setattr(reporter_module, "sys_identity", host.sys_identity)
    monkeypatch.setattr(reporter_module, "present", host.present)
    w = World(Store(), Inventory(), host)
    w.add(disk("/dev/sdb", GUID_B, free=5 * GIB), disk("/dev/sda", GUID_A))
    return w


async def test_an_absent_device_node_is_created_with_its_owner_labels_and_sorted_devices(world: World) -> None:
    rep = world.reporter()
    found = await rep.refresh()
    assert {d.guid for d in found} == {GUID_A, GUID_B}
    assert rep.scanned.is_set()
    obj = world.store.nodes[NODE]
    assert obj["apiVersion"] == c.API_VERSION and obj["kind"] == c.NODE_KIND
    meta = obj["metadata"]
    assert meta["namespace"] == "openebs" and meta["labels"] == LABELS
    assert meta["ownerReferences"] == [OWNER], "a Node's DeviceNode must go with the Node"
    assert [d["uuid"] for d in obj["devices"]] == [GUID_A, GUID_B]
    a = world.store.devices()[GUID_A]
    assert a == {
        "name": "ssd",
        "uuid": GUID_A,
        "size": str(20 * GIB),
        "free": str(10 * GIB),
        "largestExtent": str(10 * GIB),
        "freeEntries": 3,
        "path": "/dev/sda",
        "healthy": True,
        "cordoned": False,
    }


async def test_an_unchanged_rescan_writes_nothing(world: World) -> None:
    rep = world.reporter()
    await rep.refresh()
    version = world.store.nodes[NODE]["metadata"]["resourceVersion"]
    for _ in range(3):
        await rep.refresh()
    assert world.inventory.scans == 4
    assert world.store.writes == 1
    assert world.store.nodes[NODE]["metadata"]["resourceVersion"] == version


async def test_a_restarted_agent_writes_nothing_when_the_stored_node_is_current(world: World) -> None:
    await world.reporter().refresh()
    again = world.reporter()  # a new process: it reads what the API server holds first
    await again.refresh()
    assert world.store.writes == 1


async def test_a_change_is_written_over_the_version_read_keeping_annotations_and_owner(world: World) -> None:
    rep = world.reporter()
    await rep.refresh()
    # An operator cordons a disk after our write: our next write would be over a stale version.
    cordon = {c.CORDON_ANNOTATION: GUID_A}
    world.store.edit(NODE, lambda o: o["metadata"].__setitem__("annotations", cordon))
    world.inventory.disks[1] = disk("/dev/sda", GUID_A, free=1 * GIB)  # a volume was carved
    await rep.refresh()
    obj = world.store.nodes[NODE]
    assert world.store.devices()[GUID_A]["free"] == str(1 * GIB)
    assert obj["metadata"]["annotations"] == {**cordon, GEN: "2"}, "a rewrite dropped what the operator put there"
    assert obj["metadata"]["ownerReferences"] == [OWNER]
    assert world.store.writes == 2


async def test_a_stored_node_without_its_owner_reference_gets_it_back(world: World) -> None:
    world.owner = None
    await world.reporter().refresh()
    assert "ownerReferences" not in world.store.nodes[NODE]["metadata"]
    world.owner = dict(OWNER)
    await world.reporter().refresh()
    assert world.store.nodes[NODE]["metadata"]["ownerReferences"] == [OWNER]
    assert world.store.writes == 2


async def test_a_disk_failing_reads_is_reported_unhealthy_with_no_space(world: World) -> None:
    rep = world.reporter()
    await rep.refresh()
    world.host.failing["/dev/sda"] = "Input/output error"
    found = await rep.refresh()
    assert [d.guid for d in found] == [GUID_B], "a disk that fails reads must not be offered to placement"
    a = world.store.devices()[GUID_A]
    assert a["healthy"] is False and a["free"] == "0" and a["largestExtent"] == "0" and a["freeEntries"] == 0
    assert a["size"] == str(20 * GIB) and a["path"] == "/dev/sda"
    assert world.store.devices()[GUID_B]["healthy"] is True
    assert world.recovered == []
    del world.host.failing["/dev/sda"]
    await rep.refresh()
    assert world.store.devices()[GUID_A]["healthy"] is True
    assert world.recovered == [{GUID_A}], "volumes waiting on the disk are told once it reads again"
    await rep.refresh()
    assert world.recovered == [{GUID_A}]


async def test_a_vanished_disk_stays_unhealthy_only_while_a_volume_is_on_it(world: World) -> None:
    rep = world.reporter()
    await rep.refresh()
    world.held = {GUID_A.lower()}  # a volume of this node is on disk A (the GUID case does not matter)
    world.inventory.disks = [d for d in world.inventory.disks if d.guid != GUID_A]
    await rep.refresh()
    assert world.store.devices()[GUID_A]["healthy"] is False
    assert [d.guid for d in rep.failed] == [GUID_A]
    world.held = set()  # its volumes went with the disk to another node
    await rep.refresh()
    assert set(world.store.devices()) == {GUID_B}, "a disk moved away left a stale row"
    assert rep.failed == []


async def test_a_disk_seen_unreadable_first_and_never_healthy_is_listed_unhealthy(world: World) -> None:
    world.host.failing["/dev/sdb"] = "Input/output error"
    rep = world.reporter()
    await rep.refresh()
    assert world.store.devices()[GUID_B]["healthy"] is False
    assert world.store.devices()[GUID_A]["healthy"] is True


async def test_too_many_conflicting_writers_is_an_error(world: World) -> None:
    rep = world.reporter()
    await rep.refresh()
    real_get = world.store.get_device_node

    async def get_then_someone_writes(name: str) -> dict[str, Any] | None:
        got = await real_get(name)
        world.store.edit(NODE, lambda o: None)  # bumps the version behind our back every time
        return got

    world.store.get_device_node = get_then_someone_writes  # type: ignore[method-assign]
    world.store.edit(NODE, lambda o: None)
    world.inventory.disks[0] = disk("/dev/sdb", GUID_B, free=1)
    with pytest.raises(RuntimeError, match="too many conflicting writers"):
        await rep.refresh()
    assert world.store.devices()[GUID_B]["free"] == str(5 * GIB)


async def test_concurrent_refreshes_share_one_later_scan(world: World) -> None:
    rep = world.reporter()
    gate = world.inventory.gate = asyncio.Event()
    first = asyncio.create_task(rep.refresh())
    await until(world.inventory.scanning, lambda: world.inventory.scans == 1)
    # Asked while the first scan runs: they cannot use it (it may predate their change) but may share the next.
    later = [asyncio.create_task(rep.refresh()) for _ in range(3)]
    await asyncio.sleep(0.01)
    assert world.inventory.scans == 1
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 5)
    assert world.inventory.scans == 2


class Running:
    def __init__(self, rep: NodeReporter, inventory: Inventory) -> None:
        self.rep = rep
        self.inventory = inventory

    async def scans_reach(self, n: int) -> None:
        await until(self.inventory.scanning, lambda: self.inventory.scans >= n)

    async def quiet(self, n: int) -> None:
        await asyncio.sleep(0.05)  # five health checks
        assert self.inventory.scans == n, "rescanned with nothing changed"


async def with_run(world: World, body: Callable[[Running], Any]) -> None:
    rep = world.reporter()
    task = asyncio.create_task(rep.run(health_interval=0.01))
    try:
        r = Running(rep, world.inventory)
        await r.scans_reach(1)
        await asyncio.wait_for(rep.scanned.wait(), 5)
        await r.quiet(1)
        await body(r)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_poke_triggers_a_rescan(world: World) -> None:
    async def body(r: Running) -> None:
        r.rep.poke()
        await r.scans_reach(2)
        await r.quiet(2)

    await with_run(world, body)


async def test_a_new_block_device_a_replaced_disk_or_a_failing_read_trigger_a_rescan(world: World) -> None:
    async def body(r: Running) -> None:
        world.inventory.names.add("sdc")  # a disk was plugged in
        await r.scans_reach(2)
        await r.quiet(2)
        world.host.plug(world.inventory.disks[0], seq=7)  # other media under /dev/sdb
        await r.scans_reach(3)
        await r.quiet(3)
        world.host.failing["/dev/sda"] = "Input/output error"
        await r.scans_reach(4)
        await until(world.store.wrote, lambda: world.store.devices()[GUID_A]["healthy"] is False)
        await r.quiet(4)  # still failing: no rescan on every check
        del world.host.failing["/dev/sda"]  # reads again
        await r.scans_reach(5)
        await until(world.store.wrote, lambda: world.store.devices()[GUID_A]["healthy"] is True)

    await with_run(world, body)


def generation(world: World) -> int:
    return int(world.store.nodes[NODE]["metadata"]["annotations"][GEN])


async def test_every_write_carries_the_generation_of_its_scan_and_a_new_process_continues_the_numbering(
    world: World,
) -> None:
    rep = world.reporter()
    await rep.refresh()
    assert generation(world) == 1
    await rep.refresh()  # nothing changed: no write, the generation it scanned with is not written
    world.inventory.disks[1] = disk("/dev/sda", GUID_A, free=1 * GIB)
    await rep.refresh()
    assert generation(world) == 3 and world.store.writes == 2
    again = world.reporter()  # a new process numbers on from what the API server holds
    world.inventory.disks[1] = disk("/dev/sda", GUID_A, free=2 * GIB)
    await again.refresh()
    assert generation(world) == 4


async def test_a_stamp_is_written_by_a_scan_that_started_after_it_within_the_delay(world: World) -> None:
    rep = world.reporter(write_delay=0.05)
    await rep.refresh()
    task = asyncio.create_task(rep.run(health_interval=3600))
    try:
        await until(world.inventory.scanning, lambda: world.inventory.scans >= 2)  # run's first resync
        await asyncio.sleep(0.01)
        gate = world.inventory.gate = asyncio.Event()
        world.store.wrote.clear()
        in_flight = asyncio.create_task(rep.refresh())  # a scan already running when the partition is made
        await until(world.inventory.scanning, lambda: world.inventory.scans == 3)
        world.inventory.disks[1] = disk("/dev/sda", GUID_A, free=1 * GIB)  # the partition is made
        stamps = [rep.stamp() for _ in range(3)]  # three creates of a burst share one stamp and one write
        assert len(set(stamps)) == 1 and stamps[0] > 3
        gate.set()
        await in_flight
        assert generation(world) == 3 < stamps[0], "a scan that started before the partition cannot claim it"
        await until(world.store.wrote, lambda: generation(world) >= stamps[0])
        assert world.store.devices()[GUID_A]["free"] == str(1 * GIB)
        assert world.inventory.scans == 4
        writes = world.store.writes
        await asyncio.sleep(0.2)
        assert world.store.writes == writes and world.inventory.scans == 4, "wrote again with nothing stamped"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_stamp_is_written_even_when_the_scan_finds_nothing_new(world: World) -> None:
    """A scan that began after the partition was made but was written before the stamp was taken shows it already:
    the next scan sees no change, yet must write the generation the volume waits for."""
    rep = world.reporter(write_delay=0.01)
    await rep.refresh()
    stamp = rep.stamp()
    await rep.refresh()  # content unchanged; generation written all the same
    assert generation(world) >= stamp and world.store.writes == 2


async def test_a_restarted_agent_writes_stamps_its_previous_process_took_and_did_not_write(world: World) -> None:
    first = world.reporter()
    await first.refresh()
    stamp = first.stamp()  # the volume reads Ready with it; the process dies before writing
    again = world.reporter(write_delay=0.01)
    await again.refresh()  # unchanged: no write
    assert generation(world) < stamp and world.store.writes == 1
    task = asyncio.create_task(again.run(health_interval=3600))
    try:
        again.promise(stamp)  # found on its volumes once the informer synced
        await until(world.store.wrote, lambda: generation(world) >= stamp)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_gathered_refreshes_share_one_scan_started_after_the_last_of_them_asked(world: World) -> None:
    rep = world.reporter()
    await rep.refresh()
    first = asyncio.create_task(rep.refresh(gather=0.05))
    await asyncio.sleep(0.02)
    world.inventory.disks[1] = disk("/dev/sda", GUID_A, free=1 * GIB)  # a partition removed meanwhile
    second = asyncio.create_task(rep.refresh(gather=0.05))
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert world.inventory.scans == 2 and world.store.writes == 2
    assert world.store.devices()[GUID_A]["free"] == str(1 * GIB)
    await asyncio.wait_for(rep.refresh(gather=0.01), 5)  # after that gathering: a scan of its own
    assert world.inventory.scans == 3


@pytest.mark.parametrize(
    ("name", "disk", "expected"),
    [
        ("sda1", "sda", True),
        ("sdaa", "sda", False),  # another disk
        ("sda", "sda", False),
        ("loop20p3", "loop20", True),
        ("loop20", "loop2", False),  # a disk whose name ends in a digit has "p" before partition numbers
        ("loop2p1", "loop2", True),
        ("nvme0n1p12", "nvme0n1", True),
        ("nvme0n12", "nvme0n1", False),
    ],
)
def test_partition_names_follow_the_kernel_rule(name: str, disk: str, expected: bool) -> None:
    assert partition_of(name, disk) is expected


async def test_partitions_of_pool_disks_coming_and_going_trigger_no_rescan(world: World) -> None:
    """Our own creates and deletes add and remove them; a scan for each would write the DeviceNode each time."""

    async def body(r: Running) -> None:
        world.inventory.names.update({"sda1", "sdb2"})
        await r.quiet(1)
        world.inventory.names.add("sdc1")  # a partition table on another disk: perhaps a new pool disk
        await r.scans_reach(2)
        await r.quiet(2)

    await with_run(world, body)
