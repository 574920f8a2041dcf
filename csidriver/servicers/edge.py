"""Per-RPC error mapping and one structured log line per call."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from csidriver.services import errors

log = logging.getLogger("csidriver.rpc")

CODES: dict[type[errors.DriverError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Aborted: grpc.StatusCode.ABORTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Internal: grpc.StatusCode.INTERNAL,
    errors.Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
}

Resp = TypeVar("Resp")
Ctx = grpc.aio.ServicerContext[Any, Any]
Handler = Callable[[Any, Any, Ctx], Awaitable[Resp]]
Observer = Callable[[str, str, float], None]  # (method, code name, seconds)


def _ids(request: Any) -> str:
    parts = []
    for field in ("name", "volume_id", "target_path"):
        value = getattr(request, field, "")
        if value:
            parts.append(f"{field}={value}")
    return " ".join(parts)


def rpc(method: Handler[Resp]) -> Handler[Resp]:
    """Maps DriverError subclasses to their status code and logs method, ids, duration and code."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Ctx) -> Resp:
        start = time.monotonic()
        code = grpc.StatusCode.OK
        detail = ""
        try:
            return await method(self, request, context)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except errors.DriverError as e:
            code = CODES.get(type(e), grpc.StatusCode.INTERNAL)
            detail = str(e)
        except Exception as e:
            log.exception("%s failed unexpectedly", method.__name__)
            code = grpc.StatusCode.INTERNAL
            detail = f"internal error: {e}"
        finally:
            took = time.monotonic() - start
            level = logging.DEBUG if method.__name__ in ("Probe", "NodeGetCapabilities") else logging.INFO
            log.log(
                level,
                "rpc=%s %s code=%s took=%.1fms %s",
                method.__name__,
                _ids(request),
                code.name,
                took * 1000,
                detail,
            )
            observer: Observer | None = getattr(self, "observe", None)
            if observer is not None:
                observer(method.__name__, code.name, took)
        await context.abort(code, detail)
        raise AssertionError("unreachable")

    return wrapper


T = TypeVar("T")


def _refusal(name: str) -> Handler[Any]:
    async def refuse(self: Any, request: Any, context: Ctx) -> Any:
        raise errors.Unimplemented(f"{name} is not supported by this driver")

    refuse.__name__ = name
    return rpc(refuse)


def answer_unimplemented(cls: type[T]) -> type[T]:
    """Class decorator for a servicer: every RPC of its generated base class that it does not define answers
    UNIMPLEMENTED with the usual one log line, instead of the generated stub's NotImplementedError (which gRPC logs
    as an error with a traceback, thousands of times under a fuzzer)."""
    for base in cls.__mro__[1:]:
        if not base.__module__.endswith("_pb2_grpc"):
            continue
        for name, attr in vars(base).items():
            if callable(attr) and not name.startswith("_") and name not in cls.__dict__:
                setattr(cls, name, _refusal(name))
    return cls
