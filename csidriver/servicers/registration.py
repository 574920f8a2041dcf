"""kubelet plugin registration: the agent announces its CSI socket to kubelet's plugin watcher itself.

kubelet watches its plugins_registry directory; when a socket appears there it calls GetInfo on it, then reports the
outcome with NotifyRegistrationStatus. After a successful registration kubelet calls NodeGetInfo on the CSI endpoint
and records the node id and topology keys in the node's CSINode object.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from csidriver.pluginregistration import api_pb2, api_pb2_grpc
from csidriver.servicers.edge import Ctx

log = logging.getLogger(__name__)

CSI_PLUGIN = "CSIPlugin"
# Versions of kubelet's CSI plugin protocol this driver speaks (kubelet accepts any 1.x).
SUPPORTED_VERSIONS = ("1.0.0",)


def registration_socket(directory: str, driver_name: str) -> str:
    """The socket name node-driver-registrar would use, so a switch between the two replaces the same file."""
    return os.path.join(directory, f"{driver_name}-reg.sock")


@dataclass
class RegistrationState:
    """What kubelet last said about the registration: None until it has said anything."""

    registered: bool | None = None
    error: str = ""

    def problem(self) -> str | None:
        if self.registered is False:
            return f"kubelet refused the plugin registration: {self.error}"
        return None


class RegistrationServicer(api_pb2_grpc.RegistrationServicer):
    def __init__(self, driver_name: str, csi_socket: str, state: RegistrationState) -> None:
        self._name = driver_name
        self._endpoint = csi_socket
        self._state = state

    async def GetInfo(self, request: Any, context: Ctx) -> api_pb2.PluginInfo:
        log.info("kubelet asked for plugin info: %s at %s", self._name, self._endpoint)
        return api_pb2.PluginInfo(
            type=CSI_PLUGIN, name=self._name, endpoint=self._endpoint, supported_versions=list(SUPPORTED_VERSIONS)
        )

    async def NotifyRegistrationStatus(self, request: Any, context: Ctx) -> api_pb2.RegistrationStatusResponse:
        self._state.registered = bool(request.plugin_registered)
        self._state.error = str(request.error)
        if request.plugin_registered:
            log.info("kubelet registered the plugin %s", self._name)
        else:
            log.error("kubelet refused the plugin %s: %s", self._name, request.error)
        return api_pb2.RegistrationStatusResponse()
