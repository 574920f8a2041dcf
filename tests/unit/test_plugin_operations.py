"""The plugin's cordon and release-node operations on the in-memory API server (tests/fakes/kube.py)."""

from __future__ import annotations

from typing import Any

import pytest

from csidriver.api import constants as c
from csidriver.api.objects import new_snapshot_body, new_volume_body
from csidriver.plugin.operations import OperationRefused, cordon, release_node
from tests.fakes.kube import FakeKube

GUID_A, GUID_B = "AAAAAAAA-0000-0000-0000-000000000001", "BBBBBBBB-0000-0000-0000-000000000002"


def _device_node(name: str, *guids: str, healthy: bool = True) -> dict[str, Any]:
    rows = [{"name": "ssd", "uuid": g, "size": "1Gi", "free": "1Gi", "healthy": healthy} for g in guids]
    return {"metadata": {"name": name}, "devices": rows}


async def _volume(kube: FakeKube, name: str, node: str, guid: str) -> None:
    await kube.create_volume(new_volume_body(name, kube.namespace, node, "ssd", 1 << 20, name))
    await kube.patch_volume_status(name, {"state": "Ready", "diskGUID": guid})
    raw = await kube.get_volume(name)
    assert raw is not None
    await kube.add_finalizer(name, (), c.FINALIZER)


def _ready(kube: FakeKube, node: str, ready: bool) -> None:
    status = "True" if ready else "False"
    kube.nodes[node] = {"metadata": {"name": node}, "status": {"conditions": [{"type": "Ready", "status": status}]}}


async def test_cordon_and_uncordon_a_disk() -> None:
    kube = FakeKube()
    await kube.create_device_node(_device_node("n1", GUID_A, GUID_B))
    assert "would cordon" in await cordon(kube, "n1", GUID_A.lower(), True, dry_run=True)
    assert not (await kube.get_device_node("n1") or {})["metadata"].get("annotations")
    assert await cordon(kube, "n1", GUID_A.lower(), True) == f"disk {GUID_A} on n1 cordoned"
    assert await cordon(kube, "n1", GUID_B, True) == f"disk {GUID_B} on n1 cordoned"
    assert await cordon(kube, "n1", GUID_B, True) == f"disk {GUID_B} on n1 already cordoned"
    raw = await kube.get_device_node("n1")
    assert raw is not None and raw["metadata"]["annotations"][c.CORDON_ANNOTATION] == f"{GUID_A},{GUID_B}"
    await cordon(kube, "n1", GUID_A, False)
    await cordon(kube, "n1", GUID_B, False)
    raw = await kube.get_device_node("n1")
    assert raw is not None and c.CORDON_ANNOTATION not in raw["metadata"]["annotations"]


@pytest.mark.parametrize(("node", "disk", "words"), [("n9", GUID_A, "no DeviceNode n9"), ("n1", "X", "no disk X")])
async def test_cordon_refusals(node: str, disk: str, words: str) -> None:
    kube = FakeKube()
    await kube.create_device_node(_device_node("n1", GUID_A))
    with pytest.raises(OperationRefused, match=words):
        await cordon(kube, node, disk, True)


async def test_release_forgets_a_lost_node_and_nothing_else() -> None:
    kube = FakeKube()
    _ready(kube, "gone", False)
    await kube.create_device_node(_device_node("gone", GUID_A))
    await kube.create_device_node(_device_node("alive", GUID_B))
    await _volume(kube, "pvc-lost", "gone", GUID_A)
    await _volume(kube, "pvc-kept", "alive", GUID_B)
    snap = new_snapshot_body("snapshot-lost", kube.namespace, "gone", "ssd", 1 << 20, "pvc-lost", "s")
    await kube.create_snapshot(snap)
    await kube.add_finalizer("snapshot-lost", (), c.FINALIZER, c.SNAPSHOT_PLURAL)
    planned = await release_node(kube, "gone", "disk burned", "ops", dry_run=True)
    assert planned.volumes == ["pvc-lost (1048576 bytes, pool ssd)"] and planned.snapshots == [
        "snapshot-lost of pvc-lost"
    ]
    assert await kube.get_volume("pvc-lost") is not None  # a dry run writes nothing
    done = await release_node(kube, "gone", "disk burned", "ops")
    assert done == planned
    assert await kube.get_volume("pvc-lost") is None and await kube.get_snapshot("snapshot-lost") is None
    assert await kube.get_device_node("gone") is None
    assert await kube.get_volume("pvc-kept") is not None and await kube.get_device_node("alive") is not None
    assert [(e.name, e.reason) for e in kube.events] == [("pvc-lost", "Released")]
    assert "disk burned" in kube.events[0].message and "ops" in kube.events[0].message


async def test_release_refuses_a_ready_node_unless_forced() -> None:
    kube = FakeKube()
    _ready(kube, "n1", True)
    await _volume(kube, "pvc-1", "n1", GUID_A)
    with pytest.raises(OperationRefused, match="is Ready"):
        await release_node(kube, "n1", "r", "ops")
    assert await kube.get_volume("pvc-1") is not None
    await release_node(kube, "n1", "r", "ops", force=True)
    assert await kube.get_volume("pvc-1") is None


async def test_release_refuses_volumes_whose_disk_moved_even_when_forced() -> None:
    kube = FakeKube()
    _ready(kube, "old", False)
    await kube.create_device_node(_device_node("new", GUID_A))  # the disk now shows up on node "new"
    await _volume(kube, "pvc-moved", "old", GUID_A)
    with pytest.raises(OperationRefused) as refused:
        await release_node(kube, "old", "r", "ops", force=True)
    assert refused.value.reasons == (
        f"pvc-moved is not lost: its disk {GUID_A} is on node new; run "
        f"`kubectl device-localpv migrate-disk {GUID_A} --to new` first",
    )
    assert await kube.get_volume("pvc-moved") is not None
