"""ListVolumes (paged, from the cache), ControllerGetVolume with its condition, and ReadWriteOncePod publishing."""

from __future__ import annotations

import uuid

import grpc

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import AM, MIB, code_of, create, delete, mount_cap, publish, unpublish
from tests.conftest import Cluster

C = grpc.StatusCode


def _page(cluster: Cluster, max_entries: int, token: str = "") -> tuple[list[str], str]:
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    rsp = ctl.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=max_entries, starting_token=token), timeout=10)
    for e in rsp.entries:
        assert e.status.HasField("volume_condition")
        assert dict(e.volume.accessible_topology[0].segments)
    return [e.volume.volume_id for e in rsp.entries], rsp.next_token


def test_list_volumes_pages_through_every_volume(cluster: Cluster) -> None:
    names = sorted(f"pvc-{uuid.uuid4()}" for _ in range(5))
    for n in names:
        create(cluster.controller_channel, n, MIB)
    try:
        everything, token = _page(cluster, 0)
        assert token == "" and set(names) <= set(everything)
        seen: list[str] = []
        token = ""
        deleted = False
        while True:
            page, token = _page(cluster, 2, token)
            assert len(page) <= 2
            seen += page
            if not deleted:
                # A volume deleted between pages (here the last one returned) does not break the next token.
                delete(cluster.controller_channel, page[-1])
                deleted = True
            if not token:
                break
        assert seen == sorted(seen) and len(seen) == len(set(seen))
        assert set(names) <= set(seen)
        for bad in ("invalid-token", "v1:!!!", "v1:" + "A" * 4000):
            code, msg = code_of(lambda bad=bad: _page(cluster, 2, bad))
            assert code == C.ABORTED and "starting_token" in msg, msg
        code, msg = code_of(lambda: _page(cluster, -1))
        assert code == C.INVALID_ARGUMENT, msg
    finally:
        for n in names:
            delete(cluster.controller_channel, n)


def test_get_volume_and_its_condition(cluster: Cluster) -> None:
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", MIB)
    try:
        got = ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=vol.volume_id), timeout=10)
        assert got.volume.volume_id == vol.volume_id and got.volume.capacity_bytes == vol.capacity_bytes
        assert not got.status.volume_condition.abnormal
        assert "partition" in got.status.volume_condition.message
    finally:
        delete(cluster.controller_channel, vol.volume_id)
    for missing in (vol.volume_id, "pvc-" + str(uuid.uuid4()), "NOT/a/name"):
        code, msg = code_of(
            lambda missing=missing: ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=missing))
        )
        assert code == C.NOT_FOUND, msg
    code, _ = code_of(lambda: ctl.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="")))
    assert code == C.INVALID_ARGUMENT


def test_single_node_single_writer_is_published_once(cluster: Cluster) -> None:
    rwop = mount_cap(mode=AM.SINGLE_NODE_SINGLE_WRITER)
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 8 * MIB, cap=rwop)
    first, second = (str(cluster.workdir / f"rwop-{i}-{vol.volume_id}") for i in (1, 2))
    publish(cluster.node_channel, vol, first, cap=rwop)
    try:
        publish(cluster.node_channel, vol, first, cap=rwop)  # the same target again: idempotent
        code, msg = code_of(lambda: publish(cluster.node_channel, vol, second, cap=rwop))
        assert code == C.FAILED_PRECONDITION and first in msg, msg
        # SINGLE_NODE_MULTI_WRITER (advertised): two targets on the node are fine.
        multi = mount_cap(mode=AM.SINGLE_NODE_MULTI_WRITER)
        unpublish(cluster.node_channel, vol.volume_id, first)
        publish(cluster.node_channel, vol, first, cap=multi)
        publish(cluster.node_channel, vol, second, cap=multi)
        unpublish(cluster.node_channel, vol.volume_id, second)
    finally:
        unpublish(cluster.node_channel, vol.volume_id, first)
        delete(cluster.controller_channel, vol.volume_id)
