"""DeviceNode reconciler: scan this node's pool disks and publish them, writing only when something changed.

Runs right after every partition change that frees or moves space (callers await `refresh`), plus a slow jittered
resync. Concurrent refresh requests coalesce: a caller waits for one scan that started after it asked.

A create does not wait for a scan: it takes a *stamp* (`stamp`), the inventory generation of the next scan to start,
and records it on its Ready volume; `run` writes the DeviceNode a coalescing window later, so a burst of creates costs
one write. Each written DeviceNode carries the generation of the scan it shows (an annotation), and a scan with
generation g started after every stamp <= g was taken, so it shows their partitions: the controller counts a Ready
volume's bytes itself until its node's DeviceNode reaches the volume's stamp. Stamps not yet written when the agent
stopped are found on its volumes after a restart (`promise`).

A pool disk that was seen and is now unreadable or gone stays listed (unhealthy, no space) only while a volume of
this node is placed on it: that is what the operator must act on. Once no volume of this node is on it (its volumes
were migrated with the disk to another node, or deleted) the row goes, so a disk moved away leaves no stale row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from csidriver.api import constants as c
from csidriver.api.objects import Device, devices_list, inventory_generation
from csidriver.host.disks import DiskInventory, PoolDisk, partition_of, sys_identity
from csidriver.host.health import ReadProbe, present
from csidriver.kube.resources import Conflict, Kube

log = logging.getLogger(__name__)


def devices_of(disks: Sequence[PoolDisk], failed: Sequence[PoolDisk] = ()) -> tuple[Device, ...]:
    """Healthy disks as scanned, and failed ones (unreadable or gone) as last seen, with no space to offer."""
    healthy = [Device(d.pool, d.guid, d.size, d.free, d.largest_extent, d.free_entries, d.path) for d in disks]
    broken = [Device(d.pool, d.guid, d.size, 0, 0, 0, d.path, healthy=False) for d in failed]
    return tuple(sorted(healthy + broken, key=lambda d: (d.name, d.uuid)))


class NodeReporter:
    def __init__(
        self,
        kube: Kube,
        inventory: DiskInventory,
        node_id: str,
        labels: Mapping[str, str],
        owner: Mapping[str, Any] | None,
        resync_seconds: float,
        held: Callable[[], set[str]] = set,
        probe: Callable[[str], str | None] | None = None,
        write_delay: float = 5.0,
        recovered: Callable[[set[str]], None] = lambda _guids: None,
    ) -> None:
        """`held` returns the GPT GUIDs (upper case) of the disks this node's volumes are placed on; `probe` says
        why a disk cannot be read (an O_DIRECT read of its first 4 KiB, bounded in time), or None; `write_delay` is
        how long after a stamp the DeviceNode is written (stamps taken meanwhile share the write); `recovered` is
        told the GUIDs of failed disks that scan healthy again, once the DeviceNode says so."""
        self._recovered = recovered
        self._kube = kube
        self._inventory = inventory
        self._node = node_id
        self._labels = dict(labels)
        self._owner = owner
        self._resync = resync_seconds
        self._held = held
        self._probe = probe or ReadProbe().problem
        self._unreadable: dict[str, str] = {}  # path -> why: pool disks present at the last scan that fail reads
        self._readable_before: dict[str, bool] = {}  # failed disk path -> whether it read at the previous check
        self._poked = False
        self._lock = asyncio.Lock()
        self._started = 0
        self._completed = 0
        self._written: dict[str, Any] | None = None  # last body the API server holds (as we wrote or read it)
        self._write_delay = write_delay
        self._generation = 0  # inventory generation the API server holds (as we wrote or read it)
        self._next_generation = 1  # generation of the next scan to start
        self._promised = 0  # highest generation stamped on a volume: the DeviceNode must reach it
        self._stamped = asyncio.Event()  # a stamp is waiting for its write
        self._gathering: asyncio.Future[list[PoolDisk]] | None = None  # the gathered refresh callers may still join
        self.disks: list[PoolDisk] = []  # healthy pool disks of the last scan
        self.failed: list[PoolDisk] = []  # pool disks seen before that are now unreadable or gone
        self._known: dict[str, PoolDisk] = {}
        self._block_names: frozenset[str] = frozenset()  # block devices present when the last scan started
        self._identities: dict[str, tuple[str, str] | None] = {}  # sys_identity of each healthy disk at that moment
        self.scanned = asyncio.Event()

    def _body(self, devices: tuple[Device, ...]) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self._node, "namespace": self._kube.namespace, "labels": self._labels}
        if self._owner:
            meta["ownerReferences"] = [dict(self._owner)]
        return {
            "apiVersion": c.API_VERSION,
            "kind": c.NODE_KIND,
            "metadata": meta,
            "devices": devices_list(devices),
        }

    async def refresh(self, gather: float = 0.0) -> list[PoolDisk]:
        """Scan, and write the DeviceNode when it changed (or a stamp waits for it). With `gather`, the scan starts
        that long after the first of the callers asking meanwhile, who all share it (a burst of deletions: one scan
        and one write for several)."""
        if gather > 0:
            if self._gathering is None:
                self._gathering = asyncio.ensure_future(self._gathered(gather))
            return await asyncio.shield(self._gathering)
        want = self._started + 1
        async with self._lock:
            if self._completed >= want:
                return self.disks
            self._started += 1
            ticket = self._started
            generation = self._next_generation
            self._next_generation += 1
            self._block_names = await asyncio.to_thread(self._inventory.block_names)
            before = await asyncio.to_thread(lambda: {n: sys_identity(n) for n in self._block_names})
            result = await self._inventory.scan_detailed()
            found = list(result.disks)
            # A table read can be served from the page cache while the disk fails every real read: ask the disk.
            problems = await asyncio.to_thread(lambda: {d.path: self._probe(d.path) for d in found})
            for d in found:
                why = problems[d.path]
                if why and d.path not in self._unreadable:
                    log.error("pool disk %s (%s, pool %s) fails reads: %s", d.guid, d.path, d.pool, why)
                elif not why and d.path in self._unreadable:
                    log.info("pool disk %s (%s) reads again", d.guid, d.path)
            self._unreadable = {d.path: why for d in found if (why := problems[d.path])}
            self.disks = [d for d in found if not problems[d.path]]
            self._known.update({d.guid: d for d in found if problems[d.path]})
            self._identities = {d.path: before.get(os.path.basename(d.path)) for d in self.disks}
            healthy = {d.guid for d in self.disks}
            held = {g.upper() for g in self._held()}
            present = {d.guid for d in found}
            for g in [g for g in self._known if g not in healthy | present and g.upper() not in held]:
                log.info("pool disk %s is gone and no volume of this node is on it: no longer reported", g)
                del self._known[g]
            newly = [d for g, d in self._known.items() if g not in healthy and d not in self.failed]
            back = {d.guid for d in self.failed} & healthy
            self.failed = [d for g, d in self._known.items() if g not in healthy]
            self._known.update({d.guid: d for d in self.disks})
            for d in newly:
                log.error("pool disk %s (%s, pool %s) failed: unreadable or gone", d.guid, d.path, d.pool)
            await self._publish(devices_of(self.disks, self.failed), generation)
            if back:
                self._recovered(back)
            # Ready (Probe) only once the DeviceNode holds this scan: a CreateVolume right after the agent starts
            # must find its pools.
            self.scanned.set()
            self._completed = ticket
            return self.disks

    async def _gathered(self, delay: float) -> list[PoolDisk]:
        await asyncio.sleep(delay)
        self._gathering = None  # who asks from here on may need a scan that starts later than this one
        return await self.refresh()

    def stamp(self) -> int:
        """The inventory generation from which this node's DeviceNode shows a partition made before this call; `run`
        writes it within the write delay."""
        stamp = self._next_generation
        self.promise(stamp)
        return stamp

    def promise(self, generation: int) -> None:
        """Have the DeviceNode reach `generation` soon (a stamp of a volume, perhaps from before a restart)."""
        if generation > self._promised:
            self._promised = generation
            self._next_generation = max(self._next_generation, generation)
        if self._promised > self._generation:
            self._stamped.set()

    async def _publish(self, devices: tuple[Device, ...], generation: int) -> None:
        body = self._body(devices)
        if self._written is None:
            await self._read()
            # This process's first write continues the numbering: no stamp was taken before its first scan.
            generation = max(generation, self._generation + 1)
            self._next_generation = max(self._next_generation, generation + 1)
        if self._written and _same(self._written, body) and self._generation >= self._promised:
            return
        for _ in range(5):
            try:
                if not self._written:
                    self._written = await self._kube.create_device_node(self._stamped_body(body, {}, generation))
                else:
                    current = self._written["metadata"]
                    # Keep what operators put there (cordoned disks): a replace would otherwise drop it.
                    stamped = self._stamped_body(body, current.get("annotations") or {}, generation)
                    stamped["metadata"]["resourceVersion"] = current["resourceVersion"]
                    self._written = await self._kube.replace_device_node(self._node, stamped)
                self._generation = generation
                return
            except Conflict:
                await self._read()
                # This annotation has one writer, this agent: a higher number found is not expected, but is passed.
                generation = max(generation, self._generation + 1)
                self._next_generation = max(self._next_generation, generation + 1)
        raise RuntimeError(f"DeviceNode {self._node}: too many conflicting writers")

    async def _read(self) -> None:
        """What the API server holds ({} when there is no DeviceNode) and its inventory generation."""
        self._written = await self._kube.get_device_node(self._node) or {}
        self._generation = inventory_generation(self._written.get("metadata") or {})

    @staticmethod
    def _stamped_body(body: dict[str, Any], annotations: Mapping[str, str], generation: int) -> dict[str, Any]:
        meta = {**body["metadata"], "annotations": {**annotations, c.INVENTORY_GENERATION_ANNOTATION: str(generation)}}
        return {**body, "metadata": meta}

    def poke(self) -> None:
        """Ask for a scan soon (within the health interval), e.g. when a volume left this node."""
        self._poked = True

    def _vanished(self) -> bool:
        """Cheap check, no command run: has a healthy disk's block device disappeared, shrunk to nothing, or been
        replaced by other media under the same name?"""
        for d in self.disks:
            now = sys_identity(os.path.basename(d.path))
            if now is None or now[1] in ("", "0") or now != self._identities.get(d.path):
                return True
        return False

    def _failing(self) -> bool:
        """A healthy disk now fails a direct read, or a failed disk whose device is there reads again (a disk
        whose table could not be read is among the failed ones). Edge-triggered for failed disks: a path that
        reads but still does not scan as that pool disk (its name now taken by another device) asks for one rescan,
        not one every check."""
        if any(self._probe(d.path) for d in self.disks):
            return True
        changed = False
        for path in {d.path for d in self.failed} | set(self._unreadable):
            readable = present(path) and self._probe(path) is None
            if readable and not self._readable_before.get(path, False):
                changed = True
            self._readable_before[path] = readable
        return changed

    def _changed(self) -> bool:
        """A disk vanished, failed or recovered, or a block device or partition table appeared (a disk added while
        we run)."""
        if self._poked:
            self._poked = False
            return True
        if self._vanished() or self._failing():
            return True
        # Partitions of our pool disks come and go with our own creates and deletes: only other names count.
        pools = [os.path.basename(d.path) for d in self.disks]

        def others(names: frozenset[str]) -> set[str]:
            return {n for n in names if not any(partition_of(n, disk) for disk in pools)}

        names = self._inventory.block_names()
        return names != self._block_names and others(names) != others(self._block_names)

    async def run(self, health_interval: float = 5.0) -> None:
        """Resync and watch the disks' health; write the DeviceNode for stamps."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._write_stamps())
            tg.create_task(self._rescan(health_interval))

    async def _write_stamps(self) -> None:
        while True:
            await self._stamped.wait()
            await asyncio.sleep(self._write_delay)
            self._stamped.clear()  # stamps taken from here on wait for the next round
            if self._generation >= self._promised:
                continue  # written meanwhile (a deletion's or the resync's scan)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("DeviceNode %s write for new partitions failed: %s", self._node, e)
                self._stamped.set()

    async def _rescan(self, health_interval: float) -> None:
        while True:
            try:
                await self.refresh()
                delay = self._resync * (0.9 + random.random() / 5)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("DeviceNode %s refresh failed: %s", self._node, e)
                delay = min(self._resync, 5.0)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline:
                await asyncio.sleep(min(health_interval, max(deadline - time.monotonic(), 0)))
                if await asyncio.to_thread(self._changed):
                    break


def _same(current: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    meta = current.get("metadata") or {}
    want = body["metadata"]
    return bool(
        list(current.get("devices") or []) == body["devices"]
        and (meta.get("labels") or {}) == want["labels"]
        and (meta.get("ownerReferences") or []) == want.get("ownerReferences", [])
    )
