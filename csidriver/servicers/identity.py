"""CSI Identity: name, version, capabilities, and a Probe that tells the truth about readiness."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf import wrappers_pb2

from csidriver import __version__
from csidriver.csi import csi_pb2, csi_pb2_grpc
from csidriver.servicers.edge import Ctx, answer_unimplemented, rpc
from csidriver.services.errors import Unavailable

Readiness = Callable[[], Awaitable[str | None]]  # None when ready, else why not

_Svc = csi_pb2.PluginCapability.Service


@answer_unimplemented
class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(self, driver_name: str, readiness: Readiness) -> None:
        self._name = driver_name
        self._readiness = readiness

    @rpc
    async def GetPluginInfo(self, request: Any, context: Ctx) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self._name, vendor_version=__version__)

    @rpc
    async def GetPluginCapabilities(self, request: Any, context: Ctx) -> csi_pb2.GetPluginCapabilitiesResponse:
        # The same from every instance, whichever services it serves itself: the CSI spec asks that all instances
        # of one plugin version report one set of plugin capabilities (the agent serves no Controller RPC, but the
        # plugin does).
        caps = [
            csi_pb2.PluginCapability(service=_Svc(type=_Svc.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
            csi_pb2.PluginCapability(service=_Svc(type=_Svc.CONTROLLER_SERVICE)),
        ]
        return csi_pb2.GetPluginCapabilitiesResponse(capabilities=caps)

    @rpc
    async def Probe(self, request: Any, context: Ctx) -> csi_pb2.ProbeResponse:
        why = await self._readiness()
        if why is not None:
            raise Unavailable(f"not ready: {why}")
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
