"""The controller's view of the cluster, fed by informers and aggregated incrementally for the scheduler.

Nothing here makes a request: informer handlers call `on_volume`/`on_node`; CreateVolume reads the aggregates.
A volume counts as *pending* (its bytes not yet reflected in its node's DeviceNode) from the moment this process
reserves it until its node's DeviceNode accounts for its partition: while it is Pending, and once Ready until the
DeviceNode's inventory generation reaches the one the agent stamped on the volume (status.inventoryGeneration; the
agent writes its DeviceNode after a create within a coalescing window, not before Ready). Between the DeviceNode
write and the volume's next event the bytes count twice (conservative), never zero times.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from csidriver.api import naming
from csidriver.api.objects import (
    DeviceNode,
    DeviceSnapshot,
    DeviceVolume,
    State,
    node_from_dict,
    snapshot_from_dict,
    volume_from_dict,
)
from scheduler import DiskState, NodeState

T = TypeVar("T")
Predicate = Callable[[DeviceVolume | None], bool]


class Waiters(Generic[T]):
    """Calls waiting for a cached object (by name) to satisfy a predicate; resolved by informer events, never by
    polling."""

    def __init__(self, current: Mapping[str, T]) -> None:
        self._current = current
        self._waiters: dict[str, list[tuple[Callable[[T | None], bool], asyncio.Future[T | None]]]] = {}

    def wake(self, name: str, obj: T | None) -> None:
        waiters = self._waiters.get(name)
        if not waiters:
            return
        keep = []
        for pred, fut in waiters:
            if fut.done():
                continue
            if pred(obj):
                fut.set_result(obj)
            else:
                keep.append((pred, fut))
        if keep:
            self._waiters[name] = keep
        else:
            self._waiters.pop(name, None)

    async def wait_for(self, name: str, pred: Callable[[T | None], bool], timeout: float) -> T | None:  # noqa: ASYNC109
        """The first cached state of `name` satisfying `pred` (raises TimeoutError)."""
        current = self._current.get(name)
        if pred(current):
            return current
        fut: asyncio.Future[T | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(name, []).append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            if not fut.done():
                fut.cancel()


@dataclass(frozen=True)
class _Beat:
    stamp: str  # the Lease's renewTime as last seen
    seen: float  # our monotonic clock when that renewTime was first seen
    duration: float  # the Lease's leaseDurationSeconds


# Allowed difference between a node's clock and ours, when judging a Lease seen for the first time by its renewTime.
CLOCK_SKEW = 5.0
DELETED_MEMORY = 4096  # volume deletions remembered (seen_deleted): enough for the deletions of a burst in flight


@dataclass(frozen=True)
class Reservation:
    node: str
    pool: str
    size: int
    until: int = 0  # a Ready volume's stamp: counted until its node's DeviceNode reaches it (0: while Pending)


class ClusterState:
    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._beats: dict[str, _Beat] = {}  # node -> its agent's last heartbeat
        self._beat_nodes: dict[str, str] = {}  # Lease name -> node
        self.nodes: dict[str, DeviceNode] = {}
        self.volumes: dict[str, DeviceVolume] = {}
        self._load: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # (node,pool) -> bytes, count
        self._pending: dict[str, dict[str, Reservation]] = defaultdict(dict)  # node -> volume -> reservation
        self._reserved: dict[str, Reservation] = {}  # volume -> reservation made here, not yet in the cache
        self._deleted: dict[str, None] = {}  # volumes whose deletion the watch delivered, oldest first (bounded)
        self._states: dict[str, NodeState] = {}  # scheduler snapshots of every node, rebuilt when dirty
        self._dirty: set[str] = set()
        self._volume_waiters: Waiters[DeviceVolume] = Waiters(self.volumes)
        self.snapshots: dict[str, DeviceSnapshot] = {}
        self.snapshot_waiters: Waiters[DeviceSnapshot] = Waiters(self.snapshots)

    # -- informer handlers ---------------------------------------------------------------------------------
    def on_volume(self, name: str, _old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        prev = self.volumes.pop(name, None)
        if prev is not None:
            self._account(prev, -1)
        vol = volume_from_dict(new, compact=True) if new is not None else None
        if vol is not None:
            self.volumes[name] = vol
            self._account(vol, +1)
            self._reserved.pop(name, None)
            self._deleted.pop(name, None)
        elif prev is not None:
            self._deleted[name] = None
            if len(self._deleted) > DELETED_MEMORY:
                del self._deleted[next(iter(self._deleted))]
        self._volume_waiters.wake(name, vol)

    def seen_deleted(self, name: str) -> bool:
        """True if the watch delivered this volume's deletion and nothing of that name was seen or reserved since:
        a DeleteVolume repeated after the object went (csi-provisioner often sends two) needs no request."""
        return name in self._deleted and name not in self.volumes and name not in self._reserved

    def on_snapshot(self, name: str, _old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        snap = snapshot_from_dict(new) if new is not None else None
        if snap is None:
            self.snapshots.pop(name, None)
        else:
            self.snapshots[name] = snap
        self.snapshot_waiters.wake(name, snap)

    def on_node(self, name: str, _old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        if new is None:
            self.nodes.pop(name, None)
            self._states.pop(name, None)
            self._dirty.discard(name)
        else:
            node = self.nodes[name] = node_from_dict(new)
            self._dirty.add(name)
            pending = self._pending.get(name)
            if pending:
                for vol in [v for v, r in pending.items() if 0 < r.until <= node.generation]:
                    del pending[vol]

    def on_heartbeat(self, name: str, _old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        """An agent's heartbeat Lease changed. Expiry is judged on our own clock from when a renewal was first seen
        (clock skew between nodes does not matter); a Lease seen for the first time (at start) is dated by its
        renewTime, less CLOCK_SKEW, so a long-dead agent is not taken for alive for a whole duration."""
        if new is None:
            node = self._beat_nodes.pop(name, "")
            self._beats.pop(node, None)
            return
        spec = new.get("spec") or {}
        node = str(spec.get("holderIdentity") or "")
        if not node:
            return
        self._beat_nodes[name] = node
        stamp = str(spec.get("renewTime") or "")
        try:
            duration = float(spec.get("leaseDurationSeconds") or 40)
        except (TypeError, ValueError):
            duration = 40.0
        prev = self._beats.get(node)
        if prev is not None and prev.stamp == stamp:
            if prev.duration != duration:
                self._beats[node] = _Beat(stamp, prev.seen, duration)
            return
        seen = self._clock()
        if prev is None:
            seen -= max(0.0, self._age(stamp) - CLOCK_SKEW)
        self._beats[node] = _Beat(stamp, seen, duration)

    def _age(self, stamp: str) -> float:
        try:
            renewed = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            return (self._wall() - renewed).total_seconds()
        except ValueError:
            return 0.0

    def agent_gone(self, node: str) -> str | None:
        """Why the node's agent counts as gone (its heartbeat Lease was not renewed for the Lease's duration), or
        None. A node with no heartbeat Lease at all is taken as alive: its agent is one that writes none (the
        original driver's, during an upgrade or after a rollback)."""
        beat = self._beats.get(node)
        if beat is None:
            return None
        silent = self._clock() - beat.seen
        if silent <= beat.duration:
            return None
        return (
            f"its agent has not renewed its heartbeat (Lease {naming.heartbeat_name(node)}) for {silent:.0f} s"
            " (the agent is not running, or cannot reach the API server)"
        )

    def _account(self, vol: DeviceVolume, sign: int) -> None:
        load = self._load[(vol.owner_node, vol.pool)]
        load[0] += sign * vol.capacity
        load[1] += sign
        if sign < 0:
            self._pending[vol.owner_node].pop(vol.name, None)
        elif vol.state is State.PENDING and not vol.deleting:
            self._pending[vol.owner_node][vol.name] = Reservation(vol.owner_node, vol.pool, vol.capacity)
        elif (
            vol.inventory_generation
            and vol.state is State.READY
            and vol.inventory_generation > self._generation(vol.owner_node)
        ):
            # Carved and Ready, its DeviceNode not yet rewritten: its bytes still count here (deleting or not: the
            # partition is there until the agent removes it, and writes the DeviceNode before the object goes).
            until = vol.inventory_generation
            self._pending[vol.owner_node][vol.name] = Reservation(vol.owner_node, vol.pool, vol.capacity, until)
        self._dirty.add(vol.owner_node)

    def _generation(self, node: str) -> int:
        dn = self.nodes.get(node)
        return dn.generation if dn is not None else 0

    # -- reservations made by CreateVolume before the object exists ------------------------------------------
    def reserve(self, name: str, node: str, pool: str, size: int) -> None:
        self._reserved[name] = Reservation(node, pool, size)
        self._deleted.pop(name, None)
        self._dirty.add(node)

    def release(self, name: str) -> None:
        r = self._reserved.pop(name, None)
        if r is not None:
            self._dirty.add(r.node)

    # -- scheduler snapshots ---------------------------------------------------------------------------------
    def states(self) -> list[NodeState]:
        """Snapshots of every node (only the nodes that changed since the last call are rebuilt)."""
        for node in list(self._dirty):
            if node in self.nodes:
                self.node_state(node)
        return list(self._states.values())

    def node_state(self, node: str) -> NodeState:
        cached = self._states.get(node)
        if cached is not None and node not in self._dirty:
            return cached
        self._dirty.discard(node)
        dn = self.nodes[node]
        pools = {d.name for d in dn.devices}
        pending: dict[str, list[int]] = defaultdict(list)
        for r in self._pending.get(node, {}).values():
            pending[r.pool].append(r.size)
        for r in self._reserved.values():
            if r.node == node:
                pending[r.pool].append(r.size)
        state = NodeState(
            node=node,
            disks=tuple(
                DiskState(
                    pool=d.name,
                    guid=d.uuid,
                    size=d.size,
                    free=d.free,
                    largest_extent=d.largest_extent,
                    free_entries=d.free_entries,
                    healthy=d.healthy,
                    cordoned=d.cordoned,
                )
                for d in dn.devices
            ),
            provisioned={p: self._load[(node, p)][0] for p in pools if (node, p) in self._load},
            volumes={p: self._load[(node, p)][1] for p in pools if (node, p) in self._load},
            pending={p: tuple(v) for p, v in pending.items()},
        )
        self._states[node] = state
        return state

    def load(self) -> dict[tuple[str, str], tuple[int, int]]:
        """(node, pool) -> (provisioned bytes, volumes), for metrics."""
        return {k: (v[0], v[1]) for k, v in self._load.items() if v[1]}

    def known_pools(self) -> set[str]:
        return {d.name for n in self.nodes.values() for d in n.devices}

    # -- waiting for an outcome (resolved by informer events, never by polling) --------------------------------
    async def wait_for(self, name: str, pred: Predicate, timeout: float) -> DeviceVolume | None:  # noqa: ASYNC109
        """The first cached state of volume `name` satisfying `pred` (raises TimeoutError)."""
        return await self._volume_waiters.wait_for(name, pred, timeout)
