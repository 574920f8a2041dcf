"""DeviceSnapshot reconciler: copy a volume of this node into a partition of its own; remove it on delete.

Check-then-act like the volume reconciler, so a crash at any line is repaired by the next pass:
- the snapshot's partition is found by its GPT name before one is carved (never twice);
- a snapshot is Ready only once its copy is complete and synced; a copy cut short by a crash (partition carved, state
  still Pending) is done again from the start, with a new point in time (status.creationTime), and a filesystem it
  left frozen is thawed when the agent starts (PartitionManager.thaw_leftovers);
- a Ready snapshot is never copied again; the finalizer goes only after the partition is gone, and not while a volume
  is being restored from it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from csidriver.agent.brake import DeletionBrake
from csidriver.agent.carving import NoRoom, carve, condition, copy_progress, failure_class, now, placement
from csidriver.agent.ports import Inventory, Partitions, SnapshotObjects
from csidriver.agent.workqueue import Retry
from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import (
    DeviceSnapshot,
    ErrorCode,
    State,
    placement_dict,
    snapshot_from_dict,
    volume_from_dict,
)
from csidriver.host.clone import SourceBusy
from csidriver.host.disks import PoolDisk
from csidriver.host.partitions import Partition
from csidriver.kube.resources import Conflict, Gone

log = logging.getLogger(__name__)


class SnapshotReconciler:
    def __init__(
        self,
        kube: SnapshotObjects,
        cache: Mapping[str, Mapping[str, Any]],
        volumes: Mapping[str, Mapping[str, Any]],
        partitions: Partitions,
        reporter: Inventory,
        node_id: str,
        brake: DeletionBrake,
        cordoned: Callable[[], set[str]] = set,
        volumes_synced: Callable[[], bool] = lambda: True,
    ) -> None:
        self._kube = kube
        self._cache = cache
        self._volumes = volumes
        self._parts = partitions
        self._reporter = reporter
        self._node = node_id
        self._brake = brake
        self._cordoned = cordoned
        self._volumes_synced = volumes_synced

    async def reconcile(self, name: str) -> float | None:
        raw = self._cache.get(name)
        if raw is None:
            return None
        snap = snapshot_from_dict(raw)
        if snap.owner_node != self._node:
            return None
        if not self._volumes_synced():
            # Its source volume, and the volumes restoring from it, are read from that cache.
            raise Retry("the DeviceVolume cache is not synced yet")
        try:
            if snap.deleting:
                return await self._delete(snap, raw)
            if snap.state is State.PENDING:
                try:
                    await self._create(snap, raw)
                except (Conflict, Gone, Retry):
                    raise
                except Exception as e:
                    await self._explain(snap, e)
                    raise
        except (Conflict, Gone) as e:
            raise Retry(f"object changed while reconciling: {e}") from e
        return None

    def _pool_disks(self, pool: str) -> list[PoolDisk]:
        return [d for d in self._reporter.disks if d.pool == pool]

    async def _set_condition(self, snap: DeviceSnapshot, kind: str, ok: bool, reason: str, message: str) -> None:
        """Written only when status, reason or message changes."""
        cond = condition(kind, ok, reason, message)
        same = (kind, cond["status"], reason, cond["message"])
        if any((x.get("type"), x.get("status"), x.get("reason"), x.get("message")) == same for x in snap.conditions):
            return
        others = [dict(x) for x in snap.conditions if x.get("type") != kind]
        await self._kube.patch_snapshot_status(snap.name, {"conditions": [*others, cond]})

    async def _explain(self, snap: DeviceSnapshot, error: Exception) -> None:
        kind = failure_class(error)
        try:
            await self._set_condition(snap, "Ready", False, kind, f"node {self._node}: {error}")
        except Exception as e:
            log.warning("snapshot %s: could not record the failure in status: %s", snap.name, e)

    async def _fail(self, snap: DeviceSnapshot, raw: Mapping[str, Any], code: ErrorCode, message: str) -> None:
        log.warning("snapshot %s failed: %s", snap.name, message)
        await self._kube.patch_snapshot_status(
            snap.name,
            {
                "state": State.FAILED.value,
                "error": {"code": code.value, "message": message},
                "conditions": [condition("Ready", False, code.value, message)],
            },
        )
        await self._kube.record_event(raw, c.SNAPSHOT_KIND, "Warning", "SnapshotFailed", message)

    async def _create(self, snap: DeviceSnapshot, raw: Mapping[str, Any]) -> None:
        if snap.capacity <= 0:
            why = f"spec.capacity must be a positive number of bytes; read {snap.capacity} from this object"
            await self._fail(snap, raw, ErrorCode.INTERNAL, why)
            return
        src_raw = self._volumes.get(snap.source_volume)
        src = volume_from_dict(src_raw) if src_raw is not None else None
        if src is None or src.deleting or src.state is not State.READY:
            why = f"source volume {snap.source_volume} is not a ready volume of node {self._node}"
            await self._fail(snap, raw, ErrorCode.INTERNAL, why)
            return
        if c.FINALIZER not in snap.finalizers:
            await self._kube.add_finalizer(
                snap.name, snap.finalizers, c.FINALIZER, c.SNAPSHOT_PLURAL, snap.resource_version
            )
        pname = naming.snapshot_partition_name(snap.name)
        disks = self._pool_disks(snap.pool)
        found = await self._parts.find(disks, pname)
        part: Partition
        if found is not None:
            # Carved before: a copy cut short by a crash (copy it again), or a second pass from a cache that has not
            # seen our own Ready yet, which must not copy again (the snapshot's point in time would move).
            fresh_raw = await self._kube.get_snapshot(snap.name)
            fresh = snapshot_from_dict(fresh_raw) if fresh_raw is not None else None
            if fresh is None or fresh.state is not State.PENDING or fresh.deleting:
                return
            part = await self._parts.create(found[0].path, snap.pool, pname, snap.capacity)
            guid = found[0].guid
        else:
            made = await carve(self._parts, disks, self._cordoned(), self._node, snap.pool, pname, snap.capacity)
            if isinstance(made, NoRoom):
                await self._reporter.refresh()
                await self._fail(snap, raw, ErrorCode.INSUFFICIENT_CAPACITY, made.reason)
                return
            part, guid = made
        src_found = await self._parts.find(self._pool_disks(src.pool), naming.partition_name(src.name))
        if src_found is None:
            raise Retry(f"source volume {src.name}: partition not found on pool {src.pool!r} (its disk is absent?)")
        src_part = await self._parts.activate(src_found[0].path, src.pool, src_found[1].name)
        if src_part is None:
            raise Retry(f"source volume {src.name}: partition vanished")
        # The point in time the snapshot holds: written just before the source is frozen for the copy.
        await self._kube.patch_snapshot_status(snap.name, {"creationTime": now(), "copiedBytes": 0})

        async def report(done: int) -> None:
            await self._kube.patch_snapshot_status(snap.name, {"copiedBytes": done})

        start = time.monotonic()
        try:
            async with copy_progress(report) as progress:
                copied = await self._parts.fill_from(src_part.node, part.node, snap.pool, progress)
        except SourceBusy as e:
            await self._fail(snap, raw, ErrorCode.INTERNAL, f"snapshot of {src.name} refused: {e}")
            return
        took = time.monotonic() - start
        await self._reporter.refresh()  # DeviceNode shows the space as used before the snapshot reads Ready
        msg = f"node {self._node}: {copied} bytes of {src.name} copied to {part.node} in {took:.2f} s"
        await self._kube.patch_snapshot_status(
            snap.name,
            {
                "state": State.READY.value,
                "error": None,
                "copiedBytes": copied,
                "capacityBytes": part.size,
                "conditions": [condition("Ready", True, "Copied", msg)],
                **placement_dict(placement(part, guid)),
            },
        )
        log.info("snapshot %s ready: %s (%.0f MiB/s)", snap.name, msg, copied / c.MIB / max(took, 1e-6))

    async def _delete(self, snap: DeviceSnapshot, raw: Mapping[str, Any]) -> float | None:
        """None when done, else seconds after which to try again (the brake on destruction is engaged)."""
        if c.FINALIZER not in snap.finalizers:
            return None
        restoring = sorted(
            name
            for name, vol in self._volumes.items()
            if (vol.get("metadata") or {}).get("annotations", {}).get(c.RESTORE_SOURCE_ANNOTATION) == snap.name
            and (vol.get("status") or {}).get("state", State.PENDING.value) == State.PENDING.value
        )
        if restoring:
            raise Retry(f"volume {restoring[0]} is being restored from it")
        pname = naming.snapshot_partition_name(snap.name)
        found = await self._parts.find(self._pool_disks(snap.pool), pname)
        if found is not None:
            wait = self._brake.admit()
            if wait > 0:
                return wait
            await self._parts.delete(found[0].path, snap.pool, pname)
            await self._reporter.refresh()
        elif snap.placement.disk_guid and snap.placement.disk_guid not in {d.guid for d in self._reporter.disks}:
            msg = (
                f"disk {snap.placement.disk_guid} ({snap.placement.disk_path}) holding this snapshot is not present "
                f"or not readable on node {self._node}; its partition cannot be removed until the disk is back"
            )
            await self._kube.record_event(raw, c.SNAPSHOT_KIND, "Warning", "DiskMissing", msg)
            await self._set_condition(snap, c.RELEASED_CONDITION, False, c.RELEASE_DISK_MISSING, msg)
            raise Retry(msg)
        await self._kube.remove_finalizer(snap.name, snap.finalizers, c.FINALIZER, c.SNAPSHOT_PLURAL)
        log.info("snapshot %s deleted", snap.name)
        return None
