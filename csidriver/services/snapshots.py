"""CreateSnapshot, DeleteSnapshot and ListSnapshots, on top of ClusterState and the API.

A snapshot is a full block copy of a volume's partition into a partition of its own on the same node and pool,
made by that node's agent (the source's filesystem frozen for the copy's duration). The controller only creates
and deletes DeviceSnapshot objects and answers from its cache; it never touches a disk.

CreateSnapshot waits for the agent: it answers ready_to_use=true once the copy is complete, or ready_to_use=false
when the copy has begun (the source is frozen, so the snapshot's point in time is cut) but is still running when
the wait ends; the caller asks again later, and the answer is the same snapshot.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from csidriver.api import naming
from csidriver.api.objects import (
    DeviceSnapshot,
    DeviceVolume,
    ErrorCode,
    State,
    new_snapshot_body,
    snapshot_from_dict,
)
from csidriver.services.cluster import ClusterState
from csidriver.services.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from csidriver.services.listing import page_token, token_start
from csidriver.services.provisioning import ready_source
from scheduler import fits, pool_capacity

log = logging.getLogger(__name__)

# Parameter keys the external csi-snapshotter adds (--extra-create-metadata); every other key is refused, as
# snapshots take no parameters.
_SIDECAR_PREFIX = "csi.storage.k8s.io/"
# Seconds between checks that the snapshot's agent is alive while a call waits on it.
AGENT_CHECK = 1.0
# Seconds a call waits before answering with a failure the agent reports and retries (status Ready=False).
FAILURE_GRACE = 5.0


class SnapshotStore(Protocol):
    """What snapshots need of the API server (csidriver.kube.resources.Kube provides it)."""

    namespace: str

    async def get_volume(self, name: str) -> dict[str, Any] | None: ...
    async def get_snapshot(self, name: str) -> dict[str, Any] | None: ...
    async def create_snapshot(self, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def delete_snapshot(self, name: str) -> None: ...


@dataclass(frozen=True)
class SnapshotInfo:
    snapshot_id: str
    source_volume: str
    size: int
    created: datetime.datetime
    ready: bool


def _created(snap: DeviceSnapshot) -> datetime.datetime:
    """When the snapshot's point in time was cut (the copy began), else when it was asked for."""
    for stamp in (snap.cut_at, snap.created):
        try:
            return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
        except ValueError:
            continue
    return datetime.datetime.now(datetime.UTC)


def info(snap: DeviceSnapshot) -> SnapshotInfo:
    return SnapshotInfo(
        snapshot_id=snap.name,
        source_volume=snap.source_volume,
        size=snap.capacity,
        created=_created(snap),
        ready=snap.state is State.READY and not snap.deleting,
    )


def _failing(snap: DeviceSnapshot) -> tuple[str, str] | None:
    for cond in snap.conditions:
        if cond.get("type") == "Ready" and cond.get("status") == "False":
            return str(cond.get("reason") or "AgentError"), str(cond.get("message") or "")
    return None


class Snapshotter:
    def __init__(self, store: SnapshotStore, cluster: ClusterState, timeout: float) -> None:
        self._store = store
        self._cluster = cluster
        self._timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}

    # -- CreateSnapshot ------------------------------------------------------------------------------------------
    async def create(self, name: str, source_volume: str, parameters: Mapping[str, str]) -> SnapshotInfo:
        if not name:
            raise InvalidArgument("name must not be empty")
        if not source_volume:
            raise InvalidArgument("source_volume_id must not be empty")
        unknown = sorted(k for k in parameters if not k.startswith(_SIDECAR_PREFIX))
        if unknown:
            raise InvalidArgument(f"unknown parameter {unknown[0]!r}: snapshots take no parameters")
        obj = naming.object_name(name)
        lock = self._locks.setdefault(obj, asyncio.Lock())
        try:
            async with lock:
                snap = await self._existing(obj, source_volume)
                if snap is None:
                    source = await ready_source(self._store, self._cluster, source_volume)
                    snap = await self._create_object(obj, name, source)
                return await self._outcome(snap)
        finally:
            if not lock.locked():
                self._locks.pop(obj, None)

    async def _existing(self, obj: str, source_volume: str) -> DeviceSnapshot | None:
        snap = self._cluster.snapshots.get(obj)
        if snap is None:
            raw = await self._store.get_snapshot(obj)
            snap = snapshot_from_dict(raw) if raw is not None else None
        if snap is None:
            return None
        if snap.deleting:
            raise Aborted(f"snapshot {obj} is still being deleted; retry shortly")
        if snap.source_volume != source_volume:
            raise AlreadyExists(f"snapshot {obj} exists with another source volume ({snap.source_volume})")
        return snap

    async def _create_object(self, obj: str, csi_name: str, source: DeviceVolume) -> DeviceSnapshot:
        node, pool = source.owner_node, source.pool
        size = source.capacity_bytes or source.capacity
        why = self._cluster.agent_gone(node)
        if why is not None:
            raise Unavailable(f"a snapshot of {source.name} is copied on its node {node}, but {why}")
        if node in self._cluster.nodes and not fits(self._cluster.node_state(node), pool, size):
            largest = pool_capacity(self._cluster.node_state(node), pool)[1]
            raise ResourceExhausted(
                f"node {node} (the source's) cannot fit a {size} byte snapshot in pool {pool!r}: largest free extent"
                f" is {largest} bytes"
            )
        body = new_snapshot_body(obj, self._store.namespace, node, pool, size, source.name, csi_name)
        try:
            raw = await self._store.create_snapshot(body)
        except Exception:
            # Perhaps made meanwhile by another replica's call (a 409): the same request is that snapshot.
            made = await self._store.get_snapshot(obj)
            if made is None or snapshot_from_dict(made).source_volume != source.name:
                raise
            raw = made
        log.info("snapshot %s of %s: on node %s pool %s (%d bytes)", obj, source.name, node, pool, size)
        return snapshot_from_dict(raw)

    async def _outcome(self, snap: DeviceSnapshot) -> SnapshotInfo:
        name, node = snap.name, snap.owner_node

        seen = False

        def settled(s: DeviceSnapshot | None) -> bool:
            """Ready, Failed, being deleted, or gone after it was seen (the cache may not have it yet)."""
            nonlocal seen
            if s is None:
                return seen
            seen = True
            return s.deleting or s.state is not State.PENDING

        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._timeout
        final: DeviceSnapshot | None = None
        while True:
            left = deadline - loop.time()
            if left <= 0:
                current = self._cluster.snapshots.get(name, snap)
                if current.cut_at:
                    return info(current)  # the copy is cut and running: not ready yet, asked again later
                failing = _failing(current)
                cause = f": {failing[1]}" if failing else ""
                raise DeadlineExceeded(f"snapshot {name} is not cut yet on node {node}{cause}; retry")
            try:
                final = await self._cluster.snapshot_waiters.wait_for(name, settled, min(left, AGENT_CHECK))
                break
            except TimeoutError:
                pass
            why = self._cluster.agent_gone(node)
            if why is not None:
                raise Unavailable(f"snapshot {name} is not ready: node {node}: {why}")
            cached = self._cluster.snapshots.get(name)
            failing = _failing(cached) if cached is not None else None
            if failing is not None and loop.time() - start >= FAILURE_GRACE:
                reason, message = failing
                if reason in ("NotAPoolDisk", "PartitionBusy"):
                    raise FailedPrecondition(f"snapshot {name}: {message}")
                raise Internal(f"snapshot {name}: {message} (the agent keeps retrying)")
        if final is None or final.deleting:
            raise Aborted(f"snapshot {name} was deleted while it was being made")
        if final.state is State.FAILED:
            await self._store.delete_snapshot(name)
            msg = f"snapshot {name} on node {node}: {final.error_message or 'the copy failed'}"
            if final.error_code is ErrorCode.INSUFFICIENT_CAPACITY:
                raise ResourceExhausted(msg)
            raise FailedPrecondition(msg) if "refused" in final.error_message else Internal(msg)
        return info(final)

    # -- DeleteSnapshot ------------------------------------------------------------------------------------------
    async def delete(self, snapshot_id: str) -> None:
        if not snapshot_id:
            raise InvalidArgument("snapshot_id must not be empty")
        if not naming.is_valid_volume_id(snapshot_id):
            return  # no object can carry this name: deleting nothing succeeds
        if await self._store.get_snapshot(snapshot_id) is None:
            return
        await self._store.delete_snapshot(snapshot_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            left = deadline - loop.time()
            try:
                await self._cluster.snapshot_waiters.wait_for(
                    snapshot_id, lambda s: s is None, max(0.0, min(left, FAILURE_GRACE))
                )
                return
            except TimeoutError:
                pass
            snap = self._cluster.snapshots.get(snapshot_id)
            if snap is None:
                return
            for cond in snap.conditions:
                if cond.get("type") == "Released" and cond.get("status") == "False":
                    raise FailedPrecondition(f"snapshot {snapshot_id} cannot be deleted yet: {cond.get('message')}")
            why = self._cluster.agent_gone(snap.owner_node)
            if why is not None:
                raise Unavailable(
                    f"snapshot {snapshot_id} is being deleted, but node {snap.owner_node}: {why}; it completes when"
                    " the agent is back"
                )
            if loop.time() >= deadline:
                raise DeadlineExceeded(f"snapshot {snapshot_id} is being deleted: its agent has not released it yet")

    # -- ListSnapshots -------------------------------------------------------------------------------------------
    def page(
        self, max_entries: int, starting_token: str, snapshot_id: str = "", source_volume: str = ""
    ) -> tuple[list[SnapshotInfo], str]:
        """Up to `max_entries` (0: all) snapshots after the token, in name order, optionally only the one named
        `snapshot_id` or those of `source_volume` (an unknown one lists nothing), and the next page's token."""
        if max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        after = token_start(starting_token)
        names = sorted(
            n
            for n, s in self._cluster.snapshots.items()
            if n > after
            and s.state is not State.FAILED
            and not s.deleting
            and (not snapshot_id or n == snapshot_id)
            and (not source_volume or s.source_volume == source_volume)
        )
        next_token = ""
        if max_entries and len(names) > max_entries:
            names = names[:max_entries]
            next_token = page_token(names[-1])
        return [info(self._cluster.snapshots[n]) for n in names], next_token

    # -- GetSnapshot ---------------------------------------------------------------------------------------------
    def get(self, snapshot_id: str) -> SnapshotInfo:
        """One snapshot from the cache (a Pending one reads ready_to_use=false); NOT_FOUND when unknown, failed or
        being deleted."""
        if not snapshot_id:
            raise InvalidArgument("snapshot_id must not be empty")
        snap = self._cluster.snapshots.get(snapshot_id) if naming.is_valid_volume_id(snapshot_id) else None
        if snap is None or snap.deleting or snap.state is State.FAILED:
            raise NotFound(f"snapshot {snapshot_id} does not exist")
        return info(snap)
