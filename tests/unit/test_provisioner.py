"""Provisioner logic against an in-memory VolumeStore and a simulated agent (the real path is in tests/e2e)."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Mapping
from typing import Any

import pytest

from csidriver.api.constants import FINALIZER
from csidriver.api.objects import Device, devices_list
from csidriver.services.cluster import ClusterState
from csidriver.services.errors import AlreadyExists, InvalidArgument, ResourceExhausted, Unavailable
from csidriver.services.provisioning import Provisioner
from csidriver.services.requests import AccessMode, Capability, CreateRequest

MIB = 1 << 20
CAP = (Capability(False, AccessMode.SINGLE_NODE_WRITER),)


class FakeStore:
    """Stores objects and plays both the informer and an agent that carves whatever fits, first fit."""

    namespace = "openebs"

    def __init__(self, cluster: ClusterState, free: dict[str, int]) -> None:
        self.cluster = cluster
        self.objects: dict[str, dict[str, Any]] = {}
        self.free = dict(free)  # node -> bytes left on its single disk
        self.creates = 0
        self.deletes = 0
        self.labels: dict[str, dict[str, str]] = {}
        self.snapshots: dict[str, dict[str, Any]] = {}

    def node(self, name: str, labels: Mapping[str, str] | None = None) -> None:
        labels = self.labels.setdefault(name, dict(labels or {}))
        dev = Device("ssd", name, 1 << 30, self.free[name], self.free[name], 100)
        obj = {"metadata": {"name": name, "labels": labels}, "devices": devices_list((dev,))}
        self.cluster.on_node(name, None, obj)

    async def get_volume(self, name: str) -> dict[str, Any] | None:
        return self.objects.get(name)

    async def create_volume(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self.creates += 1
        obj = dict(body)
        name = obj["metadata"]["name"]
        self.objects[name] = obj
        asyncio.get_running_loop().call_soon(self._agent, name)
        return obj

    def _agent(self, name: str) -> None:
        obj = self.objects[name]
        self.cluster.on_volume(name, None, obj)
        node, size = obj["spec"]["ownerNodeID"], int(obj["spec"]["capacity"])
        if self.free[node] >= size:
            self.free[node] -= size
            self.node(node)
            state: dict[str, Any] = {"state": "Ready"}
        else:
            state = {"state": "Failed", "error": {"code": "InsufficientCapacity", "message": "full"}}
        new = {**obj, "status": state}
        self.objects[name] = new
        self.cluster.on_volume(name, obj, new)

    async def patch_volume(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386), as the API server applies one; the informer sees the change."""
        old = self.objects[name]
        new = _merge(old, patch)
        self.objects[name] = new
        self.cluster.on_volume(name, old, new)
        return new

    async def get_snapshot(self, name: str) -> dict[str, Any] | None:
        return self.snapshots.get(name)

    async def delete_volume(self, name: str, resource_version: str = "") -> bool:
        self.deletes += 1
        obj = self.objects.get(name)
        if obj is not None and resource_version and obj["metadata"].get("resourceVersion") != resource_version:
            return False
        self.objects.pop(name, None)
        if obj is not None:
            self.cluster.on_volume(name, obj, None)
        return True


def _merge(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def request(name: str, size: int, **kw: Any) -> CreateRequest:
    return CreateRequest(
        name=name, required_bytes=size, limit_bytes=0, parameters={"devname": "ssd"}, capabilities=CAP, **kw
    )


@pytest.fixture
def env() -> tuple[Provisioner, FakeStore]:
    cluster = ClusterState()
    store = FakeStore(cluster, {"a": 100 * MIB, "b": 60 * MIB, "c": 0})
    for n in ("a", "b", "c"):
        store.node(n, {"zone": "z1" if n != "b" else "z2"})
    return Provisioner(store, cluster, timeout=5), store


async def test_concurrent_creates_never_double_book(env: tuple[Provisioner, FakeStore]) -> None:
    prov, store = env
    # 16 x 10 MiB = 160 MiB = exactly what a (100) and b (60) hold together.
    vols = await asyncio.gather(*(prov.create(request(f"v{i}", 10 * MIB)) for i in range(16)))
    assert sorted(v.node for v in vols).count("a") == 10
    assert store.creates == 16 and store.free == {"a": 0, "b": 0, "c": 0}
    with pytest.raises(ResourceExhausted, match="largest free extent is 0 bytes"):
        await prov.create(request("one-more", MIB))


async def test_idempotent_and_conflicting_names(env: tuple[Provisioner, FakeStore]) -> None:
    prov, store = env
    a = await prov.create(request("pvc-x", 10 * MIB))
    b = await prov.create(request("pvc-x", 10 * MIB))
    assert a == b and store.creates == 1
    with pytest.raises(AlreadyExists):
        await prov.create(request("pvc-x", 20 * MIB))


async def test_a_repeated_delete_after_the_watch_saw_the_volume_go_sends_no_request(
    env: tuple[Provisioner, FakeStore],
) -> None:
    prov, store = env
    await prov.create(request("pvc-x", 10 * MIB))
    await prov.delete("pvc-x")
    assert store.deletes == 1 and "pvc-x" not in store.objects
    await prov.delete("pvc-x")  # csi-provisioner's second call: the deletion was delivered, nothing to send
    assert store.deletes == 1
    # A name never seen is deleted on the API server (the cache may lag): absent there, it succeeds.
    await prov.delete("pvc-never-seen")
    assert store.deletes == 2
    # The same name made again is a volume again: its deletion is sent.
    await prov.create(request("pvc-x", 10 * MIB))
    await prov.delete("pvc-x")
    assert store.deletes == 3 and "pvc-x" not in store.objects


async def test_a_delete_of_a_volume_already_being_deleted_waits_without_a_request(
    env: tuple[Provisioner, FakeStore],
) -> None:
    prov, store = env
    await prov.create(request("pvc-y", 10 * MIB))
    # The first DeleteVolume's request made it terminating; the agent has not removed its finalizer yet.
    await store.patch_volume("pvc-y", {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}})
    second = asyncio.create_task(prov.delete("pvc-y"))
    await asyncio.sleep(0.05)
    assert not second.done() and store.deletes == 0
    obj = store.objects.pop("pvc-y")
    store.cluster.on_volume("pvc-y", obj, None)  # the agent finished: the object went
    await asyncio.wait_for(second, 1)
    assert store.deletes == 0


async def test_topology(env: tuple[Provisioner, FakeStore]) -> None:
    prov, _ = env
    vol = await prov.create(request("p", MIB, preferred=({"openebs.io/nodename": "b"},)))
    assert vol.node == "b"
    vol = await prov.create(request("r", MIB, requisite=({"zone": "z2"},)))
    assert vol.node == "b"
    with pytest.raises(ResourceExhausted, match="requested topology"):
        await prov.create(request("none", MIB, requisite=({"openebs.io/nodename": "c"},)))
    # A node with no DeviceNode at all (released, or no agent): say so, not "largest free extent is 0 bytes".
    with pytest.raises(ResourceExhausted, match=r"openebs.io/nodename=gone\) runs the driver: no DeviceNode"):
        await prov.create(request("gone", MIB, requisite=({"openebs.io/nodename": "gone"},)))
    # A preferred node that cannot fit is skipped, never chosen.
    vol = await prov.create(request("skip", 70 * MIB, preferred=({"openebs.io/nodename": "b"},)))
    assert vol.node == "a"


async def test_capacity_reports_total_free_and_largest_extent(env: tuple[Provisioner, FakeStore]) -> None:
    prov, _ = env
    assert prov.capacity({"devname": "ssd"}, None, CAP) == (160 * MIB, 100 * MIB)
    assert prov.capacity({"devname": "ssd"}, {"zone": "z2"}, CAP) == (60 * MIB, 60 * MIB)
    assert prov.capacity({"devname": "ssd"}, None, (Capability(False, AccessMode.MULTI_NODE_MULTI_WRITER),)) == (0, 0)
    with pytest.raises(InvalidArgument):
        prov.capacity({"devname": "ssd", "bogus": "1"}, None, CAP)


async def test_agent_failure_maps_to_resource_exhausted_and_cleans_up() -> None:
    cluster = ClusterState()
    store = FakeStore(cluster, {"a": 100 * MIB})
    store.node("a")
    store.free["a"] = 0  # the DeviceNode says 100 MiB but the disk is full: the agent will fail
    prov = Provisioner(store, cluster, timeout=5)
    with pytest.raises(ResourceExhausted, match="node a: full"):
        await prov.create(request("v", MIB))
    assert store.objects == {}


async def test_preference_covering_every_node_is_left_to_the_policy(env: tuple[Provisioner, FakeStore]) -> None:
    prov, _ = env
    everyone = tuple({"openebs.io/nodename": n} for n in ("b", "a", "c"))
    # FreeCapacityWeighted would pick a (100 MiB free) although b comes first in the provisioner's rotation.
    req = request("rot", MIB, preferred=everyone, requisite=everyone)
    req = CreateRequest(**{**req.__dict__, "parameters": {"devname": "ssd", "scheduler": "FreeCapacityWeighted"}})
    assert (await prov.create(req)).node == "a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lease(node: str, renewed: str = "2026-01-01T00:00:00.000000Z", duration: int = 4) -> dict[str, Any]:
    return {"spec": {"holderIdentity": node, "renewTime": renewed, "leaseDurationSeconds": duration}}


def test_heartbeat_expiry_is_judged_on_our_clock() -> None:
    clock = Clock()
    wall = datetime.datetime(2026, 1, 1, 0, 0, 1, tzinfo=datetime.UTC)  # one second after the renewTime
    cluster = ClusterState(clock=clock, wall=lambda: wall)
    assert cluster.agent_gone("a") is None  # no Lease at all: an agent that writes none (the original's)
    cluster.on_heartbeat("device-localpv-agent.a", None, lease("a"))
    assert cluster.agent_gone("a") is None
    clock.now += 3.9
    assert cluster.agent_gone("a") is None  # renewed 1 s before we saw it: within the 5 s allowed for skew
    clock.now += 0.2
    assert "Lease device-localpv-agent.a" in (cluster.agent_gone("a") or "")
    cluster.on_heartbeat("device-localpv-agent.a", None, lease("a", "2026-01-01T00:00:10.000000Z"))
    assert cluster.agent_gone("a") is None  # renewed: counted from when we saw it, whatever its clock says
    clock.now += 3.9
    cluster.on_heartbeat("device-localpv-agent.a", None, lease("a", "2026-01-01T00:00:10.000000Z"))
    assert cluster.agent_gone("a") is None
    clock.now += 0.2
    assert cluster.agent_gone("a") is not None  # an unchanged renewTime is no renewal
    cluster.on_heartbeat("device-localpv-agent.a", None, None)
    assert cluster.agent_gone("a") is None  # Lease deleted: back to "writes none"


def test_a_lease_seen_first_long_after_its_renewal_is_expired_at_once() -> None:
    wall = datetime.datetime(2026, 1, 1, 0, 10, tzinfo=datetime.UTC)
    cluster = ClusterState(clock=Clock(), wall=lambda: wall)
    cluster.on_heartbeat("x", None, lease("a"))  # renewed ten minutes before this controller started
    assert cluster.agent_gone("a") is not None


async def test_a_node_whose_agent_is_gone_gets_nothing_and_a_prompt_answer() -> None:
    clock = Clock()
    cluster = ClusterState(clock=clock)
    store = FakeStore(cluster, {"a": 100 * MIB, "b": 10 * MIB})
    store.node("a")
    store.node("b")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.on_heartbeat("la", None, lease("a", now))
    clock.now += 10  # a's agent stopped renewing
    prov = Provisioner(store, cluster, timeout=5)
    assert (await prov.create(request("small", MIB))).node == "b"
    with pytest.raises(ResourceExhausted, match=r"only nodes whose agent is gone could fit .* node a: its agent"):
        await prov.create(request("big", 50 * MIB))
    with pytest.raises(ResourceExhausted, match="node a: its agent"):
        await prov.create(request("wffc", MIB, requisite=({"openebs.io/nodename": "a"},)))


async def test_a_placement_no_agent_started_is_withdrawn_and_placed_again() -> None:
    clock = Clock()
    cluster = ClusterState(clock=clock)
    store = FakeStore(cluster, {"a": 100 * MIB, "b": 100 * MIB})
    store.node("a")
    store.node("b")
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.on_heartbeat("la", None, lease("a", now))
    stuck = {
        "metadata": {"name": "pvc-1", "resourceVersion": "7"},
        "spec": {"ownerNodeID": "a", "capacity": str(MIB), "devname": "ssd"},
        "status": {"state": "Pending"},
    }
    store.objects["pvc-1"] = stuck
    cluster.on_volume("pvc-1", None, stuck)
    clock.now += 10
    prov = Provisioner(store, cluster, timeout=5)
    assert (await prov.create(request("pvc-1", MIB))).node == "b"
    # With our finalizer an agent may have started carving: never withdrawn, and the wait ends promptly.
    started = {**stuck, "metadata": {"name": "pvc-2", "resourceVersion": "8", "finalizers": [FINALIZER]}}
    store.objects["pvc-2"] = started
    cluster.on_volume("pvc-2", None, started)
    with pytest.raises(Unavailable, match="node a: its agent"):
        await prov.create(request("pvc-2", MIB))
    assert "pvc-2" in store.objects
