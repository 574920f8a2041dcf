"""Per-RPC error mapping and one structured log line per call."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

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


# Longest string accepted in any request field (ids, names, paths, parameters...): PATH_MAX. Longer is hostile.
MAX_FIELD = 4096
# Longest error message or logged value: a message echoing a huge value would exceed gRPC's metadata limit (the
# caller would see RESOURCE_EXHAUSTED "Stream removed" instead of the answer) and flood the log.
MAX_MESSAGE = 1024
_LOGGED_VALUE = 256


def clean(text: str, limit: int = MAX_MESSAGE) -> str:
    """Text safe to send and log: control characters escaped, at most `limit` characters."""
    out = "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in text[: limit + 1])
    if len(text) > limit or len(out) > limit:
        return out[:limit] + f"... ({len(text)} characters in all)"
    return out


def _problem(message: Message, path: str = "") -> str | None:
    """A string field of the request that no valid request has: longer than MAX_FIELD, or holding a control
    character. Secrets are not inspected (and never echoed)."""
    for field, value in message.ListFields():
        name = f"{path}{field.name}"
        if field.name.endswith("secrets") or field.name == "starting_token":
            continue  # secrets are never inspected (nor echoed); a bad page token is ABORTED by its handler
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                where = f"{name}[{clean(str(key), 64)!r}]"
                for text in (key, item) if isinstance(item, str) else (key,):
                    found = _bad_text(text, where)
                    if found:
                        return found
                if isinstance(item, Message):
                    found = _problem(item, where + ".")
                    if found:
                        return found
            continue
        repeated = not isinstance(value, str | bytes | int | float | Message)
        items = list(value) if repeated else [value]
        for i, item in enumerate(items):
            where = f"{name}[{i}]" if repeated else name
            if isinstance(item, str):
                found = _bad_text(item, where)
                if found:
                    return found
            elif isinstance(item, Message):
                found = _problem(item, where + ".")
                if found:
                    return found
    return None


# What a field is, for the message (the field path alone is for protocol readers).
_LABELS = (
    ("mount_flags", "mount flag"),
    ("segments", "topology segment"),
    ("parameters", "parameter"),
    ("fs_type", "filesystem type"),
    ("path", "path"),
)


def _bad_text(text: str, where: str) -> str | None:
    label = next((f"{word} " for key, word in _LABELS if key in where), "")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FIELD:
        return f"{label}{where} is {len(text)} characters long; at most {MAX_FIELD} bytes are accepted"
    # An id with a control character is simply one that names nothing (NOT_FOUND, or OK for a deletion, as the
    # spec asks); what reaches a command, a path or an object must be printable.
    if not where.endswith("_id") and any(not ch.isprintable() and ch != " " for ch in text):
        return f"{label}{where} contains a control character"
    return None


def _ids(request: Any) -> str:
    parts = []
    for field in ("name", "volume_id", "snapshot_id", "source_volume_id", "target_path"):
        value = getattr(request, field, "")
        if value:
            parts.append(f"{field}={clean(value, _LOGGED_VALUE)}")
    return " ".join(parts)


def rpc(method: Handler[Resp], screen: bool = True) -> Handler[Resp]:
    """Maps DriverError subclasses to their status code and logs method, ids, duration and code. With `screen`,
    a request carrying a string no valid request has (a control character, more than MAX_FIELD bytes) is refused
    with INVALID_ARGUMENT naming the field before the handler runs."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: Ctx) -> Resp:
        start = time.monotonic()
        code = grpc.StatusCode.OK
        detail = ""
        try:
            problem = _problem(request) if screen and isinstance(request, Message) else None
            if problem is not None:
                raise errors.InvalidArgument(problem)
            return await method(self, request, context)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except errors.DriverError as e:
            code = CODES.get(type(e), grpc.StatusCode.INTERNAL)
            detail = clean(str(e))
        except Exception as e:
            log.exception("%s failed unexpectedly", method.__name__)
            code = grpc.StatusCode.INTERNAL
            detail = clean(f"internal error: {e}")
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
    return rpc(refuse, screen=False)  # UNIMPLEMENTED whatever the request holds


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
