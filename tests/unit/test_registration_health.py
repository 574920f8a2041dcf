"""kubelet plugin registration servicer and the /healthz endpoint, over real sockets (no kubelet needed)."""

from __future__ import annotations

import asyncio
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2

from csidriver.csi import csi_pb2, csi_pb2_grpc
from csidriver.metrics import Metrics
from csidriver.pluginregistration import api_pb2, api_pb2_grpc
from csidriver.servicers import health
from csidriver.servicers.registration import RegistrationServicer, RegistrationState, registration_socket
from csidriver.servicers.server import start_server


class _Identity(csi_pb2_grpc.IdentityServicer):
    def __init__(self) -> None:
        self.ready = True

    async def Probe(self, request: Any, context: Any) -> csi_pb2.ProbeResponse:
        if not self.ready:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "not ready: first disk scan not done")
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))


@pytest.fixture
async def sockets() -> AsyncIterator[Path]:
    with tempfile.TemporaryDirectory(prefix="dlpv-reg-") as d:
        yield Path(d)


async def test_registration_answers_kubelet(sockets: Path) -> None:
    state = RegistrationState()
    path = registration_socket(str(sockets), "device.csi.openebs.io")
    assert path.endswith("/device.csi.openebs.io-reg.sock")
    servicer = RegistrationServicer("device.csi.openebs.io", "/var/lib/kubelet/plugins/x/csi.sock", state)
    server = await start_server(path, [(api_pb2_grpc.add_RegistrationServicer_to_server, servicer)])
    try:
        async with grpc.aio.insecure_channel(f"unix://{path}") as ch:
            stub = api_pb2_grpc.RegistrationStub(ch)
            info = await stub.GetInfo(api_pb2.InfoRequest())
            assert (info.type, info.name, info.endpoint) == (
                "CSIPlugin",
                "device.csi.openebs.io",
                "/var/lib/kubelet/plugins/x/csi.sock",
            )
            assert list(info.supported_versions) == ["1.0.0"]
            assert state.problem() is None
            await stub.NotifyRegistrationStatus(api_pb2.RegistrationStatus(plugin_registered=False, error="boom"))
            assert state.problem() == "kubelet refused the plugin registration: boom"
            await stub.NotifyRegistrationStatus(api_pb2.RegistrationStatus(plugin_registered=True))
            assert state.problem() is None
    finally:
        await server.stop(None)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def test_healthz_probes_the_driver_socket(sockets: Path) -> None:
    identity = _Identity()
    path = str(sockets / "csi.sock")
    server = await start_server(path, [(csi_pb2_grpc.add_IdentityServicer_to_server, identity)])
    state = RegistrationState()
    metrics = Metrics()
    port = _port()
    check = health.liveness(path, 2.0, state.problem)
    metrics.serve(f"127.0.0.1:{port}", health.from_thread(check, asyncio.get_running_loop(), 5))
    url = f"http://127.0.0.1:{port}"
    try:
        assert await asyncio.to_thread(_get, url + "/healthz") == (200, "ok\n")
        identity.ready = False
        code, body = await asyncio.to_thread(_get, url + "/healthz")
        assert code == 503 and "UNAVAILABLE" in body and "first disk scan" in body
        identity.ready = True
        state.registered, state.error = False, "version mismatch"
        code, body = await asyncio.to_thread(_get, url + "/healthz")
        assert code == 503 and "version mismatch" in body
        code, body = await asyncio.to_thread(_get, url + "/metrics")
        assert code == 200 and "# HELP device_localpv_rpc_total" in body, body
    finally:
        await server.stop(None)
    code, body = await asyncio.to_thread(_get, url + "/healthz")
    assert code == 503 and "kubelet refused" in body
    state.registered = True
    code, body = await asyncio.to_thread(_get, url + "/healthz")
    assert code == 503 and "UNAVAILABLE" in body, body  # the socket is gone
