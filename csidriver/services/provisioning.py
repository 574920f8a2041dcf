"""CreateVolume, DeleteVolume, ValidateVolumeCapabilities and GetCapacity, on top of ClusterState and the API."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import (
    DeviceSnapshot,
    DeviceVolume,
    ErrorCode,
    State,
    new_volume_body,
    snapshot_from_dict,
    volume_from_dict,
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
    OutOfRange,
    ResourceExhausted,
    Unavailable,
)
from csidriver.services.requests import (
    Capability,
    CreatedVolume,
    CreateRequest,
    Segment,
    capability_problem,
    check_capabilities,
    check_segments,
    describe_segments,
    parse_params,
    volume_size,
)
from scheduler import NodeState, Request, best_node, fits, pool_capacity

log = logging.getLogger(__name__)


class VolumeStore(Protocol):
    """What provisioning needs of the API server (csidriver.kube.resources.Kube provides it)."""

    namespace: str

    async def get_volume(self, name: str) -> dict[str, Any] | None: ...
    async def create_volume(self, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def delete_volume(self, name: str, resource_version: str = "") -> bool: ...
    async def patch_volume(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]: ...
    async def get_snapshot(self, name: str) -> dict[str, Any] | None: ...


def node_labels(cluster: ClusterState, node: str) -> Mapping[str, str]:
    labels = dict(cluster.nodes[node].labels)
    labels.setdefault(c.TOPOLOGY_KEY, node)
    return labels


def matches(labels: Mapping[str, str], segment: Segment) -> bool:
    return all(labels.get(k) == v for k, v in segment.items())


def _settled() -> Callable[[DeviceVolume | None], bool]:
    """True once the volume, after it has been seen, is Ready, Failed, being deleted, or gone."""
    seen = False

    def pred(vol: DeviceVolume | None) -> bool:
        nonlocal seen
        if vol is None:
            return seen
        seen = True
        return vol.deleting or vol.state is not State.PENDING

    return pred


def _refusal(vol: DeviceVolume, request: str) -> Mapping[str, Any] | None:
    """The agent's Resized=False condition answering expansion attempt `request`, or None."""
    for cond in vol.conditions:
        refused = cond.get("type") == c.RESIZED_CONDITION and cond.get("status") == "False"
        if refused and str(cond.get("message", "")).endswith(f"(request {request})"):
            return cond
    return None


def _agent_failure(vol: DeviceVolume | None) -> tuple[str, str] | None:
    """(reason, message) of the failure the agent reports on a Pending volume it keeps retrying, or None."""
    if vol is None or vol.state is not State.PENDING or vol.deleting:
        return None
    for cond in vol.conditions:
        if cond.get("type") == "Ready" and cond.get("status") == "False":
            return str(cond.get("reason") or "AgentError"), str(cond.get("message") or "")
    return None


def _release_blocked(vol: DeviceVolume) -> str | None:
    """The agent's reason why the partition of a deleted volume is not released yet (status condition), or None."""
    for cond in vol.conditions:
        if cond.get("type") == c.RELEASED_CONDITION and cond.get("status") == "False":
            return str(cond.get("message") or cond.get("reason") or "blocked")
    return None


# Seconds between checks that a volume's agent is alive while a call waits on it.
AGENT_CHECK = 1.0
# Seconds a call waits on a volume whose agent reports a failure it retries, before answering with it.
FAILURE_GRACE = 5.0
# Seconds DeleteVolume waits before answering with the agent's reason why a deletion is blocked.
DELETE_GRACE = 5.0
# Seconds to wait for the cache to drop a withdrawn placement.
WITHDRAW_WAIT = 5.0


class VolumeReader(Protocol):
    async def get_volume(self, name: str) -> dict[str, Any] | None: ...


async def ready_source(store: VolumeReader, cluster: ClusterState, volume_id: str) -> DeviceVolume:
    """A Ready volume to copy from (a clone's or a snapshot's source), from the cache or else the API server:
    NOT_FOUND when it does not exist, FAILED_PRECONDITION when it is not Ready or is being deleted."""
    vol = cluster.volumes.get(volume_id) if naming.is_valid_volume_id(volume_id) else None
    if vol is None and naming.is_valid_volume_id(volume_id):
        raw = await store.get_volume(volume_id)
        vol = volume_from_dict(raw) if raw is not None else None
    if vol is None:
        raise NotFound(f"source volume {volume_id} does not exist")
    if vol.deleting or vol.state is not State.READY:
        raise FailedPrecondition(f"source volume {volume_id} is {'being deleted' if vol.deleting else vol.state.value}")
    return vol


class Provisioner:
    def __init__(self, store: VolumeStore, cluster: ClusterState, timeout: float) -> None:
        self._store = store
        self._cluster = cluster
        self._timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}

    # -- CreateVolume ----------------------------------------------------------------------------------------
    async def create(self, req: CreateRequest) -> CreatedVolume:
        if not req.name:
            raise InvalidArgument("name must not be empty")
        check_capabilities(req.capabilities)
        check_segments(req.requisite, "accessibility_requirements.requisite")
        check_segments(req.preferred, "accessibility_requirements.preferred")
        if req.has_mutable_parameters:
            raise InvalidArgument("mutable_parameters are not supported: the driver does not offer ModifyVolume")
        if req.has_content_source and not req.source_volume and not req.source_snapshot:
            raise InvalidArgument("volume_content_source must name a volume (a clone) or a snapshot (a restore)")
        params = parse_params(req.parameters)
        source = await self._clone_source(req.source_volume) if req.source_volume else None
        snapshot = await self._snapshot_source(req.source_snapshot) if req.source_snapshot else None
        base = source.capacity if source else snapshot.capacity if snapshot else 0
        size = volume_size(req.required_bytes or base, req.limit_bytes)
        if source is not None and size < source.capacity:
            raise OutOfRange(f"a clone of {source.name} needs at least its {source.capacity} bytes, not {size}")
        if snapshot is not None and size < snapshot.capacity:
            raise OutOfRange(
                f"a restore of snapshot {snapshot.name} needs at least its {snapshot.capacity} bytes, not {size}"
            )
        name = naming.object_name(req.name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                # The cache answers a retry of a volume this controller has seen; a create that finds the name
                # taken (a volume the cache has not caught up with) reads it from the API server instead. So a first
                # CreateVolume costs one request, not a read and a create.
                vol = await self._existing(name, req, params.pool, self._cluster.volumes.get(name))
                if vol is None:
                    if source is not None:
                        node = self._copy_node(source.owner_node, f"a clone of {source.name}", params.pool, size, req)
                    elif snapshot is not None:
                        what = f"a restore of snapshot {snapshot.name}"
                        node = self._copy_node(snapshot.owner_node, what, params.pool, size, req)
                    else:
                        node = self._choose(params.pool, size, req, params.policy)
                    try:
                        vol = await self._create_object(
                            name, req.name, node, params.pool, size, req, params.room_to_grow
                        )
                    except Exception:
                        raw = await self._store.get_volume(name)
                        if raw is None:
                            raise
                        vol = await self._existing(name, req, params.pool, volume_from_dict(raw))
                        if vol is None:
                            raise
                return await self._outcome(vol)
        finally:
            if not lock.locked():
                self._locks.pop(name, None)

    async def _existing(
        self, name: str, req: CreateRequest, pool: str, vol: DeviceVolume | None
    ) -> DeviceVolume | None:
        """The volume this request names, if it exists and matches it (else ALREADY_EXISTS, or ABORTED while it is
        being deleted); None when there is none, or its placement was withdrawn."""
        if vol is None:
            return None
        if vol.deleting:
            raise Aborted(f"volume {name} is still being deleted; retry shortly")
        if await self._withdrawn(vol):
            return None
        fits_range = vol.capacity >= req.required_bytes and (not req.limit_bytes or vol.capacity <= req.limit_bytes)
        same_source = (
            vol.annotations.get(c.CLONE_SOURCE_ANNOTATION, "") == req.source_volume
            and vol.annotations.get(c.RESTORE_SOURCE_ANNOTATION, "") == req.source_snapshot
        )
        if not same_source:
            raise AlreadyExists(f"volume {name} exists with another content source")
        if not fits_range or vol.pool != pool:
            raise AlreadyExists(
                f"volume {name} exists with {vol.capacity} bytes in pool {vol.pool!r}, incompatible with this request"
            )
        return vol

    async def _withdrawn(self, vol: DeviceVolume) -> bool:
        """Take back a placement on a node whose agent is gone, when no agent has started on it yet (no finalizer:
        our agent adds it before it touches a disk), so this request can place the volume elsewhere. The delete is
        conditional on the version read, so an agent that just started on it wins."""
        why = self._cluster.agent_gone(vol.owner_node)
        if why is None or vol.state is not State.PENDING or vol.finalizers:
            return False
        if not await self._store.delete_volume(vol.name, vol.resource_version):
            return False
        log.warning("volume %s: placement on node %s withdrawn: %s", vol.name, vol.owner_node, why)
        try:
            await self._cluster.wait_for(vol.name, lambda v: v is None, WITHDRAW_WAIT)
        except TimeoutError as e:
            raise Aborted(
                f"volume {vol.name}: its placement on node {vol.owner_node} was withdrawn ({why}); retry"
            ) from e
        return True

    def _candidates(self, req: CreateRequest) -> list[NodeState]:
        states = self._cluster.states()
        if req.requisite:
            states = [
                st for st in states if any(matches(node_labels(self._cluster, st.node), s) for s in req.requisite)
            ]
        return states

    def _preferred(self, req: CreateRequest, candidates: list[str]) -> list[str]:
        """Preferred nodes in order, when the preference narrows the choice.

        The external-provisioner lists *every* requisite node as preferred (in a rotating order) for Immediate
        binding; that expresses no preference and is left to the scheduling policy. A preference that names a
        subset (the selected node of WaitForFirstConsumer, a user's choice) is honoured first."""
        ordered: list[str] = []
        for segment in req.preferred:
            for node in sorted(candidates):
                if node not in ordered and matches(node_labels(self._cluster, node), segment):
                    ordered.append(node)
        if len(candidates) > 1 and set(ordered) >= set(candidates):
            return []
        return ordered

    def _choose(self, pool: str, size: int, req: CreateRequest, policy: Any) -> str:
        states = self._candidates(req)
        if req.requisite and not states:
            wanted = describe_segments(req.requisite)
            raise ResourceExhausted(
                f"no node of the requested topology ({wanted}) runs the driver: no DeviceNode reports from it"
                " (a released node, or its agent is not running)"
            )
        gone = {st.node: why for st in states if (why := self._cluster.agent_gone(st.node)) is not None}
        live = [st for st in states if st.node not in gone]
        for node in self._preferred(req, [st.node for st in states]) if req.preferred else ():
            if node not in gone and fits(self._cluster.node_state(node), pool, size):
                return node
        best = best_node(live, Request(pool=pool, size=size, policy=policy))
        if best is not None:
            return best
        if pool not in self._cluster.known_pools():
            known = ", ".join(sorted(self._cluster.known_pools())) or "none"
            raise ResourceExhausted(f"no node reports pool {pool!r} (pools known: {known})")
        unreachable = sorted(st.node for st in states if st.node in gone and fits(st, pool, size))
        if unreachable:
            shown = "; ".join(f"node {n}: {gone[n]}" for n in unreachable[:3])
            more = f" (and {len(unreachable) - 3} more)" if len(unreachable) > 3 else ""
            raise ResourceExhausted(
                f"only nodes whose agent is gone could fit {size} bytes in pool {pool!r}: {shown}{more}"
            )
        largest = max((pool_capacity(s, pool)[1] for s in live), default=0)
        where = "the requested topology" if req.requisite else "any node"
        raise ResourceExhausted(
            f"no node in {where} can fit {size} bytes in pool {pool!r}: largest free extent is {largest} bytes"
        )

    async def _clone_source(self, volume_id: str) -> DeviceVolume:
        return await ready_source(self._store, self._cluster, volume_id)

    async def _snapshot_source(self, snapshot_id: str) -> DeviceSnapshot:
        snap = self._cluster.snapshots.get(snapshot_id) if naming.is_valid_volume_id(snapshot_id) else None
        if snap is None and naming.is_valid_volume_id(snapshot_id):
            raw = await self._store.get_snapshot(snapshot_id)
            snap = snapshot_from_dict(raw) if raw is not None else None
        if snap is None:
            raise NotFound(f"source snapshot {snapshot_id} does not exist")
        if snap.deleting or snap.state is not State.READY:
            state = "being deleted" if snap.deleting else f"{snap.state.value}, not ready to use"
            raise FailedPrecondition(f"source snapshot {snapshot_id} is {state}")
        return snap

    def _copy_node(self, node: str, what: str, pool: str, size: int, req: CreateRequest) -> str:
        """A clone or a restore is carved on its source's node (the copy is local); say why when that node cannot
        take it."""
        if req.requisite and not any(matches(self._node_labels(node), s) for s in req.requisite):
            raise ResourceExhausted(
                f"{what} is made on its source's node {node}, which the requested topology excludes"
            )
        why = self._cluster.agent_gone(node)
        if why is not None:
            raise ResourceExhausted(f"{what} is made on node {node}, but {why}")
        if node not in self._cluster.nodes or not fits(self._cluster.node_state(node), pool, size):
            largest = pool_capacity(self._cluster.node_state(node), pool)[1] if node in self._cluster.nodes else 0
            raise ResourceExhausted(
                f"node {node} (the source's) cannot fit {what} of {size} bytes in pool {pool!r}: largest free extent"
                f" is {largest} bytes"
            )
        return node

    def _node_labels(self, node: str) -> Mapping[str, str]:
        if node in self._cluster.nodes:
            return node_labels(self._cluster, node)
        return {c.TOPOLOGY_KEY: node}

    async def _create_object(
        self, name: str, csi_name: str, node: str, pool: str, size: int, req: CreateRequest, roomy: bool = False
    ) -> DeviceVolume:
        self._cluster.reserve(name, node, pool, size)
        body = new_volume_body(name, self._store.namespace, node, pool, size, csi_name)
        annotations = body["metadata"].setdefault("annotations", {})
        if req.source_volume:
            annotations[c.CLONE_SOURCE_ANNOTATION] = req.source_volume
        if req.source_snapshot:
            annotations[c.RESTORE_SOURCE_ANNOTATION] = req.source_snapshot
        if roomy:
            annotations[c.PLACEMENT_ANNOTATION] = c.PLACEMENT_ROOM_TO_GROW
        try:
            raw = await self._store.create_volume(body)
        except Exception:
            self._cluster.release(name)
            raise
        log.info("volume %s: placed on node %s pool %s (%d bytes)", name, node, pool, size)
        return volume_from_dict(raw)

    async def _outcome(self, vol: DeviceVolume) -> CreatedVolume:
        name = vol.name
        final = await self._wait_on_node(vol, _settled(), "is not ready yet")
        if final is None or final.deleting:
            raise Aborted(f"volume {name} was deleted while it was being created")
        if final.state is State.FAILED:
            await self._store.delete_volume(name)
            msg = f"node {final.owner_node}: {final.error_message or 'volume creation failed'}"
            if final.error_code is ErrorCode.INSUFFICIENT_CAPACITY:
                raise ResourceExhausted(msg)
            raise Internal(msg)
        return CreatedVolume(
            volume_id=name,
            capacity=final.capacity,
            node=final.owner_node,
            pool=final.pool,
            context={c.CTX_DEVICE_NAME: final.pool, c.CTX_CAS_TYPE: c.CAS_TYPE},
            source_volume=final.annotations.get(c.CLONE_SOURCE_ANNOTATION, ""),
            source_snapshot=final.annotations.get(c.RESTORE_SOURCE_ANNOTATION, ""),
        )

    async def _wait_on_node(self, vol: DeviceVolume, pred: Callable[[DeviceVolume | None], bool], what: str) -> Any:
        """Wait for `pred` on the cached volume, for the timeout; answer at once (UNAVAILABLE) when the agent of
        the volume's node is gone meanwhile, and after FAILURE_GRACE with the agent's own account when it reports
        a failure it keeps retrying (status Ready=False), rather than at the end of the timeout."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self._timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                failing = _agent_failure(self._cluster.volumes.get(vol.name))
                cause = f": {failing[1]}" if failing else ""
                raise DeadlineExceeded(f"volume {vol.name} {what} on node {vol.owner_node}{cause}; retry")
            try:
                return await self._cluster.wait_for(vol.name, pred, min(left, AGENT_CHECK))
            except TimeoutError:
                pass
            why = self._cluster.agent_gone(vol.owner_node)
            if why is not None:
                raise Unavailable(f"volume {vol.name} {what}: node {vol.owner_node}: {why}")
            failing = _agent_failure(self._cluster.volumes.get(vol.name))
            if failing is not None and loop.time() - start >= FAILURE_GRACE:
                reason, message = failing
                if reason in ("NotAPoolDisk", "PartitionBusy"):
                    raise FailedPrecondition(f"volume {vol.name} {what}: {message}")
                raise Internal(f"volume {vol.name} {what}: {message} (the agent keeps retrying)")

    # -- DeleteVolume ----------------------------------------------------------------------------------------
    async def delete(self, volume_id: str) -> None:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        if not naming.is_valid_volume_id(volume_id):
            return  # no object can carry this name: it does not exist, and deleting nothing succeeds
        if self._cluster.seen_deleted(volume_id):
            return  # its deletion was delivered by the watch: a repeated call
        known = self._cluster.volumes.get(volume_id)
        if known is None or not known.deleting:  # an object being deleted stays so: no second request
            await self._store.delete_volume(volume_id)  # deleting an absent volume succeeds: no read first
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            # Short slices: a deletion the agent reports blocked (mounted, disk missing) or whose agent is gone is
            # answered within DELETE_GRACE, with the agent's reason, not at the end of the timeout.
            left = deadline - loop.time()
            try:
                await self._cluster.wait_for(volume_id, lambda v: v is None, max(0.0, min(left, DELETE_GRACE)))
                return
            except TimeoutError:
                pass
            vol = self._cluster.volumes.get(volume_id)
            if vol is None:
                return
            blocked = _release_blocked(vol)
            if blocked is not None:
                raise FailedPrecondition(f"volume {volume_id} cannot be deleted yet: {blocked}")
            why = self._cluster.agent_gone(vol.owner_node)
            if why is not None:
                raise Unavailable(
                    f"volume {volume_id} is being deleted, but node {vol.owner_node}: {why}; it completes when the"
                    " agent is back (or after `kubectl device-localpv release-node`)"
                )
            if loop.time() >= deadline:
                why = vol.error_message or "the node agent has not released it yet"
                raise DeadlineExceeded(f"volume {volume_id} is being deleted: {why}")

    # -- ControllerExpandVolume --------------------------------------------------------------------------------
    async def expand(
        self, volume_id: str, required: int, limit: int, cap: Capability | None = None
    ) -> tuple[int, bool]:
        """Grow a volume in place: raise spec.capacity, then wait for the agent to grow the partition (or to refuse,
        in a Resized=False condition naming this attempt). Returns (bytes, whether NodeExpandVolume must grow a
        filesystem)."""
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        if required < 0 or limit < 0:
            raise InvalidArgument("capacity_range bytes must not be negative")
        if required == 0 and limit == 0:
            raise InvalidArgument("capacity_range must be set")
        if cap is not None:
            check_capabilities((cap,))
        block = cap.block if cap is not None else None
        size = volume_size(required, limit)
        vol = self._cluster.volumes.get(volume_id) if naming.is_valid_volume_id(volume_id) else None
        if vol is None:
            raw = await self._store.get_volume(volume_id) if naming.is_valid_volume_id(volume_id) else None
            if raw is None:
                raise NotFound(f"volume {volume_id} does not exist")
            vol = volume_from_dict(raw)
        if vol.deleting or vol.state is not State.READY:
            raise FailedPrecondition(f"volume {volume_id} is {'being deleted' if vol.deleting else vol.state.value}")
        node_step = block is not True
        held = vol.capacity_bytes or 0
        if size <= held:
            return held, node_step
        why = self._cluster.agent_gone(vol.owner_node)
        if why is not None:
            raise Unavailable(f"volume {volume_id} cannot grow now: node {vol.owner_node}: {why}")
        # Each attempt carries a new request id, which the agent names in a refusal: an older refusal (before a
        # neighbour was deleted, say) is not taken for this attempt's answer, and the agent tries again at once.
        request = uuid.uuid4().hex[:12]
        patch = {
            "metadata": {"annotations": {c.RESIZE_REQUEST_ANNOTATION: request}},
            "spec": {"capacity": str(max(size, vol.capacity))},
        }
        vol = volume_from_dict(await self._store.patch_volume(volume_id, patch))

        def settled(v: DeviceVolume | None) -> bool:
            return v is None or v.deleting or (v.capacity_bytes or 0) >= size or _refusal(v, request) is not None

        final = await self._wait_on_node(vol, settled, "is still growing")
        if final is None or final.deleting:
            raise Aborted(f"volume {volume_id} was deleted while it was growing")
        if (final.capacity_bytes or 0) >= size:
            return final.capacity_bytes or size, node_step
        cond = _refusal(final, request) or {}
        message = f"volume {volume_id}: {cond.get('message') or 'the partition could not grow'}"
        if cond.get("reason") == "InsufficientCapacity":
            raise ResourceExhausted(message)
        raise Internal(message)

    # -- ValidateVolumeCapabilities ----------------------------------------------------------------------------
    async def validate(
        self, volume_id: str, caps: tuple[Capability, ...], params: Mapping[str, str]
    ) -> tuple[bool, str]:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        if not caps:
            raise InvalidArgument("volume_capabilities must not be empty")
        if not naming.is_valid_volume_id(volume_id) or await self._store.get_volume(volume_id) is None:
            raise NotFound(f"volume {volume_id} does not exist")
        if params:
            parse_params(params)
        for cap in caps:
            problem = capability_problem(cap)
            if problem:
                return False, problem
        return True, ""

    # -- GetCapacity -----------------------------------------------------------------------------------------
    def capacity(
        self, params: Mapping[str, str], topology: Segment | None, caps: Sequence[Capability]
    ) -> tuple[int, int]:
        """(available bytes = total free, maximum volume size = largest extent) in the pool and topology."""
        if topology:
            check_segments((topology,), "accessible_topology")
        for cap in caps:
            if capability_problem(cap):
                return 0, 0
        pools: set[str] | None = None
        if params:
            pools = {parse_params(params).pool}
        total = largest = 0
        for node in list(self._cluster.nodes):
            if topology and not matches(node_labels(self._cluster, node), topology):
                continue
            st = self._cluster.node_state(node)
            for pool in pools if pools is not None else {d.pool for d in st.disks}:
                free, extent = pool_capacity(st, pool)
                total += free
                largest = max(largest, extent)
        return total, largest
