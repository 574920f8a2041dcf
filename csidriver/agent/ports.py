"""The narrow seams the agent's reconcilers depend on: exactly the calls they make, nothing more.

`csidriver.kube.resources.Kube`, `csidriver.host.partitions.PartitionManager` and `csidriver.agent.reporter
.NodeReporter` provide them in the agent; the unit tests pass in-memory fakes (tests/fakes), and a contract suite
(tests/contract) runs the same checks against the fake and the real API server, so the fake cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from csidriver.api import constants as c
from csidriver.host.disks import PoolDisk
from csidriver.host.parsers import PartitionEntry
from csidriver.host.partitions import Batch, Partition, Want

Obj = dict[str, Any]


class Events(Protocol):
    async def record_event(
        self, obj: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str
    ) -> None: ...


class Finalizers(Protocol):
    async def add_finalizer(
        self,
        name: str,
        finalizers: tuple[str, ...],
        finalizer: str,
        plural: str = c.VOLUME_PLURAL,
        resource_version: str = "",
    ) -> Obj: ...
    async def remove_finalizer(
        self, name: str, finalizers: tuple[str, ...], finalizer: str, plural: str = c.VOLUME_PLURAL
    ) -> Obj: ...


class VolumeObjects(Events, Finalizers, Protocol):
    """What the DeviceVolume reconciler asks of the API server."""

    async def get_volume(self, name: str) -> Obj | None: ...
    async def patch_volume_status(self, name: str, status: Mapping[str, Any]) -> Obj: ...


class SnapshotObjects(Events, Finalizers, Protocol):
    """What the DeviceSnapshot reconciler asks of the API server."""

    async def get_snapshot(self, name: str) -> Obj | None: ...
    async def patch_snapshot_status(self, name: str, status: Mapping[str, Any]) -> Obj: ...


class Partitions(Protocol):
    """What the reconcilers ask of the partition layer (PartitionManager)."""

    async def find(self, disks: Sequence[PoolDisk], name: str) -> tuple[PoolDisk, PartitionEntry] | None: ...
    async def create(
        self, disk_path: str, pool: str, name: str, size: int, *, room_to_grow: bool = False
    ) -> Partition: ...
    async def create_many(self, disk_path: str, pool: str, wants: Sequence[Want]) -> Batch: ...
    async def grow(self, disk_path: str, pool: str, name: str, size: int) -> Partition: ...
    async def activate(self, disk_path: str, pool: str, name: str) -> Partition | None: ...
    async def fill_from(
        self, source: str, target: str, pool: str, progress: Callable[[int], None] | None = None
    ) -> int: ...
    async def wipe(self, node: str, *, pool: str | None = None) -> None: ...
    async def delete(self, disk_path: str, pool: str, name: str) -> bool: ...


class Inventory(Protocol):
    """What the reconcilers ask of the node reporter: the healthy pool disks of the last scan, a rescan that also
    rewrites the DeviceNode when it changed, and a stamp: the inventory generation from which the DeviceNode will
    show a partition just made (written soon, without waiting)."""

    @property
    def disks(self) -> Sequence[PoolDisk]: ...
    async def refresh(self, gather: float = 0.0) -> Sequence[PoolDisk]: ...
    def stamp(self) -> int: ...
