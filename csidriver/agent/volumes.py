"""DeviceVolume reconciler: carve, wipe and report this node's volumes; wipe and remove them on delete.

Every step is check-then-act, so a crash at any line is repaired by the next pass:
- a partition is found by its GPT name before one is created (so never twice, and the original's are adopted);
- a volume that is not yet Ready is wiped before it is reported Ready (a partition left by a crash between
  create and wipe is never handed out unwiped); a Ready volume is never wiped again;
- our finalizer goes only after the partition is gone; only our finalizer is ever removed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from csidriver.agent.brake import DeletionBrake
from csidriver.agent.carving import (
    Batcher,
    Carved,
    NoRoom,
    carve,
    condition,
    copy_progress,
    failure_class,
    placement,
)
from csidriver.agent.ports import Inventory, Partitions, VolumeObjects
from csidriver.agent.workqueue import Retry, current_item
from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import (
    DeviceVolume,
    ErrorCode,
    State,
    placement_dict,
    snapshot_from_dict,
    volume_from_dict,
)
from csidriver.host.clone import SourceBusy
from csidriver.host.disks import PoolDisk
from csidriver.host.partitions import (
    InsufficientCapacity,
    Partition,
    PartitionBusy,
)
from csidriver.kube.resources import Conflict, Gone

log = logging.getLogger(__name__)


def _condition(ready: bool, reason: str, message: str) -> dict[str, Any]:
    return condition("Ready", ready, reason, message)


def _located(found: bool, reason: str, message: str) -> dict[str, Any]:
    return {**_condition(found, reason, message), "type": "Located"}


def _located_here(vol: DeviceVolume, node: str) -> bool:
    """Whether this node already confirmed the volume's partition (it carved it, or located it)."""
    return any(
        cond.get("type") in ("Ready", "Located")
        and cond.get("status") == "True"
        and str(cond.get("message", "")).startswith(f"node {node}:")
        for cond in vol.conditions
    )


def _recorded_size(raw: Mapping[str, Any]) -> int | None:
    """status.capacityBytes as the agent last wrote it, or None (not written yet, by an older version)."""
    value = (raw.get("status") or {}).get("capacityBytes")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


SNAPSHOTS_UNSYNCED = "the DeviceSnapshot cache is not synced yet (is the devicesnapshots CRD installed?)"
# Seconds before a growth that found no room in place is tried again (a neighbour may have been deleted).
RESIZE_RETRY = 60.0
# Seconds a deletion waits for others before its DeviceNode scan and write, which those share (a namespace torn down).
DELETION_GATHER = 0.2


def _with(vol: DeviceVolume, cond: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(x) for x in vol.conditions if x.get("type") != cond["type"]] + [cond]


def _uid(raw: Mapping[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("uid") or "")


class _Phases:
    """Where one creation's time went, for its log line: seconds by phase, in the order they happened, from the
    event that queued the volume (the work queue's item) to its status patch."""

    def __init__(self) -> None:
        item = current_item()
        now = time.monotonic()
        self.origin = item.added if item is not None else now
        self.spent: dict[str, float] = {"queue": now - item.added if item else 0.0}
        self._mark = now

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.spent[phase] = self.spent.get(phase, 0.0) + now - self._mark
        self._mark = now

    def batch(self, carved: Carved) -> None:
        """Split the carve's lap into the wait for its batch and the batch's own steps."""
        t = carved.times
        carve = self.spent.pop("carve", 0.0)
        steps = {"disk-wait": carved.waited, "lock": t.lock, "table": t.table, "kernel": t.kernel, "wipe": t.wipe}
        self.spent.update(steps)
        self.spent["carve-other"] = max(carve - sum(steps.values()), 0.0)

    def text(self) -> str:
        total = time.monotonic() - self.origin
        shown = " ".join(f"{k}={v * 1000:.0f}" for k, v in self.spent.items())
        return f"phases in ms: {shown} since-event={total * 1000:.0f}"


class VolumeReconciler:
    def __init__(
        self,
        kube: VolumeObjects,
        cache: Mapping[str, Mapping[str, Any]],
        partitions: Partitions,
        reporter: Inventory,
        node_id: str,
        brake: DeletionBrake,
        cordoned: Callable[[], set[str]] = set,
        snapshots: Mapping[str, Mapping[str, Any]] | None = None,
        snapshots_synced: Callable[[], bool] = lambda: True,
    ) -> None:
        self._kube = kube
        self._cache = cache
        self._parts = partitions
        self._reporter = reporter
        self._node = node_id
        self._brake = brake
        self._cordoned = cordoned
        self._snapshots: Mapping[str, Mapping[str, Any]] = snapshots if snapshots is not None else {}
        self._snapshots_synced = snapshots_synced
        self._batcher = Batcher(partitions)
        # Volumes this agent reported Ready (name -> uid) that its cache still shows Pending: a pass queued by an
        # older event (adding the finalizer) has nothing to do, and needs no disk read or API request to know it.
        self._made_ready: dict[str, str] = {}

    async def reconcile(self, name: str) -> float | None:
        raw = self._cache.get(name)
        if raw is None:
            self._made_ready.pop(name, None)
            return None
        vol = volume_from_dict(raw)
        if vol.state is not State.PENDING:
            self._made_ready.pop(name, None)  # the cache caught up (or the volume moved on)
        log.debug("reconcile %s: state=%s deleting=%s", name, vol.state.value, vol.deleting)
        if vol.owner_node != self._node:
            return None
        try:
            if vol.deleting:
                return await self._delete(vol, raw)
            elif vol.state is State.PENDING and self._made_ready.get(name) == _uid(raw):
                log.debug("volume %s: Ready already written, the cache has not caught up", name)
            elif vol.state is State.PENDING:
                try:
                    await self._create(vol, raw)
                except (Conflict, Gone, Retry):
                    raise
                except Exception as e:
                    # Retried with backoff; meanwhile status says why, so CreateVolume can answer with the cause.
                    await self._explain(vol, e)
                    raise
            elif vol.state is State.READY and not _located_here(vol, self._node):
                await self._locate(vol)
            elif vol.state is State.READY:
                return await self._resize(vol, raw)
        except (Conflict, Gone) as e:
            raise Retry(f"object changed while reconciling: {e}") from e
        return None

    async def _locate(self, vol: DeviceVolume) -> None:
        """A Ready volume this agent has not confirmed yet (it was moved here, or made by the original driver):
        find its partition on this node's disks and record where it is, never touching its data."""
        found = await self._parts.find(self._pool_disks(vol.pool), naming.partition_name(vol.name))
        if found is None:
            msg = f"node {self._node}: partition {naming.partition_name(vol.name)} not found on pool {vol.pool!r}"
            await self._kube.patch_volume_status(vol.name, {"conditions": _with(vol, _located(False, "NotFound", msg))})
            return
        disk, entry = found
        # The disk may have come back under a new name with no partition device nodes yet (no partition scan):
        # give the kernel this partition before saying Located, or a publish would find no device to mount.
        part = await self._parts.activate(disk.path, vol.pool, entry.name)
        if part is None:
            raise Retry(f"partition {entry.name} vanished from {disk.path} while it was being located")
        msg = f"node {self._node}: {part.node} on disk {disk.guid}"
        await self._kube.patch_volume_status(
            vol.name,
            {
                **placement_dict(placement(part, disk.guid)),
                "capacityBytes": part.size,
                "conditions": _with(vol, _located(True, "PartitionFound", msg)),
            },
        )
        log.info("volume %s located: %s", vol.name, msg)

    def _pool_disks(self, pool: str) -> list[PoolDisk]:
        return [d for d in self._reporter.disks if d.pool == pool]

    async def _explain(self, vol: DeviceVolume, error: Exception) -> None:
        """Ready=False with the failure's class and message (written only when it changes); best effort."""
        kind = failure_class(error)
        try:
            await self._set_condition(vol, "Ready", False, kind, f"node {self._node}: {error}")
        except Exception as e:
            log.warning("volume %s: could not record the failure in status: %s", vol.name, e)

    async def _not_released(self, vol: DeviceVolume, reason: str, message: str) -> None:
        """Say in status why the deletion waits (the controller answers DeleteVolume from it); written only when
        the reason or message changes, not on every retry."""
        await self._set_condition(vol, c.RELEASED_CONDITION, False, reason, message)

    async def _resize(self, vol: DeviceVolume, raw: Mapping[str, Any]) -> float | None:
        """Grow the partition in place when spec.capacity asks for more than it holds (ControllerExpandVolume), and
        keep status.capacityBytes equal to its size. Sizes are compared in whole MiB rounded down, so a volume of
        the original driver (which rounded sizes down to MiB) is never grown unasked. Safe to repeat after a crash
        at any point: the table holds either the old or the new size, and both are read back here."""
        recorded = _recorded_size(raw)
        wanted = vol.capacity // c.MIB * c.MIB
        if recorded is not None and wanted <= recorded:
            return None
        pname = naming.partition_name(vol.name)
        found = await self._parts.find(self._pool_disks(vol.pool), pname)
        if found is None:
            return None  # its disk is absent: the node's DeviceNode and the volume's condition say so
        disk = found[0]
        part = await self._parts.activate(disk.path, vol.pool, pname)
        if part is None:
            raise Retry(f"partition {pname} vanished from {disk.path}")
        conditions: list[dict[str, Any]] | None = None
        if wanted > part.size:
            try:
                part = await self._parts.grow(disk.path, vol.pool, pname, vol.capacity)
            except InsufficientCapacity as e:
                msg = f"node {self._node}: cannot grow to {vol.capacity} bytes: {e}"
                request = vol.annotations.get(c.RESIZE_REQUEST_ANNOTATION, "")
                if request:
                    msg += f" (request {request})"  # the controller's attempt this answers
                await self._set_condition(
                    vol, c.RESIZED_CONDITION, False, "InsufficientCapacity", msg, generation=vol.generation
                )
                return RESIZE_RETRY  # room may be freed next to it later
            await self._reporter.refresh()
            msg = f"node {self._node}: partition {part.node} grown to {part.size} bytes"
            log.info("volume %s: %s", vol.name, msg)
            grown = {
                **_condition(True, "Grown", msg),
                "type": c.RESIZED_CONDITION,
                "observedGeneration": vol.generation,
            }
            conditions = _with(vol, grown)
        if recorded != part.size or conditions is not None:
            status: dict[str, Any] = {"capacityBytes": part.size}
            if conditions is not None:
                status["conditions"] = conditions
            await self._kube.patch_volume_status(vol.name, status)
        return None

    async def _set_condition(
        self, vol: DeviceVolume, kind: str, ok: bool, reason: str, message: str, generation: int | None = None
    ) -> None:
        """Write one condition, only when its status, reason, message or observed generation changes."""
        cond: dict[str, Any] = {**_condition(ok, reason, message), "type": kind}
        if generation is not None:
            cond["observedGeneration"] = generation
        same = (kind, cond["status"], reason, cond["message"], cond.get("observedGeneration"))
        if any(
            (x.get("type"), x.get("status"), x.get("reason"), x.get("message"), x.get("observedGeneration")) == same
            for x in vol.conditions
        ):
            return
        await self._kube.patch_volume_status(vol.name, {"conditions": _with(vol, cond)})

    async def _create(self, vol: DeviceVolume, raw: Mapping[str, Any]) -> None:
        phases = _Phases()
        if vol.capacity <= 0:
            # Never written by a controller; an object made by hand, or one whose capacity cannot be read.
            why = f"spec.capacity must be a positive number of bytes; read {vol.capacity} from this object"
            await self._fail(vol, raw, ErrorCode.INTERNAL, why)
            return
        pname = naming.partition_name(vol.name)
        disks = self._pool_disks(vol.pool)
        # The finalizer goes on before any disk is written; the lookup by name only reads, meanwhile.
        lookup = self._parts.find(disks, pname)
        if c.FINALIZER not in vol.finalizers:
            finalize = self._kube.add_finalizer(
                vol.name, vol.finalizers, c.FINALIZER, resource_version=vol.resource_version
            )
            _, found = await asyncio.gather(finalize, lookup)
        else:
            found = await lookup
        phases.lap("finalizer-find")
        wiped = False
        if found is not None:
            # The partition exists: a crash came between carving and Ready (wipe it, never handed out yet), or this
            # is a second pass from a cache that has not seen our own Ready yet (an event from adding the finalizer
            # queued it again). Wiping then would destroy data a Pod may already have written: ask the API server.
            raw_fresh = await self._kube.get_volume(vol.name)
            fresh = volume_from_dict(raw_fresh) if raw_fresh is not None else None
            if fresh is None or fresh.state is not State.PENDING or fresh.deleting:
                log.info("volume %s: already past Pending on the API server; the cache will catch up", vol.name)
                return
            # Never handed out: adopted by the disk's next batch, which tells the kernel about it if a crash came
            # first, and wipes it with the partitions it makes.
            disk = found[0]
            carved = await self._batcher.create(disk.path, vol.pool, pname, vol.capacity, adopt=True)
            phases.lap("adopt")
            part, wiped, guid = carved.partition, carved.wiped, disk.guid
        else:
            made = await self._carve(vol, raw, disks, pname)
            if made is None:
                return
            phases.lap("carve")
            carved, guid = made
            phases.batch(carved)
            part, wiped = carved.partition, carved.wiped
        copied: dict[str, int] = {}
        if vol.annotations.get(c.CLONE_SOURCE_ANNOTATION) or vol.annotations.get(c.RESTORE_SOURCE_ANNOTATION):
            done = await self._fill(vol, raw, part)
            if done is None:
                return
            copied["copiedBytes"] = done
            phases.lap("copy")
        elif not wiped:  # found, not made by its batch (which wipes what it creates): never handed out unwiped
            await self._parts.wipe(part.node)
            phases.lap("wipe")
        # No scan here: the DeviceNode shows the partition from this generation on, written within a window (one
        # write for a burst); the controller counts the volume itself until then.
        inventory = self._reporter.stamp()
        await self._kube.patch_volume_status(
            vol.name,
            {
                "state": State.READY.value,
                "error": None,
                "conditions": [
                    _condition(True, "Provisioned", f"node {self._node}: partition {part.node} ({part.size} bytes)")
                ],
                **placement_dict(placement(part, guid)),
                "capacityBytes": part.size,
                "inventoryGeneration": inventory,
                **copied,
            },
        )
        phases.lap("status")
        self._made_ready[vol.name] = _uid(raw)
        log.info("volume %s ready: %s on %s (%s)", vol.name, part.node, part.disk_path, phases.text())

    async def _fill(self, vol: DeviceVolume, raw: Mapping[str, Any], part: Partition) -> int | None:
        """A clone or a restore: copy the source volume's (or snapshot's) partition, on this node, onto the new one
        in place of the wipe, reporting progress in status.copiedBytes. The bytes copied, or None when it failed for
        good (status Failed says why)."""
        clone_of = vol.annotations.get(c.CLONE_SOURCE_ANNOTATION, "")
        snapshot = vol.annotations.get(c.RESTORE_SOURCE_ANNOTATION, "")
        found: tuple[PoolDisk, Any] | None
        if clone_of:
            what = f"clone source {clone_of}"
            src_raw = self._cache.get(clone_of)
            src = volume_from_dict(src_raw) if src_raw is not None else None
            usable = src is not None and not src.deleting and src.state is State.READY and src.owner_node == self._node
            pool, pname = (src.pool if src else ""), naming.partition_name(clone_of)
        else:
            what = f"snapshot {snapshot}"
            if not self._snapshots_synced():
                raise Retry(f"{SNAPSHOTS_UNSYNCED}: cannot restore from {snapshot} yet")
            snap_raw = self._snapshots.get(snapshot)
            snap = snapshot_from_dict(snap_raw) if snap_raw is not None else None
            usable = (
                snap is not None and not snap.deleting and snap.state is State.READY and snap.owner_node == self._node
            )
            pool, pname = (snap.pool if snap else ""), naming.snapshot_partition_name(snapshot)
        if not usable:
            await self._fail(vol, raw, ErrorCode.INTERNAL, f"{what} is not ready on node {self._node}")
            return None
        found = await self._parts.find(self._pool_disks(pool), pname)
        if found is None:
            raise Retry(f"{what}: partition not found on pool {pool!r} (its disk is absent?)")
        src_part = await self._parts.activate(found[0].path, pool, found[1].name)
        if src_part is None:
            raise Retry(f"{what}: partition vanished")
        start = time.monotonic()

        async def report(done: int) -> None:
            await self._kube.patch_volume_status(vol.name, {"copiedBytes": done})

        try:
            async with copy_progress(report) as progress:
                copied = await self._parts.fill_from(src_part.node, part.node, vol.pool, progress)
        except SourceBusy as e:
            await self._fail(vol, raw, ErrorCode.INTERNAL, f"copy of {what} refused: {e}")
            return None
        took = time.monotonic() - start
        log.info(
            "volume %s: copied %d bytes of %s in %.2f s (%.0f MiB/s)",
            vol.name,
            copied,
            what,
            took,
            copied / c.MIB / max(took, 1e-6),
        )
        return copied

    async def _carve(
        self, vol: DeviceVolume, raw: Mapping[str, Any], disks: list[PoolDisk], pname: str
    ) -> tuple[Carved, str] | None:
        # Best fit (or room to grow, when its StorageClass asks), never on a disk an operator cordoned; creates queued
        # on one disk share one partition-table write.
        roomy = vol.annotations.get(c.PLACEMENT_ANNOTATION) == c.PLACEMENT_ROOM_TO_GROW
        made = await carve(self._batcher, disks, self._cordoned(), self._node, vol.pool, pname, vol.capacity, roomy)
        if isinstance(made, NoRoom):
            await self._reporter.refresh()  # what the controller believed was stale: correct it before reporting
            await self._fail(vol, raw, ErrorCode.INSUFFICIENT_CAPACITY, made.reason)
            return None
        return made

    async def _fail(self, vol: DeviceVolume, raw: Mapping[str, Any], code: ErrorCode, message: str) -> None:
        log.warning("volume %s failed: %s", vol.name, message)
        await self._kube.patch_volume_status(
            vol.name,
            {
                "state": State.FAILED.value,
                "error": {"code": code.value, "message": message},
                "conditions": [_condition(False, code.value, message)],
            },
        )
        await self._kube.record_event(raw, c.VOLUME_KIND, "Warning", "ProvisioningFailed", message)

    async def _delete(self, vol: DeviceVolume, raw: Mapping[str, Any]) -> float | None:
        """None when done, else seconds after which to try again (the brake on destruction is engaged)."""
        if c.FINALIZER not in vol.finalizers:
            return None
        cloning = sorted(
            name
            for name, other in self._cache.items()
            if (other.get("metadata") or {}).get("annotations", {}).get(c.CLONE_SOURCE_ANNOTATION) == vol.name
            and (other.get("status") or {}).get("state", State.PENDING.value) == State.PENDING.value
        )
        if cloning:
            raise Retry(f"volume {cloning[0]} is being copied from it")
        if not self._snapshots_synced():
            raise Retry(f"{SNAPSHOTS_UNSYNCED}: a snapshot may be being copied from it")
        snapping = sorted(
            name
            for name, other in self._snapshots.items()
            if (other.get("spec") or {}).get("sourceVolume") == vol.name
            and (other.get("status") or {}).get("state", State.PENDING.value) == State.PENDING.value
            and not (other.get("metadata") or {}).get("deletionTimestamp")
        )
        if snapping:
            raise Retry(f"snapshot {snapping[0]} is being copied from it")
        pname = naming.partition_name(vol.name)
        disks = self._pool_disks(vol.pool)
        found = await self._parts.find(disks, pname)
        if found is not None:
            wait = self._brake.admit()
            if wait > 0:
                if not self._brake.engaged:
                    self._brake.engaged = True
                    msg = (
                        f"node {self._node} reached {self._brake.limit} partition deletions in "
                        f"{self._brake.window:.0f}s; deletions resume in {wait:.1f}s"
                    )
                    log.warning("%s", msg)
                    await self._kube.record_event(raw, c.VOLUME_KIND, "Warning", "DeletionsThrottled", msg)
                return wait
            disk, _ = found
            try:
                await self._parts.delete(disk.path, vol.pool, pname)
            except PartitionBusy as e:
                await self._kube.record_event(raw, c.VOLUME_KIND, "Warning", "DeleteBlocked", str(e))
                await self._not_released(vol, c.RELEASE_IN_USE, f"node {self._node}: {e}")
                raise Retry(str(e)) from e
            # DeviceNode exact before the object goes; deletions within DELETION_GATHER share one scan and write.
            await self._reporter.refresh(gather=DELETION_GATHER)
        elif vol.placement.disk_guid and vol.placement.disk_guid not in {d.guid for d in self._reporter.disks}:
            msg = (
                f"disk {vol.placement.disk_guid} ({vol.placement.disk_path}) holding this volume is not present "
                f"or not readable on node {self._node}; the partition cannot be wiped and removed until the disk "
                "is back (or the node is released with `kubectl device-localpv release-node`)"
            )
            await self._kube.record_event(raw, c.VOLUME_KIND, "Warning", "DiskMissing", msg)
            await self._not_released(vol, c.RELEASE_DISK_MISSING, msg)
            raise Retry(msg)
        await self._kube.remove_finalizer(vol.name, vol.finalizers, c.FINALIZER)
        log.info("volume %s deleted", vol.name)
        return None
