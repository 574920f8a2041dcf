"""A grpc.aio server on a unix socket, and the way a process is asked to stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import grpc


def prepare_socket(path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # a stale socket from a previous run


Registration = tuple[Callable[[Any, grpc.aio.Server], None], object]


async def start_server(path: str, register: Sequence[Registration]) -> grpc.aio.Server:
    """`register` holds (add_XServicer_to_server, servicer) pairs."""
    prepare_socket(path)
    server = grpc.aio.server()
    for adder, servicer in register:
        adder(servicer, server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    os.chmod(path, 0o660)
    return server


class Shutdown(Exception):
    """Raised inside a process's task group when it was asked to stop (SIGTERM): the group cancels its other tasks
    and the process's clean-up runs without a cancellation pending on it."""


async def until_stopped(stop: asyncio.Event) -> None:
    await stop.wait()
    raise Shutdown
