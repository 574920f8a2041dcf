"""DeviceVolume, DeviceSnapshot and DeviceNode as frozen dataclasses, parsed from and rendered to API dicts."""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar, dataclass_transform

from csidriver.api import constants as c
from csidriver.api.quantity import parse_quantity


class State(enum.Enum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class ErrorCode(enum.Enum):
    INTERNAL = "Internal"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"


_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def _record(cls: type[_T]) -> type[_T]:
    """A frozen dataclass to the type checker (mypy rejects any assignment to a field), and at run time a dataclass
    with slots and the hash a frozen one has, whose __init__ stores each field directly rather than through one
    object.__setattr__ call per field. The controller builds a DeviceVolume and a Placement for every volume of the
    cluster as it starts: building both took half the time of volume_from_dict when they were frozen at run time."""
    return dataclass(slots=True, unsafe_hash=True)(cls)


@_record
class Placement:
    """Where the agent carved the volume (superset fields; absent on objects made by the original driver)."""

    disk_guid: str = ""
    disk_path: str = ""
    partition_name: str = ""
    partition_uuid: str = ""
    partition_number: int = 0
    device_path: str = ""


@_record
class DeviceVolume:
    name: str
    owner_node: str
    capacity: int
    pool: str
    state: State = State.PENDING
    error_code: ErrorCode | None = None
    error_message: str = ""
    placement: Placement = field(default_factory=Placement)
    finalizers: tuple[str, ...] = ()
    deleting: bool = False
    resource_version: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    conditions: tuple[Mapping[str, Any], ...] = ()
    generation: int = 0  # metadata.generation: bumped by every spec change (an expansion)
    capacity_bytes: int | None = None  # status.capacityBytes: the partition's size as its agent last saw it
    inventory_generation: int = 0  # status.inventoryGeneration: its node's DeviceNode counts it from this generation


# The controller caches every DeviceVolume of the cluster (100,000 and more): what most of them share (no labels or
# annotations, the same few node, pool and disk names) is held once.
_NOTHING: Mapping[str, str] = MappingProxyType({})


def _mapping(raw: object) -> Mapping[str, str]:
    return dict(raw) if isinstance(raw, Mapping) and raw else _NOTHING


def _shared(raw: object) -> str:
    return "" if not raw else sys.intern(raw) if type(raw) is str else sys.intern(str(raw))


_SOURCES = (c.CLONE_SOURCE_ANNOTATION, c.RESTORE_SOURCE_ANNOTATION)


def _annotations(raw: object, compact: bool) -> Mapping[str, str]:
    """A volume's annotations; compact: only those naming what it is filled from (all the controller reads)."""
    if not compact or not raw:
        return _mapping(raw)
    if type(raw) is not dict and not isinstance(raw, Mapping):
        return _NOTHING
    return _mapping({k: raw[k] for k in _SOURCES if k in raw})


_OURS = (c.FINALIZER,)
_OURS_LIST = [c.FINALIZER]


def _finalizers(raw: object) -> tuple[str, ...]:
    """Finalizer names (interned; the common case, ours alone, is one shared tuple)."""
    if raw == _OURS_LIST:
        return _OURS
    return tuple(_shared(f) for f in raw) if isinstance(raw, list | tuple) else ()


_STATES = {s.value: s for s in State}


def _state(raw: object) -> State:
    return _STATES.get(raw, State.PENDING) if isinstance(raw, str) else State.PENDING


def volume_from_dict(obj: Mapping[str, Any], *, compact: bool = False) -> DeviceVolume:
    """The volume in an API object. `compact`: the form the controller caches (100,000 and more of them), without
    what it never reads: labels, annotations other than a clone's or a restore's source, the partition's GPT name and
    UUID (the agent's business; ListVolumes shows the device path) and the conditions whose status is True (the
    controller acts only on False ones: a failure, a refusal, a blocked deletion, a partition not located)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    code, message = _error(status)
    conditions = status.get("conditions") or ()
    if compact and conditions:
        conditions = [c for c in conditions if not (isinstance(c, dict) and c.get("status") == "True")]
    return DeviceVolume(
        name=meta.get("name", ""),
        owner_node=_shared(spec.get("ownerNodeID")),
        capacity=_bytes(spec.get("capacity")),
        pool=_shared(spec.get("devname")),
        state=_state(status.get("state")),
        error_code=code,
        error_message=message,
        placement=_placement(status, compact),
        finalizers=_finalizers(meta.get("finalizers")),
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=meta.get("resourceVersion", ""),
        labels=_NOTHING if compact else _mapping(meta.get("labels")),
        annotations=_annotations(meta.get("annotations"), compact),
        conditions=tuple(conditions) if conditions else (),
        generation=_whole(meta.get("generation")) or 0,
        capacity_bytes=_whole(status.get("capacityBytes")),
        inventory_generation=_whole(status.get("inventoryGeneration")) or 0,
    )


@dataclass(frozen=True, slots=True)
class DeviceSnapshot:
    """A point-in-time full copy of a volume, in a partition of its own on the volume's node and pool."""

    name: str
    owner_node: str
    source_volume: str
    capacity: int  # bytes copied: the source's partition size when the snapshot was asked for
    pool: str
    state: State = State.PENDING
    error_code: ErrorCode | None = None
    error_message: str = ""
    placement: Placement = field(default_factory=Placement)
    finalizers: tuple[str, ...] = ()
    deleting: bool = False
    resource_version: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)
    conditions: tuple[Mapping[str, Any], ...] = ()
    cut_at: str = ""  # status.creationTime: when the copy began (the source frozen), RFC 3339
    copied_bytes: int | None = None  # status.copiedBytes: progress of the copy while Pending
    created: str = ""  # metadata.creationTimestamp


def _error(status: Mapping[str, Any]) -> tuple[ErrorCode | None, str]:
    err = status.get("error")
    if not err:
        return None, ""
    try:
        code = ErrorCode(err["code"]) if err.get("code") else None
    except ValueError:
        code = ErrorCode.INTERNAL
    return code, str(err.get("message", ""))


_UNPLACED = Placement()


def _placement(status: Mapping[str, Any], compact: bool = False) -> Placement:
    get = status.get  # this runs for every volume the controller caches
    guid, disk, number, device = get("diskGUID"), get("diskPath"), get("partitionNumber"), get("devicePath")
    name, uuid = get("partitionName"), get("partitionUUID")
    if not (guid or disk or name or uuid or number or device):
        return _UNPLACED  # not carved yet (or an original driver's object): one shared empty Placement
    return Placement(
        disk_guid=_shared(guid),
        disk_path=_shared(disk),
        partition_name="" if compact or name is None else name,
        partition_uuid="" if compact or uuid is None else uuid,
        partition_number=_whole(number) or 0,
        device_path="" if device is None else device,
    )


def snapshot_from_dict(obj: Mapping[str, Any]) -> DeviceSnapshot:
    """Never raises (see volume_from_dict)."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    code, message = _error(status)
    return DeviceSnapshot(
        name=str(meta.get("name", "")),
        owner_node=_shared(spec.get("ownerNodeID")),
        source_volume=str(spec.get("sourceVolume", "")),
        capacity=_bytes(spec.get("capacity")),
        pool=_shared(spec.get("devname")),
        state=_state(status.get("state")),
        error_code=code,
        error_message=message,
        placement=_placement(status),
        finalizers=_finalizers(meta.get("finalizers")),
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=str(meta.get("resourceVersion", "")),
        annotations=_mapping(meta.get("annotations")),
        conditions=tuple(status.get("conditions") or ()),
        cut_at=str(status.get("creationTime") or ""),
        copied_bytes=_whole(status.get("copiedBytes")),
        created=str(meta.get("creationTimestamp") or ""),
    )


def new_snapshot_body(
    name: str, namespace: str, node: str, pool: str, capacity: int, source: str, csi_name: str
) -> dict[str, Any]:
    """A Pending snapshot of volume `source`, on the source's node and pool. Status is written by the agent only
    (through /status), so a missing state reads as Pending."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.SNAPSHOT_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {c.NODE_LABEL: node},
            "annotations": {c.CSI_NAME_ANNOTATION: csi_name[:1024]},
        },
        "spec": {"ownerNodeID": node, "sourceVolume": source, "capacity": str(capacity), "devname": pool},
    }


def _bytes(value: object) -> int:
    """spec.capacity as bytes; 0 (which the agent refuses, marking the volume Failed) when it cannot be read."""
    try:
        n = parse_quantity(value) if value is not None else 0
    except (ValueError, TypeError, ArithmeticError):
        return 0
    return n if 0 < n < 2**63 else 0


def _whole(value: object) -> int | None:
    """A non-negative JSON integer, or None for anything else (a bool too)."""
    return value if type(value) is int and value >= 0 else None


def new_volume_body(name: str, namespace: str, node: str, pool: str, capacity: int, csi_name: str) -> dict[str, Any]:
    """A Pending volume as the original's controller writes it: no finalizer yet. The agent that carves it adds
    the finalizer first (ours before it touches a disk; the original's only updates an object without finalizers,
    so one made here with a finalizer would never be carved by it during a rolling upgrade)."""
    return {
        "apiVersion": c.API_VERSION,
        "kind": c.VOLUME_KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {c.NODE_LABEL: node},
            "annotations": {c.CSI_NAME_ANNOTATION: csi_name[:1024]},
        },
        "spec": {"ownerNodeID": node, "capacity": str(capacity), "devname": pool},
        "status": {"state": State.PENDING.value},
    }


def placement_dict(p: Placement) -> dict[str, Any]:
    return {
        "diskGUID": p.disk_guid,
        "diskPath": p.disk_path,
        "partitionName": p.partition_name,
        "partitionUUID": p.partition_uuid,
        "partitionNumber": p.partition_number,
        "devicePath": p.device_path,
    }


@dataclass(frozen=True, slots=True)
class Device:
    """One pool disk as reported in DeviceNode.devices (name = pool name, uuid = GPT disk GUID)."""

    name: str
    uuid: str
    size: int
    free: int
    largest_extent: int = 0
    free_entries: int = 0
    path: str = ""
    healthy: bool = True
    cordoned: bool = False


@dataclass(frozen=True, slots=True)
class DeviceNode:
    name: str
    devices: tuple[Device, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""
    generation: int = 0  # its inventory generation (annotation): counts every partition stamped up to it


def inventory_generation(meta: Mapping[str, Any]) -> int:
    """A DeviceNode's inventory generation; 0 when absent or unreadable (written by the original's agent, or by
    hand)."""
    annotations = meta.get("annotations")
    raw = annotations.get(c.INVENTORY_GENERATION_ANNOTATION) if isinstance(annotations, Mapping) else None
    return int(raw) if isinstance(raw, str) and raw.isdigit() and len(raw) <= 18 else 0


def cordoned_disks(meta: Mapping[str, Any]) -> set[str]:
    annotations = meta.get("annotations")
    raw = annotations.get(c.CORDON_ANNOTATION, "") if isinstance(annotations, Mapping) else ""
    return {g.strip().upper() for g in str(raw).split(",") if g.strip()}


def node_from_dict(obj: Mapping[str, Any]) -> DeviceNode:
    """Never raises: a row whose numbers cannot be read is kept, unhealthy and with no space, so no scheduler
    picks it; free space above the size is clamped (what a writer claims cannot exceed the disk)."""
    raw_meta = obj.get("metadata")
    meta: Mapping[str, Any] = raw_meta if isinstance(raw_meta, Mapping) else {}
    cordoned = cordoned_disks(meta)
    devices = []
    rows = obj.get("devices")
    for d in rows if isinstance(rows, list) else ():
        if not isinstance(d, Mapping):
            continue
        try:
            size = parse_quantity(d.get("size", 0))
            free = parse_quantity(d.get("free", 0))
            extent = parse_quantity(d["largestExtent"]) if "largestExtent" in d else free
            readable = min(size, free, extent) >= 0
        except (ValueError, TypeError, ArithmeticError):
            readable = False
        if not readable:
            size = free = extent = 0
        free = min(free, size)
        uuid = str(d.get("uuid", ""))
        devices.append(
            Device(
                name=str(d.get("name", "")),
                uuid=uuid,
                size=size,
                free=free,
                # Objects written by the original driver lack the extent: free is the best it said.
                largest_extent=min(extent, free),
                free_entries=_whole(d.get("freeEntries", 1)) or 0,
                path=str(d.get("path", "")),
                healthy=readable and d.get("healthy", True) is not False,
                cordoned=d.get("cordoned") is True or uuid.upper() in cordoned,
            )
        )
    labels = meta.get("labels")
    return DeviceNode(
        name=str(meta.get("name", "")),
        devices=tuple(devices),
        labels=dict(labels) if isinstance(labels, Mapping) else {},
        resource_version=str(meta.get("resourceVersion", "")),
        generation=inventory_generation(meta),
    )


def devices_list(devices: tuple[Device, ...]) -> list[dict[str, Any]]:
    return [
        {
            "name": d.name,
            "uuid": d.uuid,
            "size": str(d.size),
            "free": str(d.free),
            "largestExtent": str(d.largest_extent),
            "freeEntries": d.free_entries,
            "path": d.path,
            "healthy": d.healthy,
            "cordoned": d.cordoned,
        }
        for d in devices
    ]
