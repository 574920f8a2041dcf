"""Protobuf messages to the services' plain values."""

from __future__ import annotations

from collections.abc import Iterable

from csidriver.csi import csi_pb2
from csidriver.services.errors import InvalidArgument
from csidriver.services.requests import AccessMode, Capability, CreateRequest, Segment


def capability(cap: csi_pb2.VolumeCapability) -> Capability:
    try:
        mode = AccessMode(cap.access_mode.mode)
    except ValueError:
        mode = AccessMode.UNKNOWN
    if cap.HasField("block"):
        return Capability(block=True, access_mode=mode)
    if cap.HasField("mount"):
        return Capability(
            block=False,
            access_mode=mode,
            fs_type=cap.mount.fs_type,
            mount_flags=tuple(cap.mount.mount_flags),
        )
    raise InvalidArgument("volume capability must set an access type (block or mount)")


def capabilities(caps: Iterable[csi_pb2.VolumeCapability]) -> tuple[Capability, ...]:
    return tuple(capability(cap) for cap in caps)


def segments(topologies: Iterable[csi_pb2.Topology]) -> tuple[Segment, ...]:
    return tuple(dict(t.segments) for t in topologies)


def create_request(req: csi_pb2.CreateVolumeRequest) -> CreateRequest:
    return CreateRequest(
        name=req.name,
        required_bytes=req.capacity_range.required_bytes,
        limit_bytes=req.capacity_range.limit_bytes,
        parameters=dict(req.parameters),
        capabilities=capabilities(req.volume_capabilities),
        requisite=segments(req.accessibility_requirements.requisite),
        preferred=segments(req.accessibility_requirements.preferred),
        has_content_source=req.HasField("volume_content_source"),
        has_mutable_parameters=bool(req.mutable_parameters),
        source_volume=req.volume_content_source.volume.volume_id
        if req.volume_content_source.WhichOneof("type") == "volume"
        else "",
        source_snapshot=req.volume_content_source.snapshot.snapshot_id
        if req.volume_content_source.WhichOneof("type") == "snapshot"
        else "",
    )
