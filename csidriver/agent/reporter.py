"""DeviceNode reconciler: scan this node's pool disks and publish them, writing only when something changed.

Runs right after every partition change (callers await `refresh`), plus a slow jittered resync. Concurrent
refresh requests coalesce: a caller waits for one scan that started after it asked.

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
from csidriver.api.objects import Device, devices_list
from csidriver.host.disks import DiskInventory, PoolDisk, sys_identity
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
    ) -> None:
        """`held` returns the GPT GUIDs (upper case) of the disks this node's volumes are placed on; `probe` says
        why a disk cannot be read (an O_DIRECT read of its first 4 KiB, bounded in time), or None."""
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

    async def refresh(self) -> list[PoolDisk]:
        want = self._started + 1
        async with self._lock:
            if self._completed >= want:
                return self.disks
            self._started += 1
            ticket = self._started
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
            self.failed = [d for g, d in self._known.items() if g not in healthy]
            self._known.update({d.guid: d for d in self.disks})
            for d in newly:
                log.error("pool disk %s (%s, pool %s) failed: unreadable or gone", d.guid, d.path, d.pool)
            await self._publish(devices_of(self.disks, self.failed))
            # Ready (Probe) only once the DeviceNode holds this scan: a CreateVolume right after the agent starts
            # must find its pools.
            self.scanned.set()
            self._completed = ticket
            return self.disks

    async def _publish(self, devices: tuple[Device, ...]) -> None:
        body = self._body(devices)
        if self._written is None:
            current = await self._kube.get_device_node(self._node)
            if current is None:
                self._written = await self._kube.create_device_node(body)
                return
            self._written = current
        if _same(self._written, body):
            return
        for _ in range(5):
            assert self._written is not None
            current = self._written["metadata"]
            body["metadata"]["resourceVersion"] = current["resourceVersion"]
            # Keep what operators put there (cordoned disks): a replace would otherwise drop it.
            body["metadata"]["annotations"] = current.get("annotations") or {}
            try:
                self._written = await self._kube.replace_device_node(self._node, body)
                return
            except Conflict:
                self._written = await self._kube.get_device_node(self._node) or {}
                if not self._written:
                    self._written = await self._kube.create_device_node(body)
                    return
        raise RuntimeError(f"DeviceNode {self._node}: too many conflicting writers")

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
        return self._vanished() or self._failing() or self._inventory.block_names() != self._block_names

    async def run(self, health_interval: float = 5.0) -> None:
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
