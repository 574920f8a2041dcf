"""The in-memory FakeKube (tests/fakes/kube.py) and the real Kube client on a real kube-apiserver answer the same
calls the same way: every unit test built on the fake stands on these checks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from csidriver.api import constants as c
from csidriver.api.objects import new_snapshot_body, new_volume_body, snapshot_from_dict, volume_from_dict
from csidriver.kube.client import make_api_client
from csidriver.kube.resources import Conflict, Gone, Kube
from harness.apiserver import ApiServer
from tests.fakes.kube import FakeKube

pytestmark = pytest.mark.asyncio(loop_scope="session")
NODE = "contract-node"  # no agent runs for it: nothing but the test touches these objects


@pytest.fixture(params=["fake", "real"])
async def kube(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "fake":
        yield FakeKube()
        return
    api: ApiServer = request.getfixturevalue("api")
    client = await make_api_client(api.identities["admin"].kubeconfig, 50, 100)
    try:
        yield Kube(client, c.DEFAULT_NAMESPACE, "contract-test")
    finally:
        await client.close()


def _volume(size: int = 1 << 20) -> dict[str, Any]:
    name = f"pvc-{uuid.uuid4()}"
    return new_volume_body(name, c.DEFAULT_NAMESPACE, NODE, "ssd", size, name)


async def _cleanup(kube: Any, name: str, plural: str = c.VOLUME_PLURAL) -> None:
    get = kube.get_volume if plural == c.VOLUME_PLURAL else kube.get_snapshot
    raw = await get(name)
    if raw is None:
        return
    finalizers = tuple((raw["metadata"].get("finalizers")) or ())
    for f in reversed(finalizers):
        await kube.remove_finalizer(name, finalizers, f, plural)
        finalizers = finalizers[:-1]
    if plural == c.VOLUME_PLURAL:
        await kube.delete_volume(name)
    else:
        await kube.delete_snapshot(name)


async def test_create_get_and_absent_objects(kube: Any) -> None:
    body = _volume()
    name = body["metadata"]["name"]
    made = volume_from_dict(await kube.create_volume(body))
    try:
        got = volume_from_dict(await kube.get_volume(name))
        assert (got.name, got.owner_node, got.capacity, got.pool) == (name, NODE, 1 << 20, "ssd")
        assert got.state.value == "Pending" and got.generation == 1 and got.resource_version
        assert made.resource_version == got.resource_version
        with pytest.raises(Conflict):
            await kube.create_volume(body)
        absent = f"pvc-{uuid.uuid4()}"
        assert await kube.get_volume(absent) is None
        with pytest.raises(Gone):
            await kube.patch_volume_status(absent, {"state": "Ready"})
        with pytest.raises(Gone):
            await kube.add_finalizer(absent, (), c.FINALIZER)
        assert await kube.delete_volume(absent) is True
    finally:
        await _cleanup(kube, name)


async def test_status_is_merge_patched_and_spec_changes_bump_the_generation(kube: Any) -> None:
    body = _volume()
    name = body["metadata"]["name"]
    await kube.create_volume(body)
    try:
        first = await kube.patch_volume_status(
            name, {"state": "Failed", "error": {"code": "Internal", "message": "x"}, "capacityBytes": 1 << 20}
        )
        second = await kube.patch_volume_status(name, {"error": None, "state": "Ready"})
        assert second["metadata"]["resourceVersion"] != first["metadata"]["resourceVersion"]
        got = volume_from_dict(await kube.get_volume(name))
        assert got.state.value == "Ready" and got.error_code is None and got.capacity_bytes == 1 << 20
        grown = volume_from_dict(await kube.patch_volume(name, {"spec": {"capacity": str(2 << 20)}}))
        assert grown.capacity == 2 << 20 and grown.generation == 2
        annotated = volume_from_dict(await kube.patch_volume(name, {"metadata": {"annotations": {"a": "b"}}}))
        assert annotated.generation == 2 and annotated.annotations["a"] == "b"
    finally:
        await _cleanup(kube, name)


async def test_finalizers_are_added_and_removed_only_from_the_list_seen(kube: Any) -> None:
    body = _volume()
    name = body["metadata"]["name"]
    await kube.create_volume(body)
    try:
        one = await kube.add_finalizer(name, (), c.FINALIZER)
        assert one["metadata"]["finalizers"] == [c.FINALIZER]
        with pytest.raises(Conflict):  # the caller saw no finalizer: another appeared since
            await kube.add_finalizer(name, ("someone/else",), "another/finalizer")
        two = await kube.add_finalizer(name, (c.FINALIZER,), "backup.example.com/keep")
        assert two["metadata"]["finalizers"] == [c.FINALIZER, "backup.example.com/keep"]
        with pytest.raises(Conflict):  # stale: the list the caller saw has ours at another index
            await kube.remove_finalizer(name, ("x", c.FINALIZER), c.FINALIZER)
        left = await kube.remove_finalizer(name, (c.FINALIZER, "backup.example.com/keep"), c.FINALIZER)
        assert left["metadata"]["finalizers"] == ["backup.example.com/keep"]
    finally:
        await _cleanup(kube, name)


async def test_a_stale_empty_finalizer_list_never_replaces_another_finalizer(kube: Any) -> None:
    body = _volume()
    name = body["metadata"]["name"]
    read = await kube.create_volume(body)
    try:
        await kube.add_finalizer(name, (), "backup.example.com/keep")
        with pytest.raises(Conflict):  # the caller's view predates the other finalizer
            await kube.add_finalizer(name, (), c.FINALIZER, resource_version=read["metadata"]["resourceVersion"])
        with pytest.raises(Conflict):  # read now: not empty any more
            await kube.add_finalizer(name, (), c.FINALIZER)
        got = await kube.get_volume(name)
        assert got["metadata"]["finalizers"] == ["backup.example.com/keep"]
    finally:
        await _cleanup(kube, name)


async def test_deletion_waits_for_the_last_finalizer(kube: Any) -> None:
    body = _volume()
    name = body["metadata"]["name"]
    made = await kube.create_volume(body)
    try:
        await kube.add_finalizer(name, (), c.FINALIZER)
        stale = made["metadata"]["resourceVersion"]
        assert await kube.delete_volume(name, stale) is False  # changed since that version: nothing deleted
        assert (await kube.get_volume(name))["metadata"].get("deletionTimestamp") is None
        assert await kube.delete_volume(name) is True
        deleting = volume_from_dict(await kube.get_volume(name))
        assert deleting.deleting and deleting.finalizers == (c.FINALIZER,)
        with pytest.raises(Conflict):  # no new finalizer on an object being deleted
            await kube.add_finalizer(name, deleting.finalizers, "late/finalizer")
        await kube.patch_volume_status(name, {"conditions": []})  # status can still be written
        await kube.remove_finalizer(name, deleting.finalizers, c.FINALIZER)
        assert await kube.get_volume(name) is None
    finally:
        await _cleanup(kube, name)


async def test_snapshots_follow_the_same_rules(kube: Any) -> None:
    name = f"snapshot-{uuid.uuid4()}"
    body = new_snapshot_body(name, c.DEFAULT_NAMESPACE, NODE, "ssd", 1 << 20, "pvc-source", name)
    await kube.create_snapshot(body)
    try:
        got = snapshot_from_dict(await kube.get_snapshot(name))
        assert (got.source_volume, got.capacity, got.state.value, got.owner_node) == (
            "pvc-source",
            1 << 20,
            "Pending",
            NODE,
        )
        with pytest.raises(Conflict):
            await kube.create_snapshot(body)
        await kube.add_finalizer(name, (), c.FINALIZER, c.SNAPSHOT_PLURAL)
        await kube.patch_snapshot_status(name, {"state": "Ready", "copiedBytes": 1 << 20})
        await kube.delete_snapshot(name)
        deleting = snapshot_from_dict(await kube.get_snapshot(name))
        assert deleting.deleting and deleting.state.value == "Ready" and deleting.copied_bytes == 1 << 20
        await kube.remove_finalizer(name, deleting.finalizers, c.FINALIZER, c.SNAPSHOT_PLURAL)
        assert await kube.get_snapshot(name) is None
        await kube.delete_snapshot(name)  # absent: succeeds
        with pytest.raises(Gone):
            await kube.patch_snapshot_status(name, {"state": "Ready"})
    finally:
        await _cleanup(kube, name, c.SNAPSHOT_PLURAL)
