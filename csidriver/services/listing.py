"""ListVolumes and ControllerGetVolume, served from the controller's cache (no request to the API server).

Pages are in volume-name order; the token is the last name returned (encoded and versioned, so a made-up token is
recognised and refused with ABORTED as the CSI spec asks). A volume created or deleted between two pages shifts
nothing: the next page starts after that name, whatever exists now.

A volume's condition is abnormal when its disk is reported unhealthy or absent by its node, when its node could
not find its partition, or when it failed; the message says which.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import DeviceVolume, State
from csidriver.services.cluster import ClusterState
from csidriver.services.errors import Aborted, InvalidArgument, NotFound

_TOKEN_PREFIX = "v1:"


@dataclass(frozen=True)
class ListedVolume:
    volume_id: str
    capacity: int
    node: str
    context: Mapping[str, str] = field(default_factory=dict)
    abnormal: bool = False
    message: str = ""


def page_token(name: str) -> str:
    """The token of the page after object `name` (for volumes and snapshots alike)."""
    return _TOKEN_PREFIX + base64.urlsafe_b64encode(name.encode()).decode()


def token_start(token: str) -> str:
    """The object name a page token starts after ("" for the first page); ABORTED for a token not ours."""
    if not token:
        return ""
    if not token.startswith(_TOKEN_PREFIX):
        raise Aborted(f"starting_token {token[:64]!r} was not given by this driver")
    try:
        name = base64.urlsafe_b64decode(token[len(_TOKEN_PREFIX) :].encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as e:
        raise Aborted(f"starting_token {token[:64]!r} was not given by this driver") from e
    if not name or not naming.is_valid_volume_id(name):
        raise Aborted(f"starting_token {token[:64]!r} was not given by this driver")
    return name


class VolumeLister:
    def __init__(self, cluster: ClusterState) -> None:
        self._cluster = cluster

    def condition(self, vol: DeviceVolume) -> tuple[bool, str]:
        """(abnormal, message) for a volume, from its node's DeviceNode and the agent's conditions."""
        if vol.state is State.FAILED:
            return True, f"provisioning failed on node {vol.owner_node}: {vol.error_message}"
        for cond in vol.conditions:
            if cond.get("type") == "Located" and cond.get("status") == "False":
                return True, str(cond.get("message") or "the partition was not found")
        guid = vol.placement.disk_guid.upper()
        if guid:
            node = self._cluster.nodes.get(vol.owner_node)
            rows = [d for d in node.devices if d.uuid.upper() == guid] if node is not None else []
            if not rows:
                return True, f"disk {guid} is not reported by node {vol.owner_node}"
            if not rows[0].healthy:
                return True, f"disk {guid} ({rows[0].path}) on node {vol.owner_node} is unhealthy: unreadable or gone"
        gone = self._cluster.agent_gone(vol.owner_node)
        if gone is not None:
            return False, f"node {vol.owner_node}: {gone}; its disks' health is not known now"
        return (
            False,
            f"partition {vol.placement.device_path or naming.partition_name(vol.name)} on node {vol.owner_node}",
        )

    def _listed(self, vol: DeviceVolume) -> ListedVolume:
        abnormal, message = self.condition(vol)
        return ListedVolume(
            volume_id=vol.name,
            capacity=vol.capacity,
            node=vol.owner_node,
            context={c.CTX_DEVICE_NAME: vol.pool, c.CTX_CAS_TYPE: c.CAS_TYPE},
            abnormal=abnormal,
            message=message,
        )

    def page(self, max_entries: int, starting_token: str) -> tuple[list[ListedVolume], str]:
        """Up to `max_entries` (0: all) created volumes after the token, and the token of the next page ("" at
        the end). Volumes still being created are not listed: CreateVolume has not returned them yet."""
        if max_entries < 0:
            raise InvalidArgument("max_entries must not be negative")
        after = token_start(starting_token)
        names = sorted(n for n, v in self._cluster.volumes.items() if v.state is State.READY and n > after)
        if max_entries and len(names) > max_entries:
            names = names[:max_entries]
            next_token = page_token(names[-1])
        else:
            next_token = ""
        return [self._listed(self._cluster.volumes[n]) for n in names], next_token

    def get(self, volume_id: str) -> ListedVolume:
        if not volume_id:
            raise InvalidArgument("volume_id must not be empty")
        vol = self._cluster.volumes.get(volume_id) if naming.is_valid_volume_id(volume_id) else None
        if vol is None or vol.state is not State.READY:
            raise NotFound(f"volume {volume_id} does not exist")
        return self._listed(vol)
