"""Typed access to DeviceVolume, DeviceNode, Node and Event objects. Returns plain dicts (parsed by csidriver.api)."""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from csidriver.api import constants as c
from csidriver.kube.client import JSON_PATCH, MERGE_PATCH, ApiClient, ApiError, Decode, path
from csidriver.kube.informer import Informer

log = logging.getLogger(__name__)
Obj = dict[str, Any]
K = TypeVar("K")
V = TypeVar("V")


class Conflict(Exception):
    """The object changed or already exists (409)."""


class Gone(Exception):
    """The object does not exist (404)."""


def _translate(e: ApiError) -> Exception:
    if e.status == 409:
        return Conflict(str(e))
    if e.status == 404:
        return Gone(str(e))
    return e


_MERGE_PATCH = MERGE_PATCH
_JSON_PATCH = JSON_PATCH
EVENT_AGGREGATION_SECONDS = 600.0


@dataclass(frozen=True)
class _Recorded:
    name: str
    namespace: str
    count: int
    first: float  # monotonic time of the first occurrence


class _Bounded(Generic[K, V]):
    """A small LRU map: the Events this process wrote recently, so repeats can be aggregated."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def pop(self, key: K) -> None:
        self._items.pop(key, None)


def _core(plural: str, namespace: str | None = None, name: str | None = None) -> str:
    return path("", "v1", plural, namespace, name)


class Kube:
    """One namespace's driver objects, plus the few core objects the driver reads or writes."""

    def __init__(self, api: ApiClient, namespace: str, component: str, version: str = c.VERSION) -> None:
        """`version`: the API version of our objects to use (the original's v1alpha1 only to read a cluster
        whose CRDs are not upgraded yet)."""
        self.api = api
        self.namespace = namespace
        self.version = version
        self._component = component
        self._events: _Bounded[tuple[str, ...], _Recorded] = _Bounded(4096)

    def _ours(self, plural: str, name: str | None = None, version: str = "") -> str:
        return path(c.GROUP, version or self.version, plural, self.namespace, name)

    def _informer(
        self,
        target: str,
        what: str,
        *,
        whole: bool,
        keep_objects: bool = True,
        label_selector: str | None = None,
        field_selector: str | None = None,
        decode: Decode = json.loads,
    ) -> Informer:
        """`whole`: every object of the cluster, as the controller reads it: streamed rather than listed in one
        response from the API server's cache. A list filtered to one node (an agent's) stays a list from the cache:
        small, and it spares etcd (on servers before 1.31) a scan of every object per node when all agents start at
        once. keep_objects=False where the consumer keeps its own compact form (the controller's ClusterState).
        `decode`: how each line of its watches is read."""
        return Informer(
            self.api,
            target,
            what=what,
            label_selector=label_selector,
            field_selector=field_selector,
            keep_objects=keep_objects,
            list_from_cache=not whole,
            decode=decode,
        )

    def heartbeat_informer(self, decode: Decode = json.loads) -> Informer:
        """The agents' heartbeat Leases of the namespace (server-side filtered by their label), for the controller."""
        leases = path("coordination.k8s.io", "v1", "leases", self.namespace)
        return self._informer(
            leases, "heartbeats", whole=True, keep_objects=False, label_selector=c.HEARTBEAT_LABEL, decode=decode
        )

    def volume_informer(self, node: str | None = None, decode: Decode = json.loads) -> Informer:
        """All volumes of the namespace (the controller's, keeping no objects), or (server-side filtered) only those
        owned by `node`. The filter is the CRD's selectable field spec.ownerNodeID, not the node label, which objects
        the original's controller created lack."""
        selector = f"spec.ownerNodeID={node}" if node else None
        whole = node is None
        return self._informer(
            self._ours(c.VOLUME_PLURAL),
            "devicevolumes",
            whole=whole,
            keep_objects=not whole,
            field_selector=selector,
            decode=decode,
        )

    def node_informer(self, name: str | None = None) -> Informer:
        """All DeviceNodes, or (server-side filtered) only the one called `name`. Objects are kept: the controller's
        DiskFailureEvents compares each node with its previous state."""
        selector = f"metadata.name={name}" if name else None
        return self._informer(self._ours(c.NODE_PLURAL), "devicenodes", whole=name is None, field_selector=selector)

    async def _call(
        self,
        method: str,
        plural: str,
        name: str | None = None,
        body: Any = None,
        *,
        absent_ok: bool = False,
        version: str = "",
        status: bool = False,
        content_type: str = "application/json",
    ) -> Any:
        """One call on a namespaced object of ours (its status subresource with `status`). With `absent_ok`, a
        404 returns None; a failed JSON-patch `test` (422) is a Conflict; 409/404 become Conflict/Gone."""
        target = self._ours(plural, name, version) + ("/status" if status else "")
        try:
            return await self.api.call(method, target, body, content_type=content_type)
        except ApiError as e:
            if e.status == 404 and absent_ok:
                return None
            if e.status == 422 and content_type == _JSON_PATCH:
                raise Conflict(str(e)) from e
            err = _translate(e)
            if err is e:
                raise
            raise err from e

    # -- DeviceVolume -------------------------------------------------------------------------------------
    async def get_volume(self, name: str) -> Obj | None:
        got: Obj | None = await self._call("GET", c.VOLUME_PLURAL, name, absent_ok=True)
        return got

    async def create_volume(self, body: Mapping[str, Any]) -> Obj:
        """Created through the original's version, where status is part of the object: it carries
        `status.state: Pending` from its first write, which the original's agents require to carve it (during a
        rolling upgrade, or after a rollback). Through v1alpha2 the API server would drop that status."""
        body = {**body, "apiVersion": f"{c.GROUP}/{c.ORIGINAL_VERSION}"}
        obj: Obj = await self._call("POST", c.VOLUME_PLURAL, body=body, version=c.ORIGINAL_VERSION)
        return obj

    async def delete_volume(self, name: str, resource_version: str = "") -> bool:
        """Deleting an absent volume succeeds. With `resource_version`, only that version of it is deleted: False
        when the object changed since."""
        body = {"preconditions": {"resourceVersion": resource_version}} if resource_version else None
        try:
            await self._call("DELETE", c.VOLUME_PLURAL, name, body, absent_ok=True)
        except Conflict:
            if not resource_version:
                raise
            return False
        return True

    async def patch_volume(self, name: str, patch: Mapping[str, Any]) -> Obj:
        obj: Obj = await self._call("PATCH", c.VOLUME_PLURAL, name, patch, content_type=_MERGE_PATCH)
        return obj

    async def patch_volume_status(self, name: str, status: Mapping[str, Any]) -> Obj:
        obj: Obj = await self._call(
            "PATCH", c.VOLUME_PLURAL, name, {"status": status}, status=True, content_type=_MERGE_PATCH
        )
        return obj

    async def _json_patch(self, name: str, ops: list[dict[str, Any]], plural: str = c.VOLUME_PLURAL) -> Obj:
        version = c.VERSION if plural == c.SNAPSHOT_PLURAL else ""  # a kind served only in our version
        obj: Obj = await self._call("PATCH", plural, name, ops, content_type=_JSON_PATCH, version=version)
        return obj

    async def add_finalizer(
        self,
        name: str,
        finalizers: tuple[str, ...],
        finalizer: str,
        plural: str = c.VOLUME_PLURAL,
        resource_version: str = "",
    ) -> Obj:
        """On a DeviceVolume, or another kind of ours by its plural; a Conflict unless the object's finalizers are
        still `finalizers`. An empty list cannot be tested in a JSON patch (a missing member fails `test`, and `add`
        would replace a list that appeared meanwhile), so then the object's version is tested instead: the
        `resource_version` the caller read, or one read here."""
        ops: list[dict[str, Any]]
        if finalizers:
            ops = [
                {"op": "test", "path": "/metadata/finalizers", "value": list(finalizers)},
                {"op": "add", "path": "/metadata/finalizers/-", "value": finalizer},
            ]
        else:
            if not resource_version:
                version = c.VERSION if plural == c.SNAPSHOT_PLURAL else ""
                current: Obj = await self._call("GET", plural, name, version=version)
                if current["metadata"].get("finalizers"):
                    raise Conflict(f"{name}: finalizers changed")
                resource_version = str(current["metadata"]["resourceVersion"])
            ops = [
                {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
                {"op": "add", "path": "/metadata/finalizers", "value": [finalizer]},
            ]
        return await self._json_patch(name, ops, plural)

    async def remove_finalizer(
        self, name: str, finalizers: tuple[str, ...], finalizer: str, plural: str = c.VOLUME_PLURAL
    ) -> Obj:
        """Removes only `finalizer`, and only if the list is still what we saw (JSON patch test)."""
        i = finalizers.index(finalizer)
        ops = [
            {"op": "test", "path": f"/metadata/finalizers/{i}", "value": finalizer},
            {"op": "remove", "path": f"/metadata/finalizers/{i}"},
        ]
        return await self._json_patch(name, ops, plural)

    async def list_volumes(self) -> list[Obj]:
        """All DeviceVolumes (for operators' commands, never a hot path)."""
        page = await self.api.list_all(self._ours(c.VOLUME_PLURAL))
        return list(page.get("items") or [])

    # -- DeviceSnapshot -----------------------------------------------------------------------------------
    def snapshot_informer(self, node: str | None = None, decode: Decode = json.loads) -> Informer:
        """All snapshots of the namespace (the controller's, keeping no objects), or (server-side filtered) only
        those on `node`."""
        selector = f"spec.ownerNodeID={node}" if node else None
        snapshots = self._ours(c.SNAPSHOT_PLURAL, version=c.VERSION)
        whole = node is None
        return self._informer(
            snapshots, "devicesnapshots", whole=whole, keep_objects=not whole, field_selector=selector, decode=decode
        )

    async def get_snapshot(self, name: str) -> Obj | None:
        got: Obj | None = await self._call("GET", c.SNAPSHOT_PLURAL, name, absent_ok=True, version=c.VERSION)
        return got

    async def create_snapshot(self, body: Mapping[str, Any]) -> Obj:
        obj: Obj = await self._call("POST", c.SNAPSHOT_PLURAL, body=body, version=c.VERSION)
        return obj

    async def delete_snapshot(self, name: str) -> None:
        """Deleting an absent snapshot succeeds."""
        await self._call("DELETE", c.SNAPSHOT_PLURAL, name, absent_ok=True, version=c.VERSION)

    async def patch_snapshot_status(self, name: str, status: Mapping[str, Any]) -> Obj:
        obj: Obj = await self._call(
            "PATCH",
            c.SNAPSHOT_PLURAL,
            name,
            {"status": status},
            status=True,
            content_type=_MERGE_PATCH,
            version=c.VERSION,
        )
        return obj

    async def list_snapshots(self) -> list[Obj]:
        """All DeviceSnapshots (for operators' commands, never a hot path); none when the CRD is not installed."""
        try:
            page = await self.api.list_all(self._ours(c.SNAPSHOT_PLURAL, version=c.VERSION))
        except ApiError as e:
            if e.status == 404:
                return []
            raise
        return list(page.get("items") or [])

    # -- DeviceNode ---------------------------------------------------------------------------------------
    async def get_device_node(self, name: str) -> Obj | None:
        got: Obj | None = await self._call("GET", c.NODE_PLURAL, name, absent_ok=True)
        return got

    async def create_device_node(self, body: Mapping[str, Any]) -> Obj:
        obj: Obj = await self._call("POST", c.NODE_PLURAL, body=body)
        return obj

    async def replace_device_node(self, name: str, body: Mapping[str, Any]) -> Obj:
        obj: Obj = await self._call("PUT", c.NODE_PLURAL, name, body)
        return obj

    async def patch_device_node(self, name: str, patch: Mapping[str, Any]) -> Obj:
        obj: Obj = await self._call("PATCH", c.NODE_PLURAL, name, patch, content_type=_MERGE_PATCH)
        return obj

    async def delete_device_node(self, name: str) -> None:
        await self._call("DELETE", c.NODE_PLURAL, name, absent_ok=True)

    async def list_device_nodes(self) -> list[Obj]:
        page = await self.api.list_all(self._ours(c.NODE_PLURAL))
        return list(page.get("items") or [])

    async def list_pvs(self) -> list[Obj]:
        return list((await self.api.list_all(_core("persistentvolumes"))).get("items") or [])

    # -- core: persistent volumes and their consumers (operators' commands) -------------------------------
    async def _read(
        self, method: str, target: str, body: Any = None, content_type: str = "application/json"
    ) -> Obj | None:
        """A call on a core or cluster-scoped object, its answer as a dict; None when the object does not exist (so
        patching or deleting an absent object is a no-op)."""
        try:
            got: Obj = await self.api.call(method, target, body, content_type=content_type)
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return got

    async def get_pv(self, name: str) -> Obj | None:
        return await self._read("GET", _core("persistentvolumes", None, name))

    async def patch_pv(self, name: str, patch: Mapping[str, Any]) -> None:
        """Patching an absent PV is a no-op (it may have just finished deleting)."""
        await self._read("PATCH", _core("persistentvolumes", None, name), patch, _MERGE_PATCH)

    async def delete_pv(self, name: str) -> None:
        await self._read("DELETE", _core("persistentvolumes", None, name))

    async def create_pv(self, body: Mapping[str, Any]) -> None:
        try:
            await self.api.create(_core("persistentvolumes"), body)
        except ApiError as e:
            raise _translate(e) from e

    # -- cluster-wide reads for `upgrade-check` ----------------------------------------------------------------
    async def get_crd(self, name: str) -> Obj | None:
        return await self._read("GET", path("apiextensions.k8s.io", "v1", "customresourcedefinitions", None, name))

    async def list_storage_classes(self) -> list[Obj]:
        classes = await self.api.list_all(path("storage.k8s.io", "v1", "storageclasses"))
        return list(classes.get("items") or [])

    async def pods_using_claim(self, namespace: str, claim: str) -> list[str]:
        pods = await self.api.list_all(_core("pods", namespace))
        return [
            p["metadata"]["name"]
            for p in pods.get("items") or []
            if any(
                (v.get("persistentVolumeClaim") or {}).get("claimName") == claim for v in p["spec"].get("volumes") or []
            )
        ]

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self._read("DELETE", _core("pods", namespace, name))

    # -- core ---------------------------------------------------------------------------------------------
    async def get_node(self, name: str) -> Obj | None:
        return await self._read("GET", _core("nodes", None, name))

    async def record_event(self, obj: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str) -> None:
        """Best effort: an Event that cannot be written is logged, never fatal.

        Repeats are aggregated as Kubernetes' own recorders do: the same reason and message on the same object
        within `EVENT_AGGREGATION_SECONDS` raise the count and lastTimestamp of the Event already written (one
        merge patch) instead of adding another object, so a retried failure shows as one Event with a count."""
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace") or self.namespace
        now = datetime.datetime.now(datetime.UTC)
        key = (kind, namespace, str(meta.get("name")), str(meta.get("uid")), event_type, reason, message[:1024])
        try:
            if await self._bump_event(key, now):
                return
            body = {
                "metadata": {"generateName": f"{meta.get('name', 'obj')}.", "namespace": namespace},
                "involvedObject": {
                    "apiVersion": obj.get("apiVersion", c.API_VERSION),
                    "kind": kind,
                    "name": meta.get("name"),
                    "namespace": meta.get("namespace"),
                    "uid": meta.get("uid"),
                    "resourceVersion": meta.get("resourceVersion"),
                },
                "type": event_type,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": self._component},
                "firstTimestamp": now.isoformat(),
                "lastTimestamp": now.isoformat(),
                "count": 1,
                "reportingComponent": self._component,
            }
            made = await self.api.create(_core("events", namespace), body)
            self._events.put(key, _Recorded(made["metadata"]["name"], namespace, 1, time.monotonic()))
        except Exception as e:
            log.warning("could not record event %s on %s: %s", reason, meta.get("name"), e)

    async def _bump_event(self, key: tuple[str, ...], now: datetime.datetime) -> bool:
        seen = self._events.get(key)
        if seen is None or time.monotonic() - seen.first > EVENT_AGGREGATION_SECONDS:
            return False
        patch = {"count": seen.count + 1, "lastTimestamp": now.isoformat()}
        try:
            await self.api.patch(_core("events", seen.namespace, seen.name), patch, _MERGE_PATCH)
        except ApiError as e:
            if e.status != 404:  # the Event expired (the API server keeps Events for an hour): write a new one
                raise
            self._events.pop(key)
            return False
        self._events.put(key, _Recorded(seen.name, seen.namespace, seen.count + 1, seen.first))
        return True
