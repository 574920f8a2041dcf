"""ClusterState keeps a compact form of each volume (the controller caches every volume of the cluster): what the
controller never reads is dropped, what it acts on is kept."""

from __future__ import annotations

from typing import Any

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import State, volume_from_dict
from csidriver.services.cluster import ClusterState


def ready(name: str, *conditions: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "resourceVersion": "7",
            "labels": {"kubernetes.io/nodename": "n1"},
            "annotations": {c.CSI_NAME_ANNOTATION: name, c.CLONE_SOURCE_ANNOTATION: "pvc-source"},
            "finalizers": [c.FINALIZER],
        },
        "spec": {"capacity": str(1 << 30), "devname": "ssd", "ownerNodeID": "n1"},
        "status": {
            "state": "Ready",
            "diskGUID": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
            "diskPath": "/dev/nvme0n1",
            "partitionName": naming.partition_name(name),
            "partitionUUID": "6A1B0F36-61A4-4C7E-9B8D-3A1C1E1D2F3A",
            "partitionNumber": 3,
            "devicePath": "/dev/nvme0n1p3",
            "conditions": list(conditions),
        },
    }


def cond(kind: str, status: str, message: str = "m") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": "R", "message": message, "lastTransitionTime": "t"}


def test_what_the_controller_reads_is_kept_and_the_rest_dropped() -> None:
    name = "pvc-0b5d6c1e-6d43-4a3b-9d5e-2f1a0c9e8b7d"
    blocked = cond(c.RELEASED_CONDITION, "False", "partition is mounted")
    vol = volume_from_dict(ready(name, cond("Ready", "True"), blocked), compact=True)
    assert (vol.name, vol.owner_node, vol.pool, vol.capacity, vol.state) == (name, "n1", "ssd", 1 << 30, State.READY)
    assert vol.resource_version == "7" and vol.finalizers == (c.FINALIZER,)
    assert vol.conditions == (blocked,)  # False conditions are what the controller acts on
    p = vol.placement
    assert (p.disk_guid, p.disk_path, p.partition_number, p.device_path) == (
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
        "/dev/nvme0n1",
        3,
        "/dev/nvme0n1p3",
    )
    assert (p.partition_name, p.partition_uuid, dict(vol.labels)) == ("", "", {})
    assert dict(vol.annotations) == {c.CLONE_SOURCE_ANNOTATION: "pvc-source"}  # what it is filled from, only
    assert volume_from_dict(ready(name)).annotations[c.CSI_NAME_ANNOTATION] == name  # the full form keeps all


def test_the_cluster_state_holds_the_compact_form() -> None:
    cluster = ClusterState()
    name = "pvc-0b5d6c1e-6d43-4a3b-9d5e-2f1a0c9e8b7d"
    cluster.on_volume(name, None, ready(name, cond("Ready", "True")))
    vol = cluster.volumes[name]
    assert vol.conditions == () and vol.placement.partition_uuid == "" and not vol.labels


def node(generation: int | None, free: int = 10 << 30) -> dict[str, Any]:
    annotations = {c.INVENTORY_GENERATION_ANNOTATION: str(generation)} if generation is not None else {}
    row = {"name": "ssd", "uuid": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "size": str(20 << 30), "free": str(free)}
    return {"metadata": {"name": "n1", "annotations": annotations}, "devices": [row]}


def stamped(name: str, stamp: int, state: str = "Ready") -> dict[str, Any]:
    obj = ready(name)
    obj["status"].update(state=state, inventoryGeneration=stamp)
    return obj


def test_a_ready_volume_counts_against_its_node_until_the_device_node_reaches_its_stamp() -> None:
    cs = ClusterState()
    cs.on_node("n1", None, node(4))
    cs.on_volume("a", None, stamped("a", 0, state="Pending"))
    assert cs.node_state("n1").pending == {"ssd": (1 << 30,)}
    cs.on_volume("a", None, stamped("a", 5))  # Ready, the DeviceNode (generation 4) predates its partition
    cs.on_volume("old", None, stamped("old", 4))  # already shown by generation 4
    cs.on_volume("theirs", None, stamped("theirs", 0))  # written by an agent that stamps nothing: as before
    assert cs.node_state("n1").pending == {"ssd": (1 << 30,)}
    cs.on_node("n1", None, node(5, free=9 << 30))  # the write that shows it
    assert cs.node_state("n1").pending == {}
    cs.on_volume("b", None, stamped("b", 6))
    deleting = stamped("b", 6)
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cs.on_volume("b", None, deleting)  # its partition is there until the agent removes it
    assert cs.node_state("n1").pending == {"ssd": (1 << 30,)}
    cs.on_volume("b", None, None)
    assert cs.node_state("n1").pending == {}


def test_volumes_listed_before_their_node_wait_for_it() -> None:
    cs = ClusterState()
    cs.on_volume("a", None, stamped("a", 3))
    cs.on_volume("b", None, stamped("b", 7))
    cs.on_node("n1", None, node(5))
    assert cs.node_state("n1").pending == {"ssd": (1 << 30,)}  # b only
    cs.on_node("n1", None, node(None))  # rewritten by an agent that numbers nothing (the original's): b still waits
    assert cs.node_state("n1").pending == {"ssd": (1 << 30,)}
