"""DeviceVolume and DeviceNode as frozen dataclasses, parsed from and rendered to API dicts in one place."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from csidriver.api import constants as c
from csidriver.api.quantity import parse_quantity


class State(enum.Enum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


class ErrorCode(enum.Enum):
    INTERNAL = "Internal"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"


@dataclass(frozen=True)
class Placement:
    """Where the agent carved the volume (superset fields; absent on objects made by the original driver)."""

    disk_guid: str = ""
    disk_path: str = ""
    partition_name: str = ""
    partition_uuid: str = ""
    partition_number: int = 0
    device_path: str = ""


@dataclass(frozen=True)
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


def _state(raw: object) -> State:
    try:
        return State(raw)
    except ValueError:
        return State.PENDING


def volume_from_dict(obj: Mapping[str, Any]) -> DeviceVolume:
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    err = status.get("error") or {}
    code: ErrorCode | None
    try:
        code = ErrorCode(err["code"]) if err.get("code") else None
    except ValueError:
        code = ErrorCode.INTERNAL
    placement = Placement(
        disk_guid=status.get("diskGUID", ""),
        disk_path=status.get("diskPath", ""),
        partition_name=status.get("partitionName", ""),
        partition_uuid=status.get("partitionUUID", ""),
        partition_number=int(status.get("partitionNumber", 0) or 0),
        device_path=status.get("devicePath", ""),
    )
    return DeviceVolume(
        name=meta.get("name", ""),
        owner_node=spec.get("ownerNodeID", ""),
        capacity=int(spec.get("capacity", "0") or 0),
        pool=spec.get("devname", ""),
        state=_state(status.get("state")),
        error_code=code,
        error_message=err.get("message", ""),
        placement=placement,
        finalizers=tuple(meta.get("finalizers") or ()),
        deleting=bool(meta.get("deletionTimestamp")),
        resource_version=meta.get("resourceVersion", ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        conditions=tuple(status.get("conditions") or ()),
        generation=_whole(meta.get("generation")) or 0,
        capacity_bytes=_whole(status.get("capacityBytes")),
    )


def _whole(value: object) -> int | None:
    """A non-negative JSON integer, or None for anything else."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class DeviceNode:
    name: str
    devices: tuple[Device, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_version: str = ""


def cordoned_disks(meta: Mapping[str, Any]) -> set[str]:
    raw = (meta.get("annotations") or {}).get(c.CORDON_ANNOTATION, "")
    return {g.strip().upper() for g in raw.split(",") if g.strip()}


def node_from_dict(obj: Mapping[str, Any]) -> DeviceNode:
    meta = obj.get("metadata") or {}
    cordoned = cordoned_disks(meta)
    devices = []
    for d in obj.get("devices") or ():
        free = parse_quantity(d.get("free", 0))
        devices.append(
            Device(
                name=d.get("name", ""),
                uuid=d.get("uuid", ""),
                size=parse_quantity(d.get("size", 0)),
                free=free,
                # Objects written by the original driver lack the extent: free is the best it said.
                largest_extent=parse_quantity(d["largestExtent"]) if "largestExtent" in d else free,
                free_entries=int(d.get("freeEntries", 1)),
                path=d.get("path", ""),
                healthy=bool(d.get("healthy", True)),
                cordoned=bool(d.get("cordoned", False)) or str(d.get("uuid", "")).upper() in cordoned,
            )
        )
    return DeviceNode(
        name=meta.get("name", ""),
        devices=tuple(devices),
        labels=dict(meta.get("labels") or {}),
        resource_version=meta.get("resourceVersion", ""),
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
