"""The plugin's operations on driver objects, apart from their command line (csidriver.plugin.cli only parses
arguments and prints): cordoning a disk and releasing a node that is gone for good. Each returns what it did (or
would do, with `dry_run`) and raises OperationRefused with the reason when it must not act. `migrate` and
`migrate-disk` live in csidriver.plugin.migrate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from csidriver.api import constants as c
from csidriver.api.objects import cordoned_disks, node_from_dict, snapshot_from_dict, volume_from_dict

Obj = dict[str, Any]


class OperationRefused(Exception):
    """The operation must not run; each reason says why and what to do instead."""

    def __init__(self, *reasons: str) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


class PluginObjects(Protocol):
    """What these operations ask of the API server (csidriver.kube.resources.Kube provides it)."""

    async def get_node(self, name: str) -> Obj | None: ...
    async def get_device_node(self, name: str) -> Obj | None: ...
    async def patch_device_node(self, name: str, patch: Mapping[str, Any]) -> Obj: ...
    async def delete_device_node(self, name: str) -> None: ...
    async def list_device_nodes(self) -> list[Obj]: ...
    async def list_volumes(self) -> list[Obj]: ...
    async def get_volume(self, name: str) -> Obj | None: ...
    async def delete_volume(self, name: str, resource_version: str = "") -> bool: ...
    async def list_snapshots(self) -> list[Obj]: ...
    async def delete_snapshot(self, name: str) -> None: ...
    async def remove_finalizer(
        self, name: str, finalizers: tuple[str, ...], finalizer: str, plural: str = c.VOLUME_PLURAL
    ) -> Obj: ...
    async def record_event(
        self, obj: Mapping[str, Any], kind: str, event_type: str, reason: str, message: str
    ) -> None: ...


async def cordon(kube: PluginObjects, node: str, disk: str, on: bool, dry_run: bool = False) -> str:
    """Mark (or unmark) a disk of a node so no scheduler places a volume on it; returns what was (or would be)
    done."""
    raw = await kube.get_device_node(node)
    if raw is None:
        raise OperationRefused(f"no DeviceNode {node}")
    guid = disk.upper()
    if guid not in {str(d.get("uuid", "")).upper() for d in raw.get("devices") or []}:
        raise OperationRefused(f"node {node} reports no disk {disk}")
    current = cordoned_disks(raw["metadata"])
    wanted = current | {guid} if on else current - {guid}
    verb = "cordon" if on else "uncordon"
    if wanted == current:
        return f"disk {guid} on {node} already {verb}ed"
    patch = {"metadata": {"annotations": {c.CORDON_ANNOTATION: ",".join(sorted(wanted)) or None}}}
    if dry_run:
        return f"would {verb} disk {guid} on {node}: patch DeviceNode with {json.dumps(patch)}"
    await kube.patch_device_node(node, patch)
    return f"disk {guid} on {node} {verb}ed"


@dataclass
class Release:
    volumes: list[str] = field(default_factory=list)  # "name (bytes, pool)" of each volume released
    snapshots: list[str] = field(default_factory=list)  # "name of source" of each snapshot released


async def release_node(
    kube: PluginObjects, node: str, reason: str, who: str, force: bool = False, dry_run: bool = False
) -> Release:
    """Forget a node that is gone for good: its volumes' and snapshots' objects go (their partitions are lost with
    it), then its DeviceNode. Refused while the Node reports Ready (unless `force`), and for any volume whose disk
    another node reports (it was moved: migrate it instead; `force` does not override that)."""
    found = await kube.get_node(node)
    ready = any(
        cond.get("type") == "Ready" and cond.get("status") == "True"
        for cond in ((found or {}).get("status") or {}).get("conditions") or []
    )
    if ready and not force:
        raise OperationRefused(f"node {node} is Ready; release only a node that is gone for good (--force)")
    mine = [v for v in (volume_from_dict(x) for x in await kube.list_volumes()) if v.owner_node == node]
    # A volume whose disk another node's agent reports is not lost: it was moved. Releasing it would delete its
    # object and orphan its partition on that disk, so it must be migrated first.
    elsewhere: dict[str, str] = {}
    for raw_node in await kube.list_device_nodes():
        other = node_from_dict(raw_node)
        if other.name != node:
            for d in other.devices:
                if d.healthy:
                    elsewhere[d.uuid.upper()] = other.name
    moved = [(v, elsewhere[v.placement.disk_guid.upper()]) for v in mine if v.placement.disk_guid.upper() in elsewhere]
    if moved:
        raise OperationRefused(
            *(
                f"{v.name} is not lost: its disk {v.placement.disk_guid} is on node {to}; run "
                f"`kubectl device-localpv migrate-disk {v.placement.disk_guid} --to {to}` first"
                for v, to in moved
            )
        )
    done = Release()
    for v in mine:
        done.volumes.append(f"{v.name} ({v.capacity} bytes, pool {v.pool})")
        if dry_run:
            continue
        raw = await kube.get_volume(v.name)
        if raw is None:
            continue
        message = f"released by {who} with node {node} gone: {reason}"
        await kube.record_event(raw, c.VOLUME_KIND, "Warning", "Released", message)
        current = volume_from_dict(raw)
        if c.FINALIZER in current.finalizers:
            await kube.remove_finalizer(v.name, current.finalizers, c.FINALIZER)
        await kube.delete_volume(v.name)
    for snap in (snapshot_from_dict(x) for x in await kube.list_snapshots()):
        if snap.owner_node != node:
            continue
        done.snapshots.append(f"{snap.name} of {snap.source_volume}")
        if dry_run:
            continue
        if c.FINALIZER in snap.finalizers:
            await kube.remove_finalizer(snap.name, snap.finalizers, c.FINALIZER, c.SNAPSHOT_PLURAL)
        await kube.delete_snapshot(snap.name)
    if not dry_run:
        await kube.delete_device_node(node)
    return done
