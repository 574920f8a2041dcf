"""Each class of bad request gets its documented code and a message that says what is wrong; nothing is written."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.csi import AM, MIB, POOL, block_cap, code_of, create, delete, mount_cap, publish, unpublish
from harness.disks import Partition, partitions
from tests.conftest import Cluster

C = grpc.StatusCode


def _layout(cluster: Cluster) -> list[list[Partition]]:
    return [partitions(d.device) for d in cluster.pool_disks]


@pytest.mark.parametrize(
    ("kwargs", "code", "words"),
    [
        ({"params": {"devname": POOL, "colour": "blue"}}, C.INVALID_ARGUMENT, ["colour", "devname", "scheduler"]),
        ({"params": {}}, C.INVALID_ARGUMENT, ["devname", "required"]),
        ({"params": {"devname": "../etc"}}, C.INVALID_ARGUMENT, ["pool name"]),
        ({"params": {"devname": POOL, "scheduler": "Random"}}, C.INVALID_ARGUMENT, ["CapacityWeighted"]),
        ({"params": {"DevName": POOL, "devname": POOL}}, C.INVALID_ARGUMENT, ["twice"]),
        ({"cap": mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER)}, C.INVALID_ARGUMENT, ["MULTI_NODE_MULTI_WRITER"]),
        ({"cap": mount_cap(mode=AM.MULTI_NODE_READER_ONLY)}, C.INVALID_ARGUMENT, ["single node"]),
        ({"cap": mount_cap("ntfs")}, C.INVALID_ARGUMENT, ["ntfs", "ext4"]),
        ({"cap": mount_cap(flags=("-o", "x"))}, C.INVALID_ARGUMENT, ["mount flag"]),
        ({"size": 10 * MIB, "limit": 5 * MIB}, C.OUT_OF_RANGE, ["limit_bytes"]),
        ({"size": MIB + 1, "limit": MIB + 2}, C.OUT_OF_RANGE, ["1 MiB"]),
        ({"size": 1 << 40}, C.RESOURCE_EXHAUSTED, ["largest free extent", POOL]),
        ({"params": {"devname": "nosuchpool"}}, C.RESOURCE_EXHAUSTED, ["nosuchpool", "pools known"]),
        ({"requisite": [{"openebs.io/nodename": "no-such-node"}]}, C.RESOURCE_EXHAUSTED, ["requested topology"]),
    ],
    ids=[
        "unknown-param",
        "missing-pool",
        "bad-pool-name",
        "unknown-scheduler",
        "duplicate-key",
        "multi-writer",
        "multi-reader",
        "unsupported-fs",
        "hostile-mount-flag",
        "required-over-limit",
        "rounding-over-limit",
        "too-big",
        "unknown-pool",
        "impossible-topology",
    ],
)
def test_create_rejects(cluster: Cluster, kwargs: dict[str, Any], code: grpc.StatusCode, words: list[str]) -> None:
    before = _layout(cluster)
    name = f"pvc-{uuid.uuid4()}"
    got, msg = code_of(lambda: create(cluster.controller_channel, name, **{"size": MIB, **kwargs}))
    assert got == code, msg
    for w in words:
        assert w in msg, msg
    assert _layout(cluster) == before
    assert cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, check=False) == ""


def test_create_requires_name_and_capabilities(cluster: Cluster) -> None:
    stub = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    got, msg = code_of(lambda: stub.CreateVolume(csi_pb2.CreateVolumeRequest(name="x", parameters={"devname": POOL})))
    assert got == C.INVALID_ARGUMENT and "volume_capabilities" in msg
    got, msg = code_of(lambda: stub.CreateVolume(csi_pb2.CreateVolumeRequest(volume_capabilities=[mount_cap()])))
    assert got == C.INVALID_ARGUMENT and "name" in msg


@pytest.fixture(scope="module")
def volume(cluster: Cluster):  # type: ignore[no-untyped-def]
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 8 * MIB)
    yield vol
    delete(cluster.controller_channel, vol.volume_id)


def test_publish_rejects_unsafe_targets(cluster: Cluster, volume) -> None:  # type: ignore[no-untyped-def]
    outside = cluster.workdir / "outside"
    outside.mkdir(exist_ok=True)
    link = cluster.workdir / "escape"
    if not link.exists():
        os.symlink(outside, link)
    for target, words in [
        ("relative/path", "absolute"),
        (str(cluster.workdir / "a" / ".." / "b"), ".."),
        (str(link / "target"), "symbolic link"),
        (str(link), "symbolic link"),
    ]:
        got, msg = code_of(lambda t=target: publish(cluster.node_channel, volume, t))
        assert got == C.INVALID_ARGUMENT, (target, msg)
        assert words in msg, msg
    assert os.listdir(outside) == []


def test_publish_rejects_bad_requests(cluster: Cluster, volume) -> None:  # type: ignore[no-untyped-def]
    target = str(cluster.workdir / "bad-pub")
    got, msg = code_of(lambda: publish(cluster.node_channel, "pvc-" + str(uuid.uuid4()), target))
    assert got == C.NOT_FOUND, msg
    got, msg = code_of(
        lambda: publish(cluster.node_channel, volume, target, mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER))
    )
    assert got == C.INVALID_ARGUMENT, msg
    # A block-published path cannot be re-published as something else.
    publish(cluster.node_channel, volume, target + "-blk", block_cap())
    other = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", MIB, cap=block_cap())
    got, msg = code_of(lambda: publish(cluster.node_channel, other, target + "-blk", block_cap()))
    assert got == C.ALREADY_EXISTS, msg
    unpublish(cluster.node_channel, volume.volume_id, target + "-blk")
    delete(cluster.controller_channel, other.volume_id)
    assert not os.path.exists(target)


def test_validate_and_stats_errors(cluster: Cluster, volume) -> None:  # type: ignore[no-untyped-def]
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    got, _ = code_of(
        lambda: ctl.ValidateVolumeCapabilities(
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id="pvc-nope", volume_capabilities=[mount_cap()])
        )
    )
    assert got == C.NOT_FOUND
    r = ctl.ValidateVolumeCapabilities(
        csi_pb2.ValidateVolumeCapabilitiesRequest(
            volume_id=volume.volume_id, volume_capabilities=[mount_cap(mode=AM.MULTI_NODE_MULTI_WRITER)]
        )
    )
    assert not r.HasField("confirmed") and "single node" in r.message
    node = csi_pb2_grpc.NodeStub(cluster.node_channel)
    got, _ = code_of(
        lambda: node.NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume.volume_id, volume_path=str(cluster.workdir / "nope"))
        )
    )
    assert got == C.NOT_FOUND


def test_publish_only_under_kubelets_directories(cluster: Cluster, volume) -> None:  # type: ignore[no-untyped-def]
    """Targets outside the configured roots (kubelet's pods and raw-block directories; the test work directory
    here) are refused before anything is touched: no mount over /etc."""
    for target in ("/etc/dlpv-hostile", "/var/lib/dlpv-hostile", "/tmp"):
        got, msg = code_of(lambda t=target: publish(cluster.node_channel, volume, t))
        assert got == C.INVALID_ARGUMENT and "outside the directories" in msg, (target, msg)
        got, msg = code_of(lambda t=target: unpublish(cluster.node_channel, volume.volume_id, t))
        assert got == C.INVALID_ARGUMENT, (target, msg)
    assert not os.path.exists("/etc/dlpv-hostile") and not os.path.exists("/var/lib/dlpv-hostile")


def test_unpublish_touches_only_its_own_volume(cluster: Cluster, volume) -> None:  # type: ignore[no-untyped-def]
    """NodeUnpublishVolume with another volume's id at a mounted target unmounts nothing; with an id of no volume
    of this node it deletes no pre-existing file or directory."""
    target = str(cluster.workdir / "own-only")
    publish(cluster.node_channel, volume, target, mount_cap("ext4"))
    try:
        with open(os.path.join(target, "data"), "w") as f:
            f.write("kept")
        other = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", MIB)
        for wrong in (other.volume_id, f"pvc-{uuid.uuid4()}"):
            got, msg = code_of(lambda w=wrong: unpublish(cluster.node_channel, w, target))
            assert got == C.FAILED_PRECONDITION and "nothing unmounted" in msg, (wrong, msg)
            assert os.path.ismount(target) and Path(target, "data").read_text() == "kept"
        delete(cluster.controller_channel, other.volume_id)
    finally:
        unpublish(cluster.node_channel, volume.volume_id, target)
    assert not os.path.exists(target)
    # Not mounted: a file or an empty directory that a volume of this node did not leave stays where it is.
    plain, empty = cluster.workdir / "plain-file", cluster.workdir / "empty-dir"
    plain.write_text("someone's file")
    empty.mkdir()
    for path in (plain, empty):
        unpublish(cluster.node_channel, f"pvc-{uuid.uuid4()}", str(path))
        assert path.exists(), path
    unpublish(cluster.node_channel, volume.volume_id, str(plain))
    assert plain.read_text() == "someone's file"


def test_republish_and_stats_are_strict(cluster: Cluster, volume) -> None:  # type: ignore[no-untyped-def]
    """Republishing at the same target with another filesystem type or access type is ALREADY_EXISTS; a target
    whose parent is missing is FAILED_PRECONDITION (no traceback); stats of a path that is another volume's mount,
    or a plain directory, are NOT_FOUND."""
    target = str(cluster.workdir / "strict")
    publish(cluster.node_channel, volume, target, mount_cap("ext4"))
    other = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", MIB)
    other_target = str(cluster.workdir / "strict-other")
    publish(cluster.node_channel, other, other_target, mount_cap("ext4"))
    try:
        publish(cluster.node_channel, volume, target, mount_cap("ext4"))  # the same again: OK
        for cap in (mount_cap("xfs"), block_cap()):
            got, msg = code_of(lambda c=cap: publish(cluster.node_channel, volume, target, c))
            assert got == C.ALREADY_EXISTS, msg
        got, msg = code_of(lambda: publish(cluster.node_channel, volume, str(cluster.workdir / "no" / "such")))
        assert got == C.FAILED_PRECONDITION and "parent directory" in msg, msg
        node = csi_pb2_grpc.NodeStub(cluster.node_channel)
        for vid, path in (
            (volume.volume_id, other_target),
            (f"pvc-{uuid.uuid4()}", target),
            (volume.volume_id, str(cluster.workdir)),
        ):
            req = csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=path)
            got, msg = code_of(lambda r=req: node.NodeGetVolumeStats(r, timeout=30))
            assert got == C.NOT_FOUND, (vid, path, msg)
    finally:
        unpublish(cluster.node_channel, other.volume_id, other_target)
        unpublish(cluster.node_channel, volume.volume_id, target)
        delete(cluster.controller_channel, other.volume_id)


def test_unimplemented_rpcs_answer_plainly(cluster: Cluster) -> None:
    """RPCs the driver does not offer answer UNIMPLEMENTED and log one line each, never a traceback."""
    node = csi_pb2_grpc.NodeStub(cluster.node_channel)
    ctl = csi_pb2_grpc.ControllerStub(cluster.controller_channel)
    calls = [
        lambda: node.NodeStageVolume(csi_pb2.NodeStageVolumeRequest(volume_id="pvc-x"), timeout=10),
        lambda: node.NodeUnstageVolume(csi_pb2.NodeUnstageVolumeRequest(volume_id="pvc-x"), timeout=10),
        lambda: ctl.ControllerPublishVolume(csi_pb2.ControllerPublishVolumeRequest(volume_id="pvc-x"), timeout=10),
        lambda: ctl.ControllerModifyVolume(csi_pb2.ControllerModifyVolumeRequest(volume_id="pvc-x"), timeout=10),
    ]
    for call in calls * 3:
        got, msg = code_of(call)
        assert got == C.UNIMPLEMENTED and "not supported" in msg, msg
    for proc in cluster.driver.processes.values():
        log = proc.log.read_text()
        assert "NotImplementedError" not in log and "Method not implemented" not in log, proc.name
