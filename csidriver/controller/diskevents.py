"""Tell users when a disk under their volume fails: an Event on every affected PersistentVolumeClaim.

Fed by the DeviceNode informer; a disk that turns from healthy (or unknown) to unhealthy triggers one Event per
volume on it, written by the leader only so replicas do not repeat it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from csidriver.api.objects import node_from_dict
from csidriver.kube.resources import Kube
from csidriver.services.cluster import ClusterState

log = logging.getLogger(__name__)


def _unhealthy(obj: Mapping[str, Any] | None) -> set[str]:
    if obj is None:
        return set()
    return {d.uuid.upper() for d in node_from_dict(obj).devices if not d.healthy}


class DiskFailureEvents:
    def __init__(self, kube: Kube, cluster: ClusterState, is_leader: Callable[[], bool]) -> None:
        self._kube = kube
        self._cluster = cluster
        self._is_leader = is_leader
        self._tasks: set[asyncio.Task[None]] = set()

    def on_node(self, name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> None:
        failed = _unhealthy(new) - _unhealthy(old)
        if not failed or not self._is_leader():
            return
        for vol in list(self._cluster.volumes.values()):
            if vol.owner_node == name and vol.placement.disk_guid.upper() in failed:
                task = asyncio.get_running_loop().create_task(self._notify(vol.name, name, vol.placement.disk_guid))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _notify(self, volume: str, node: str, guid: str) -> None:
        try:
            pv = await self._kube.get_pv(volume)
            claim = ((pv or {}).get("spec") or {}).get("claimRef")
            if not claim:
                return
            target = {
                "apiVersion": "v1",
                "metadata": {"name": claim["name"], "namespace": claim["namespace"], "uid": claim.get("uid")},
            }
            msg = f"disk {guid} holding volume {volume} on node {node} has failed (unreadable or gone)"
            await self._kube.record_event(target, "PersistentVolumeClaim", "Warning", "DiskFailed", msg)
        except Exception as e:
            log.warning("could not report the failed disk of %s: %s", volume, e)
