"""CSI Controller service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import timestamp_pb2, wrappers_pb2

from csidriver.api import constants as c
from csidriver.csi import csi_pb2, csi_pb2_grpc
from csidriver.servicers import convert
from csidriver.servicers.edge import Ctx, Observer, answer_unimplemented, rpc
from csidriver.services.errors import Unavailable
from csidriver.services.listing import ListedVolume, VolumeLister
from csidriver.services.provisioning import Provisioner
from csidriver.services.snapshots import SnapshotInfo, Snapshotter

_Rpc = csi_pb2.ControllerServiceCapability.RPC
_CAPS = (
    _Rpc.CREATE_DELETE_VOLUME,
    _Rpc.GET_CAPACITY,
    _Rpc.LIST_VOLUMES,
    _Rpc.GET_VOLUME,
    _Rpc.VOLUME_CONDITION,
    _Rpc.SINGLE_NODE_MULTI_WRITER,
    _Rpc.EXPAND_VOLUME,
    _Rpc.CLONE_VOLUME,
    _Rpc.CREATE_DELETE_SNAPSHOT,
    _Rpc.LIST_SNAPSHOTS,
    _Rpc.GET_SNAPSHOT,
)


@answer_unimplemented
class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    def __init__(
        self,
        provisioner: Provisioner,
        lister: VolumeLister,
        snapshots: Snapshotter,
        observe: Observer | None = None,
        leads: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._prov = provisioner
        self._lister = lister
        self._snaps = snapshots
        self.observe = observe
        self._leads = leads  # None: no leader election, this replica serves everything

    async def _require_leader(self) -> None:
        if self._leads is not None and not await self._leads():
            raise Unavailable("this controller replica is not the leader; retry")

    @rpc
    async def CreateVolume(self, request: csi_pb2.CreateVolumeRequest, context: Ctx) -> csi_pb2.CreateVolumeResponse:
        await self._require_leader()
        vol = await self._prov.create(convert.create_request(request))
        return csi_pb2.CreateVolumeResponse(
            volume=csi_pb2.Volume(
                volume_id=vol.volume_id,
                capacity_bytes=vol.capacity,
                volume_context=dict(vol.context),
                accessible_topology=[csi_pb2.Topology(segments={c.TOPOLOGY_KEY: vol.node})],
                content_source=_source(vol.source_volume, vol.source_snapshot),
            )
        )

    @rpc
    async def DeleteVolume(self, request: csi_pb2.DeleteVolumeRequest, context: Ctx) -> csi_pb2.DeleteVolumeResponse:
        await self._require_leader()
        await self._prov.delete(request.volume_id)
        return csi_pb2.DeleteVolumeResponse()

    @rpc
    async def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: Ctx
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        caps = convert.capabilities(request.volume_capabilities)
        ok, why = await self._prov.validate(request.volume_id, caps, dict(request.parameters))
        if not ok:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=why)
        return csi_pb2.ValidateVolumeCapabilitiesResponse(
            confirmed=csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
                volume_context=dict(request.volume_context),
                volume_capabilities=list(request.volume_capabilities),
                parameters=dict(request.parameters),
            )
        )

    @rpc
    async def GetCapacity(self, request: csi_pb2.GetCapacityRequest, context: Ctx) -> csi_pb2.GetCapacityResponse:
        topology = dict(request.accessible_topology.segments) if request.HasField("accessible_topology") else None
        total, largest = self._prov.capacity(
            dict(request.parameters), topology, convert.capabilities(request.volume_capabilities)
        )
        return csi_pb2.GetCapacityResponse(
            available_capacity=total,
            maximum_volume_size=_int64(largest),
            minimum_volume_size=_int64(c.MIB),
        )

    @rpc
    async def ControllerExpandVolume(
        self, request: csi_pb2.ControllerExpandVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerExpandVolumeResponse:
        # Served by every replica, leader or not: csi-resizer elects on a Lease of its own (it cannot follow the
        # provisioner's), and growing is safe from any replica (a merge patch that only raises spec.capacity; the
        # agent does the work).
        cap = convert.capability(request.volume_capability) if request.HasField("volume_capability") else None
        size, node_step = await self._prov.expand(
            request.volume_id, request.capacity_range.required_bytes, request.capacity_range.limit_bytes, cap
        )
        return csi_pb2.ControllerExpandVolumeResponse(capacity_bytes=size, node_expansion_required=node_step)

    @rpc
    async def ListVolumes(self, request: csi_pb2.ListVolumesRequest, context: Ctx) -> csi_pb2.ListVolumesResponse:
        found, next_token = self._lister.page(request.max_entries, request.starting_token)
        return csi_pb2.ListVolumesResponse(
            entries=[
                csi_pb2.ListVolumesResponse.Entry(
                    volume=_volume(v),
                    status=csi_pb2.ListVolumesResponse.VolumeStatus(volume_condition=_condition(v)),
                )
                for v in found
            ],
            next_token=next_token,
        )

    @rpc
    async def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest, context: Ctx
    ) -> csi_pb2.ControllerGetVolumeResponse:
        v = self._lister.get(request.volume_id)
        return csi_pb2.ControllerGetVolumeResponse(
            volume=_volume(v),
            status=csi_pb2.ControllerGetVolumeResponse.VolumeStatus(volume_condition=_condition(v)),
        )

    # CreateSnapshot and DeleteSnapshot are served by every replica, leader or not: csi-snapshotter elects on a Lease
    # of its own, and both are safe from any replica (an object with a deterministic name, created or deleted; the
    # agent does the copy).
    @rpc
    async def CreateSnapshot(
        self, request: csi_pb2.CreateSnapshotRequest, context: Ctx
    ) -> csi_pb2.CreateSnapshotResponse:
        snap = await self._snaps.create(request.name, request.source_volume_id, dict(request.parameters))
        return csi_pb2.CreateSnapshotResponse(snapshot=_snapshot(snap))

    @rpc
    async def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: Ctx
    ) -> csi_pb2.DeleteSnapshotResponse:
        await self._snaps.delete(request.snapshot_id)
        return csi_pb2.DeleteSnapshotResponse()

    @rpc
    async def ListSnapshots(self, request: csi_pb2.ListSnapshotsRequest, context: Ctx) -> csi_pb2.ListSnapshotsResponse:
        found, next_token = self._snaps.page(
            request.max_entries, request.starting_token, request.snapshot_id, request.source_volume_id
        )
        return csi_pb2.ListSnapshotsResponse(
            entries=[csi_pb2.ListSnapshotsResponse.Entry(snapshot=_snapshot(s)) for s in found],
            next_token=next_token,
        )

    @rpc
    async def GetSnapshot(self, request: csi_pb2.GetSnapshotRequest, context: Ctx) -> csi_pb2.GetSnapshotResponse:
        return csi_pb2.GetSnapshotResponse(snapshot=_snapshot(self._snaps.get(request.snapshot_id)))

    @rpc
    async def ControllerGetCapabilities(self, request: Any, context: Ctx) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[csi_pb2.ControllerServiceCapability(rpc=_Rpc(type=t)) for t in _CAPS]
        )


def _source(volume_id: str, snapshot_id: str) -> csi_pb2.VolumeContentSource | None:
    if volume_id:
        return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id))
    if snapshot_id:
        return csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))
    return None


def _snapshot(s: SnapshotInfo) -> csi_pb2.Snapshot:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(s.created)
    return csi_pb2.Snapshot(
        size_bytes=s.size,
        snapshot_id=s.snapshot_id,
        source_volume_id=s.source_volume,
        creation_time=created,
        ready_to_use=s.ready,
    )


def _volume(v: ListedVolume) -> csi_pb2.Volume:
    return csi_pb2.Volume(
        volume_id=v.volume_id,
        capacity_bytes=v.capacity,
        volume_context=dict(v.context),
        accessible_topology=[csi_pb2.Topology(segments={c.TOPOLOGY_KEY: v.node})],
    )


def _condition(v: ListedVolume) -> csi_pb2.VolumeCondition:
    return csi_pb2.VolumeCondition(abnormal=v.abnormal, message=v.message)


def _int64(n: int) -> wrappers_pb2.Int64Value:
    return wrappers_pb2.Int64Value(value=n)
