"""How CSI names map to DeviceVolume object names and GPT partition names.

- A CSI name that is already a valid lowercase DNS-1123 subdomain (the usual `pvc-<uuid>`) is the object name,
  exactly as the original driver did.
- Any other CSI name (upper case, spaces, over 253 characters...) maps to `vol-<uuid5(name)>`: deterministic, so
  a retried CreateVolume finds its object, and collision-free in practice.
- The partition name is the UUID of a `pvc-<uuid>` object name (36 chars, the GPT name limit, compatible with
  partitions made by the original driver), else a UUID5 of the object name (also 36 chars).
"""

from __future__ import annotations

import hashlib
import re
import uuid

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PVC = re.compile(r"pvc-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
_NAMESPACE = uuid.UUID("6f1c1e4e-3a55-4c57-9a3c-5d5f4f1b8a21")
# GPT partition names the driver writes or matches, pool names included: 1-36 characters (the GPT limit) of this
# alphabet.
GPT_NAME = re.compile(r"[A-Za-z0-9._-]{1,36}")


def object_name(csi_name: str) -> str:
    if len(csi_name) <= 253 and _DNS_SUBDOMAIN.fullmatch(csi_name):
        return csi_name
    return "vol-" + str(uuid.uuid5(_NAMESPACE, csi_name))


def partition_name(volume_id: str) -> str:
    m = _PVC.fullmatch(volume_id)
    if m:
        return m.group(1)
    return str(uuid.uuid5(_NAMESPACE, "partition:" + volume_id))


def snapshot_partition_name(snapshot: str) -> str:
    """The GPT name of a snapshot's partition: a UUID5 of its object name in a space of its own, so it never equals
    a volume's partition name (a volume and a snapshot may share an object name)."""
    return str(uuid.uuid5(_NAMESPACE, "snapshot:" + snapshot))


def is_valid_volume_id(volume_id: str) -> bool:
    return len(volume_id) <= 253 and _DNS_SUBDOMAIN.fullmatch(volume_id) is not None


def is_valid_pool(pool: str) -> bool:
    return GPT_NAME.fullmatch(pool) is not None


def heartbeat_name(node: str) -> str:
    """The agent's heartbeat Lease: `device-localpv-agent.<node>`, or a digest of the node name when that would
    exceed the 253 characters an object name may have (the Lease's holderIdentity carries the node name)."""
    name = f"device-localpv-agent.{node}"
    if len(name) <= 253:
        return name
    return "device-localpv-agent." + hashlib.sha256(node.encode()).hexdigest()
