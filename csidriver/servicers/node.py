"""CSI Node service."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from csidriver.csi import csi_pb2, csi_pb2_grpc
from csidriver.servicers import convert
from csidriver.servicers.edge import Ctx, Observer, answer_unimplemented, rpc
from csidriver.services.publish import Publisher

_Rpc = csi_pb2.NodeServiceCapability.RPC
_Usage = csi_pb2.VolumeUsage


@answer_unimplemented
class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(
        self,
        publisher: Publisher,
        node_id: str,
        topology: Mapping[str, str],
        observe: Observer | None = None,
        unpublished: Callable[[str], None] | None = None,
    ) -> None:
        self._pub = publisher
        self._node = node_id
        self._topology = dict(topology)
        self.observe = observe
        # Told the volume id after each successful unpublish: a deletion that waited for the unmount can go on.
        self._unpublished = unpublished

    @rpc
    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: Ctx
    ) -> csi_pb2.NodePublishVolumeResponse:
        cap = convert.capability(request.volume_capability) if request.HasField("volume_capability") else None
        await self._pub.publish(
            request.volume_id, request.target_path, cap, request.readonly, dict(request.volume_context)
        )
        return csi_pb2.NodePublishVolumeResponse()

    @rpc
    async def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        await self._pub.unpublish(request.volume_id, request.target_path)
        if self._unpublished is not None:
            self._unpublished(request.volume_id)
        return csi_pb2.NodeUnpublishVolumeResponse()

    @rpc
    async def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: Ctx
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        st = await self._pub.stats(request.volume_id, request.volume_path)
        if st.block:
            usage = [_Usage(unit=_Usage.BYTES, total=st.total)]
        else:
            usage = [
                _Usage(unit=_Usage.BYTES, total=st.total, used=st.used, available=st.available),
                _Usage(unit=_Usage.INODES, total=st.inodes, used=st.inodes_used, available=st.inodes_free),
            ]
        condition = csi_pb2.VolumeCondition(abnormal=bool(st.abnormal), message=st.abnormal or "volume is healthy")
        return csi_pb2.NodeGetVolumeStatsResponse(usage=usage, volume_condition=condition)

    @rpc
    async def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: Ctx
    ) -> csi_pb2.NodeExpandVolumeResponse:
        block = None
        if request.HasField("volume_capability"):
            block = convert.capability(request.volume_capability).block
        size = await self._pub.expand(
            request.volume_id, request.volume_path, request.capacity_range.required_bytes, block
        )
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=size)

    @rpc
    async def NodeGetCapabilities(self, request: Any, context: Ctx) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(rpc=_Rpc(type=t))
                for t in (
                    _Rpc.GET_VOLUME_STATS,
                    _Rpc.VOLUME_CONDITION,
                    _Rpc.SINGLE_NODE_MULTI_WRITER,
                    _Rpc.EXPAND_VOLUME,
                )
            ]
        )

    @rpc
    async def NodeGetInfo(self, request: Any, context: Ctx) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=self._node, accessible_topology=csi_pb2.Topology(segments=self._topology)
        )
