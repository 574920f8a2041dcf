"""Small builders for CSI requests used by the e2e tests and benches."""

from __future__ import annotations

from typing import Any

import grpc

from csidriver.csi import csi_pb2, csi_pb2_grpc

MIB = 1 << 20
POOL = "ssd"  # the pool every e2e and bench disk joins
AM = csi_pb2.VolumeCapability.AccessMode


def mount_cap(fs: str = "", mode: AM.Mode = AM.SINGLE_NODE_WRITER, flags: tuple[str, ...] = ()) -> Any:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(fs_type=fs, mount_flags=list(flags)),
        access_mode=AM(mode=mode),
    )


def block_cap(mode: AM.Mode = AM.SINGLE_NODE_WRITER) -> Any:
    return csi_pb2.VolumeCapability(block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=mode))


def create(
    ch: grpc.Channel,
    name: str,
    size: int = 32 * MIB,
    params: dict[str, str] | None = None,
    cap: Any = None,
    limit: int = 0,
    requisite: list[dict[str, str]] | None = None,
    preferred: list[dict[str, str]] | None = None,
    source_volume: str = "",
    source_snapshot: str = "",
) -> Any:
    """CreateVolume; a clone of `source_volume` or a restore of `source_snapshot` when one is given."""
    req = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=size, limit_bytes=limit),
        volume_capabilities=[cap or mount_cap()],
        parameters={"devname": POOL} if params is None else params,
        accessibility_requirements=csi_pb2.TopologyRequirement(
            requisite=[csi_pb2.Topology(segments=s) for s in requisite or []],
            preferred=[csi_pb2.Topology(segments=s) for s in preferred or []],
        ),
    )
    if source_volume:
        req.volume_content_source.volume.volume_id = source_volume
    if source_snapshot:
        req.volume_content_source.snapshot.snapshot_id = source_snapshot
    return csi_pb2_grpc.ControllerStub(ch).CreateVolume(req, timeout=60).volume


def capacity(ch: grpc.Channel, node: str, pool: str = POOL) -> int:
    """GetCapacity of `pool` on one node, as the controller's caches see it now."""
    topo = csi_pb2.Topology(segments={"openebs.io/nodename": node})
    req = csi_pb2.GetCapacityRequest(parameters={"devname": pool}, accessible_topology=topo)
    return int(csi_pb2_grpc.ControllerStub(ch).GetCapacity(req).available_capacity)


def delete(ch: grpc.Channel, volume_id: str) -> None:
    csi_pb2_grpc.ControllerStub(ch).DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=60)


def publish(ch: grpc.Channel, vol: Any, target: str, cap: Any = None, readonly: bool = False) -> None:
    csi_pb2_grpc.NodeStub(ch).NodePublishVolume(
        csi_pb2.NodePublishVolumeRequest(
            volume_id=vol.volume_id if hasattr(vol, "volume_id") else vol,
            target_path=target,
            volume_capability=cap or mount_cap(),
            readonly=readonly,
            volume_context=dict(vol.volume_context) if hasattr(vol, "volume_context") else {},
        ),
        timeout=60,
    )


def unpublish(ch: grpc.Channel, volume_id: str, target: str) -> None:
    csi_pb2_grpc.NodeStub(ch).NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target), timeout=60
    )


def code_of(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), str(e.details())
    raise AssertionError("the call succeeded but an error was expected")
