"""CreateVolume, DeleteVolume, ValidateVolumeCapabilities and GetCapacity, on top of ClusterState and the API."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import DeviceVolume, ErrorCode, State, new_volume_body, volume_from_dict
from csidriver.services.cluster import ClusterState
from csidriver.services.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    Internal,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from csidriver.services.requests import (
    Capability,
    CreatedVolume,
    CreateRequest,
    Segment,
    capability_problem,
    check_capabilities,
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
    async def delete_volume(self, name: str) -> None: ...


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
        if req.has_content_source:
            raise InvalidArgument("volume content sources (snapshots, clones) are not supported")
        params = parse_params(req.parameters)
        size = volume_size(req.required_bytes, req.limit_bytes)
        name = naming.object_name(req.name)
        lock = self._locks.setdefault(name, asyncio.Lock())
        try:
            async with lock:
                vol = await self._existing(name, req, params.pool)
                if vol is None:
                    node = self._choose(params.pool, size, req, params.policy)
                    vol = await self._create_object(name, req.name, node, params.pool, size)
                return await self._outcome(vol)
        finally:
            if not lock.locked():
                self._locks.pop(name, None)

    async def _existing(self, name: str, req: CreateRequest, pool: str) -> DeviceVolume | None:
        raw = await self._store.get_volume(name)
        if raw is None:
            return None
        vol = volume_from_dict(raw)
        if vol.deleting:
            raise Aborted(f"volume {name} is still being deleted; retry shortly")
        fits_range = vol.capacity >= req.required_bytes and (not req.limit_bytes or vol.capacity <= req.limit_bytes)
        if not fits_range or vol.pool != pool:
            raise AlreadyExists(
                f"volume {name} exists with {vol.capacity} bytes in pool {vol.pool!r}, incompatible with this request"
            )
        return vol

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
            wanted = "; ".join(",".join(f"{k}={v}" for k, v in sorted(seg.items())) for seg in req.requisite)
            raise ResourceExhausted(
                f"no node of the requested topology ({wanted}) runs the driver: no DeviceNode reports from it"
                " (a released node, or its agent is not running)"
            )
        for node in self._preferred(req, [st.node for st in states]) if req.preferred else ():
            if fits(self._cluster.node_state(node), pool, size):
                return node
        best = best_node(states, Request(pool=pool, size=size, policy=policy))
        if best is not None:
            return best
        if pool not in self._cluster.known_pools():
            known = ", ".join(sorted(self._cluster.known_pools())) or "none"
            raise ResourceExhausted(f"no node reports pool {pool!r} (pools known: {known})")
        largest = max((pool_capacity(s, pool)[1] for s in states), default=0)
        where = "the requested topology" if req.requisite else "any node"
        raise ResourceExhausted(
            f"no node in {where} can fit {size} bytes in pool {pool!r}: largest free extent is {largest} bytes"
        )

    async def _create_object(self, name: str, csi_name: str, node: str, pool: str, size: int) -> DeviceVolume:
        self._cluster.reserve(name, node, pool, size)
        try:
            raw = await self._store.create_volume(
                new_volume_body(name, self._store.namespace, node, pool, size, csi_name)
            )
        except Exception:
            self._cluster.release(name)
            raise
        log.info("volume %s: placed on node %s pool %s (%d bytes)", name, node, pool, size)
        return volume_from_dict(raw)

    async def _outcome(self, vol: DeviceVolume) -> CreatedVolume:
        name = vol.name
        try:
            final = await self._cluster.wait_for(name, _settled(), self._timeout)
        except TimeoutError as e:
            raise DeadlineExceeded(f"volume {name} is not ready yet on node {vol.owner_node}; retry") from e
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
        )

    # -- DeleteVolume ----------------------------------------------------------------------------------------
    async def delete(self, volume_id: str) -> None:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        if not naming.is_valid_volume_id(volume_id):
            return  # no object can carry this name: it does not exist, and deleting nothing succeeds
        if await self._store.get_volume(volume_id) is None:
            return
        await self._store.delete_volume(volume_id)
        try:
            await self._cluster.wait_for(volume_id, lambda v: v is None, self._timeout)
        except TimeoutError as e:
            vol = self._cluster.volumes.get(volume_id)
            why = vol.error_message if vol and vol.error_message else "the node agent has not released it yet"
            raise DeadlineExceeded(f"volume {volume_id} is being deleted: {why}") from e

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
