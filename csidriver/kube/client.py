"""The Kubernetes REST API as the driver uses it: JSON objects by path, lists with selectors and pages, watches as
event streams; every request counted by verb, writes rate-limited. Built from a kubeconfig or in-cluster."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode

from csidriver.kube import http
from csidriver.kube.http import ApiError

Obj = dict[str, Any]
Decode = Callable[[bytes], Obj]  # one line of a watch -> its event
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
WRITES = ("create", "update", "patch", "delete")

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "ApiClient",
    "ApiError",
    "Decode",
    "TokenBucket",
    "make_api_client",
    "path",
    "verb_of",
]


class TokenBucket:
    """QPS/burst limiter for writes, so a bug cannot flood the API server."""

    def __init__(self, qps: float, burst: int) -> None:
        self._qps = qps
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._qps)
                self._stamp = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await asyncio.sleep((1 - self._tokens) / self._qps)


def verb_of(method: str, query: Mapping[str, Any] | None) -> str:
    if method == "GET":
        return "watch" if (query or {}).get("watch") else "get_or_list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


def path(group: str, version: str, plural: str, namespace: str | None = None, name: str | None = None) -> str:
    """/api/v1/... for the core group (""), /apis/<group>/<version>/... for the others."""
    parts = ["/api/v1" if not group else f"/apis/{group}/{version}"]
    if namespace:
        parts.append(f"namespaces/{quote(namespace, safe='')}")
    parts.append(plural)
    if name:
        parts.append(quote(name, safe=""))
    return "/".join(parts)


def _query(params: Mapping[str, Any] | None) -> str:
    if not params:
        return ""
    flat = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in params.items() if v is not None}
    return "?" + urlencode(flat) if flat else ""


class ApiClient:
    """One API server. `requests` counts calls by verb (get_or_list, watch, create, update, patch, delete)."""

    def __init__(self, transport: http.Transport, qps: float, burst: int) -> None:
        self.transport = transport
        self.requests: Counter[str] = Counter()
        self._writes = TokenBucket(qps, burst)

    async def call(
        self,
        method: str,
        target: str,
        body: Any = None,
        *,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """The answer's JSON; ApiError for any status but 2xx."""
        verb = verb_of(method, params)
        if verb in WRITES:
            await self._writes.take()
        self.requests[verb] += 1
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        headers = {"Content-Type": content_type} if data is not None else {}
        resp = await self.transport.request(method, target + _query(params), data, headers)
        if not 200 <= resp.status < 300:
            raise ApiError.from_body(resp.status, resp.reason, resp.body)
        return json.loads(resp.body) if resp.body else None

    async def get(self, target: str, **params: Any) -> Obj:
        got: Obj = await self.call("GET", target, params=params)
        return got

    async def create(self, target: str, body: Mapping[str, Any]) -> Obj:
        got: Obj = await self.call("POST", target, body)
        return got

    async def replace(self, target: str, body: Mapping[str, Any]) -> Obj:
        got: Obj = await self.call("PUT", target, body)
        return got

    async def patch(self, target: str, body: Any, content_type: str = MERGE_PATCH) -> Obj:
        got: Obj = await self.call("PATCH", target, body, content_type=content_type)
        return got

    async def delete(self, target: str, body: Mapping[str, Any] | None = None) -> Any:
        return await self.call("DELETE", target, body)

    async def list_all(self, target: str, page: int = 500, **params: Any) -> Obj:
        """Every object, page by page (limit + continue): one list with all the items and the last page's
        metadata."""
        items: list[Obj] = []
        cont: str | None = None
        while True:
            got = await self.get(target, limit=page, **{"continue": cont}, **params)
            items.extend(got.get("items") or ())
            cont = (got.get("metadata") or {}).get("continue")
            if not cont:
                got["items"] = items
                return got

    @asynccontextmanager
    async def watch(
        self, target: str, *, decode: Decode = json.loads, **params: Any
    ) -> AsyncIterator[AsyncIterator[Obj]]:
        """A watch of `target` (a collection) with `params` (resourceVersion, labelSelector, fieldSelector,
        allowWatchBookmarks, timeoutSeconds): its events as they arrive, each line read by `decode`. An ERROR event
        raises its Status as an ApiError (410 Gone: the version is too old, relist)."""
        query = {**params, "watch": True}
        self.requests["watch"] += 1
        async with self.transport.stream("GET", target + _query(query)) as lines:
            yield _events(lines, decode)

    async def close(self) -> None:
        await self.transport.close()


async def _events(lines: AsyncIterator[bytes], decode: Decode) -> AsyncIterator[Obj]:
    async for line in lines:
        event = decode(line)
        if event.get("type") == "ERROR":
            status = event.get("object") or {}
            raise ApiError(
                int(status.get("code") or 500),
                str(status.get("reason") or ""),
                str(status.get("message") or ""),
                status,
            )
        yield event


async def make_api_client(kubeconfig: str | None, qps: float, burst: int) -> ApiClient:
    """From a kubeconfig when given, else in-cluster (the Pod's ServiceAccount)."""
    endpoint, creds = http.from_kubeconfig(kubeconfig) if kubeconfig else http.in_cluster()
    return ApiClient(http.Transport(endpoint, creds), qps, burst)
