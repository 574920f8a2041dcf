"""Tell users when a disk under their volume fails or moves: an Event on every affected PersistentVolumeClaim.

Fed by the DeviceNode informer and written by the leader only, so replicas do not repeat it. A disk that turns
unhealthy on the node serving its volumes is one of three things, told apart from what the cluster reports:
- another node's agent already reports it healthy: it was moved (`DiskMoved`, with the command that finishes it);
- it was cordoned on that node first, as the runbook says before a planned move: `DiskDetached`, Normal;
- otherwise it failed: `DiskFailed`, Warning.
A disk that appears healthy on a node other than the one serving its volumes was moved there: `DiskMoved`, Normal
when it was cordoned first (planned), Warning otherwise (the volumes are unusable until `migrate-disk` runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from csidriver.api.objects import DeviceVolume, node_from_dict
from csidriver.kube.resources import Kube
from csidriver.services.cluster import ClusterState

log = logging.getLogger(__name__)


def _disks(obj: Mapping[str, Any] | None, healthy: bool) -> set[str]:
    if obj is None:
        return set()
    return {d.uuid.upper() for d in node_from_dict(obj).devices if d.healthy == healthy}


def migrate_command(guid: str, node: str) -> str:
    return f"kubectl device-localpv migrate-disk {guid} --to {node}"


class DiskFailureEvents:
    def __init__(self, kube: Kube, cluster: ClusterState, is_leader: Callable[[], bool]) -> None:
        self._kube = kube
        self._cluster = cluster
        self._is_leader = is_leader
        self._tasks: set[asyncio.Task[None]] = set()

    def on_node(self, name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        failed = _disks(new, False) - _disks(old, False)
        # Only a change seen while running: the first listing after a restart is not news.
        appeared = _disks(new, True) - _disks(old, True) if old is not None else set()
        if not (failed or appeared) or not self._is_leader():
            return
        for vol in list(self._cluster.volumes.values()):
            guid = vol.placement.disk_guid.upper()
            if vol.owner_node == name and guid in failed:
                self._gone(vol, guid, new)
            elif vol.owner_node != name and guid in appeared:
                kind = "Normal" if self._cordoned(vol.owner_node, guid) else "Warning"
                msg = (
                    f"disk {guid} holding volume {vol.name} (served by node {vol.owner_node}) is now attached to "
                    f"node {name}; the volume is unusable until `{migrate_command(guid, name)}` moves it there"
                )
                self._event(vol.name, kind, "DiskMoved", msg)

    def _gone(self, vol: DeviceVolume, guid: str, new: Mapping[str, Any] | None) -> None:
        where = f"disk {guid} holding volume {vol.name} on node {vol.owner_node}"
        elsewhere = sorted(
            n.name
            for n in self._cluster.nodes.values()
            if n.name != vol.owner_node and any(d.healthy and d.uuid.upper() == guid for d in n.devices)
        )
        if elsewhere:
            to = elsewhere[0]
            msg = f"{where} is gone from it and attached to node {to}: run `{migrate_command(guid, to)}`"
            self._event(vol.name, "Warning", "DiskMoved", msg)
        elif new is not None and guid in {d.uuid.upper() for d in node_from_dict(new).devices if d.cordoned}:
            msg = (
                f"cordoned {where} is no longer seen there (a planned move?); once its new node reports it, run "
                f"`{migrate_command(guid, 'NEW_NODE')}`"
            )
            self._event(vol.name, "Normal", "DiskDetached", msg)
        else:
            self._event(vol.name, "Warning", "DiskFailed", f"{where} has failed (unreadable or gone)")

    def _cordoned(self, node: str, guid: str) -> bool:
        dn = self._cluster.nodes.get(node)
        return dn is not None and any(d.cordoned and d.uuid.upper() == guid for d in dn.devices)

    def _event(self, volume: str, kind: str, reason: str, message: str) -> None:
        task = asyncio.get_running_loop().create_task(self._notify(volume, kind, reason, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self, volume: str, kind: str, reason: str, message: str) -> None:
        try:
            pv = await self._kube.get_pv(volume)
            claim = ((pv or {}).get("spec") or {}).get("claimRef")
            if not claim:
                return
            target = {
                "apiVersion": "v1",
                "metadata": {"name": claim["name"], "namespace": claim["namespace"], "uid": claim.get("uid")},
            }
            await self._kube.record_event(target, "PersistentVolumeClaim", kind, reason, message)
        except Exception as e:
            log.warning("could not record %s for %s: %s", reason, volume, e)
