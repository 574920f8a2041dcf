"""An in-memory API server for the driver's own kinds, with the semantics the driver relies on.

What it keeps of the real one (each checked against a real kube-apiserver by tests/contract):
- create of an existing name is a Conflict; reads of an absent object are None; writes to one are Gone;
- resourceVersion changes on every write; metadata.generation on every spec change;
- status is merge-patched (a None value removes the key);
- finalizer patches carry a `test` of the list the caller saw: a stale list is a Conflict, and no finalizer can be
  added to an object being deleted;
- delete of an object with finalizers only sets deletionTimestamp; it goes when its last finalizer is removed;
  a delete with a resourceVersion precondition that no longer holds deletes nothing (False).

`cache(plural)` is a live view of the stored objects, as an informer with no lag would hold them.
"""

from __future__ import annotations

import copy
import datetime
import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from csidriver.api import constants as c
from csidriver.kube.resources import Conflict, Gone

Obj = dict[str, Any]


def _merge(into: dict[str, Any], patch: Mapping[str, Any]) -> None:
    """JSON merge patch (RFC 7386)."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Event:
    kind: str
    name: str
    event_type: str
    reason: str
    message: str


@dataclass
class FakeKube:
    namespace: str = c.DEFAULT_NAMESPACE
    objects: dict[str, dict[str, Obj]] = field(
        default_factory=lambda: {c.VOLUME_PLURAL: {}, c.SNAPSHOT_PLURAL: {}, c.NODE_PLURAL: {}}
    )
    events: list[Event] = field(default_factory=list)
    writes: list[tuple[str, str, str]] = field(default_factory=list)  # (verb, plural, name), in order
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def cache(self, plural: str) -> Mapping[str, Obj]:
        return self.objects[plural]

    # -- generic ------------------------------------------------------------------------------------------------
    def _stamp(self, obj: Obj) -> None:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def _get(self, plural: str, name: str) -> Obj | None:
        found = self.objects[plural].get(name)
        return copy.deepcopy(found) if found is not None else None

    def _must(self, plural: str, name: str) -> Obj:
        found = self.objects[plural].get(name)
        if found is None:
            raise Gone(f"{plural} {name} not found")
        return found

    def _create(self, plural: str, body: Mapping[str, Any]) -> Obj:
        name = body["metadata"]["name"]
        if name in self.objects[plural]:
            raise Conflict(f"{plural} {name} already exists")
        obj = copy.deepcopy(dict(body))
        obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        obj["metadata"].setdefault("namespace", self.namespace)
        obj["apiVersion"] = c.API_VERSION
        self._stamp(obj)
        self.objects[plural][name] = obj
        self.writes.append(("create", plural, name))
        return copy.deepcopy(obj)

    def _delete(self, plural: str, name: str, resource_version: str = "") -> bool:
        obj = self.objects[plural].get(name)
        if obj is None:
            return True
        if resource_version and obj["metadata"]["resourceVersion"] != resource_version:
            return False
        self.writes.append(("delete", plural, name))
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj["metadata"]["deletionTimestamp"] = _now()
                self._stamp(obj)
        else:
            del self.objects[plural][name]
        return True

    def _patch_status(self, plural: str, name: str, status: Mapping[str, Any]) -> Obj:
        obj = self._must(plural, name)
        current = obj.setdefault("status", {})
        _merge(current, status)
        self._stamp(obj)
        self.writes.append(("patch-status", plural, name))
        return copy.deepcopy(obj)

    # -- DeviceVolume --------------------------------------------------------------------------------------------
    async def get_volume(self, name: str) -> Obj | None:
        return self._get(c.VOLUME_PLURAL, name)

    async def create_volume(self, body: Mapping[str, Any]) -> Obj:
        return self._create(c.VOLUME_PLURAL, body)

    async def delete_volume(self, name: str, resource_version: str = "") -> bool:
        return self._delete(c.VOLUME_PLURAL, name, resource_version)

    async def patch_volume(self, name: str, patch: Mapping[str, Any]) -> Obj:
        obj = self._must(c.VOLUME_PLURAL, name)
        before = copy.deepcopy(obj.get("spec"))
        _merge(obj, {k: v for k, v in patch.items() if k in ("metadata", "spec")})
        if obj.get("spec") != before:
            obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1
        self._stamp(obj)
        self.writes.append(("patch", c.VOLUME_PLURAL, name))
        return copy.deepcopy(obj)

    async def patch_volume_status(self, name: str, status: Mapping[str, Any]) -> Obj:
        return self._patch_status(c.VOLUME_PLURAL, name, status)

    # -- DeviceSnapshot ------------------------------------------------------------------------------------------
    async def get_snapshot(self, name: str) -> Obj | None:
        return self._get(c.SNAPSHOT_PLURAL, name)

    async def create_snapshot(self, body: Mapping[str, Any]) -> Obj:
        return self._create(c.SNAPSHOT_PLURAL, body)

    async def delete_snapshot(self, name: str) -> None:
        self._delete(c.SNAPSHOT_PLURAL, name)

    async def patch_snapshot_status(self, name: str, status: Mapping[str, Any]) -> Obj:
        return self._patch_status(c.SNAPSHOT_PLURAL, name, status)

    async def list_snapshots(self) -> list[Obj]:
        return [copy.deepcopy(o) for o in self.objects[c.SNAPSHOT_PLURAL].values()]

    async def list_volumes(self) -> list[Obj]:
        return [copy.deepcopy(o) for o in self.objects[c.VOLUME_PLURAL].values()]

    # -- DeviceNode and core Node --------------------------------------------------------------------------------
    nodes: dict[str, Obj] = field(default_factory=dict)  # core Nodes by name

    async def get_node(self, name: str) -> Obj | None:
        found = self.nodes.get(name)
        return copy.deepcopy(found) if found is not None else None

    async def create_device_node(self, body: Mapping[str, Any]) -> Obj:
        return self._create(c.NODE_PLURAL, body)

    async def get_device_node(self, name: str) -> Obj | None:
        return self._get(c.NODE_PLURAL, name)

    async def patch_device_node(self, name: str, patch: Mapping[str, Any]) -> Obj:
        obj = self._must(c.NODE_PLURAL, name)
        _merge(obj, patch)
        self._stamp(obj)
        self.writes.append(("patch", c.NODE_PLURAL, name))
        return copy.deepcopy(obj)

    async def delete_device_node(self, name: str) -> None:
        self._delete(c.NODE_PLURAL, name)

    async def list_device_nodes(self) -> list[Obj]:
        return [copy.deepcopy(o) for o in self.objects[c.NODE_PLURAL].values()]

    # -- finalizers ----------------------------------------------------------------------------------------------
    async def add_finalizer(
        self,
        name: str,
        finalizers: tuple[str, ...],
        finalizer: str,
        plural: str = c.VOLUME_PLURAL,
        resource_version: str = "",
    ) -> Obj:
        obj = self._must(plural, name)
        meta = obj["metadata"]
        current = list(meta.get("finalizers") or [])
        if current != list(finalizers):
            raise Conflict(f"{plural} {name}: finalizers changed")
        if not finalizers and resource_version and resource_version != meta["resourceVersion"]:
            raise Conflict(f"{plural} {name}: changed since version {resource_version}")
        if meta.get("deletionTimestamp"):
            raise Conflict(f"{plural} {name} is being deleted: no new finalizer may be added")
        meta["finalizers"] = [*current, finalizer]
        self._stamp(obj)
        self.writes.append(("add-finalizer", plural, name))
        return copy.deepcopy(obj)

    async def remove_finalizer(
        self, name: str, finalizers: tuple[str, ...], finalizer: str, plural: str = c.VOLUME_PLURAL
    ) -> Obj:
        obj = self._must(plural, name)
        meta = obj["metadata"]
        current = list(meta.get("finalizers") or [])
        i = finalizers.index(finalizer)
        if i >= len(current) or current[i] != finalizer:
            raise Conflict(f"{plural} {name}: finalizers changed")
        del current[i]
        meta["finalizers"] = current
        self._stamp(obj)
        self.writes.append(("remove-finalizer", plural, name))
        out = copy.deepcopy(obj)
        if not current and meta.get("deletionTimestamp"):
            del self.objects[plural][name]
        return out

    # -- events --------------------------------------------------------------------------------------------------
    async def record_event(self, obj: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        self.events.append(Event(kind, str(meta.get("name")), event_type, reason, message))
