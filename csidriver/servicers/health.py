"""Liveness as kubelet's probe sees it: a CSI Probe made over the driver's own socket, like any CSI client."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from csidriver.csi import csi_pb2, csi_pb2_grpc

Check = Callable[[], Coroutine[Any, Any, str | None]]  # async: None when healthy, else why not


async def probe_socket(socket_path: str, deadline: float) -> str | None:
    """None when the Identity service on `socket_path` answers Probe with ready, else why not."""
    try:
        async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
            stub = csi_pb2_grpc.IdentityStub(channel)  # type: ignore[no-untyped-call]
            reply = await stub.Probe(csi_pb2.ProbeRequest(), timeout=deadline)
    except grpc.aio.AioRpcError as e:
        return f"CSI Probe on {socket_path}: {e.code().name}: {e.details()}"
    if reply.HasField("ready") and not reply.ready.value:
        return "CSI Probe answered not ready"
    return None


def liveness(
    socket_path: str, timeout: float, *extra: Callable[[], str | None]
) -> Callable[[], Coroutine[Any, Any, str | None]]:
    """An async check for /healthz: the socket's Probe, then each extra check (e.g. kubelet's registration)."""

    async def check() -> str | None:
        for more in extra:
            why = more()
            if why is not None:
                return why
        return await probe_socket(socket_path, timeout)

    return check


def from_thread(check: Check, loop: asyncio.AbstractEventLoop, timeout: float) -> Callable[[], str | None]:
    """The async `check` made callable from the metrics server's threads: it runs on the process's event loop."""

    def run() -> str | None:
        return asyncio.run_coroutine_threadsafe(check(), loop).result(timeout)

    return run
