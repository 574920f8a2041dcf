"""DeviceNode reconciler: scan this node's pool disks and publish them, writing only when something changed.

Runs right after every partition change (callers await `refresh`), plus a slow jittered resync. Concurrent
refresh requests coalesce: a caller waits for one scan that started after it asked.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from typing import Any

from csidriver.api import constants as c
from csidriver.api.objects import Device, devices_list
from csidriver.host.disks import DiskInventory, PoolDisk
from csidriver.kube.resources import Conflict, Kube

log = logging.getLogger(__name__)


def devices_of(disks: list[PoolDisk]) -> tuple[Device, ...]:
    return tuple(
        Device(
            name=d.pool,
            uuid=d.guid,
            size=d.size,
            free=d.free,
            largest_extent=d.largest_extent,
            free_entries=d.free_entries,
            path=d.path,
        )
        for d in sorted(disks, key=lambda d: (d.pool, d.guid))
    )


class NodeReporter:
    def __init__(
        self,
        kube: Kube,
        inventory: DiskInventory,
        node_id: str,
        labels: Mapping[str, str],
        owner: Mapping[str, Any] | None,
        resync_seconds: float,
    ) -> None:
        self._kube = kube
        self._inventory = inventory
        self._node = node_id
        self._labels = dict(labels)
        self._owner = owner
        self._resync = resync_seconds
        self._lock = asyncio.Lock()
        self._started = 0
        self._completed = 0
        self._written: dict[str, Any] | None = None  # last body the API server holds (as we wrote or read it)
        self.disks: list[PoolDisk] = []
        self.scanned = asyncio.Event()
        self.writes = 0

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
            result = await self._inventory.scan_detailed()
            self.disks = list(result.disks)
            self.scanned.set()
            await self._publish(devices_of(self.disks))
            self._completed = ticket
            return self.disks

    async def _publish(self, devices: tuple[Device, ...]) -> None:
        body = self._body(devices)
        if self._written is None:
            current = await self._kube.get_device_node(self._node)
            if current is None:
                self._written = await self._kube.create_device_node(body)
                self.writes += 1
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
                self.writes += 1
                return
            except Conflict:
                self._written = await self._kube.get_device_node(self._node) or {}
                if not self._written:
                    self._written = await self._kube.create_device_node(body)
                    return
        raise RuntimeError(f"DeviceNode {self._node}: too many conflicting writers")

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
                delay = self._resync * (0.9 + random.random() / 5)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("DeviceNode %s refresh failed: %s", self._node, e)
                delay = min(self._resync, 5.0)
            await asyncio.sleep(delay)


def _same(current: Mapping[str, Any], body: Mapping[str, Any]) -> bool:
    meta = current.get("metadata") or {}
    want = body["metadata"]
    return bool(
        list(current.get("devices") or []) == body["devices"]
        and (meta.get("labels") or {}) == want["labels"]
        and (meta.get("ownerReferences") or []) == want.get("ownerReferences", [])
    )
