"""API client construction: kubeconfig or in-cluster, a client-side write rate limit, and request counting."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

from kubernetes_asyncio import client, config


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


def verb_of(method: str, query: Any) -> str:
    params = dict(query or ())
    if method == "GET":
        return "watch" if params.get("watch") else "get_or_list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


class CountingApiClient(client.ApiClient):
    """Counts every request by verb and rate-limits the ones that write."""

    def __init__(self, configuration: client.Configuration, qps: float, burst: int) -> None:
        super().__init__(configuration)
        self.requests: Counter[str] = Counter()
        self._writes = TokenBucket(qps, burst)

    async def request(  # type: ignore[override]
        self, method: str, url: str, query_params: Any = None, **kwargs: Any
    ) -> Any:
        verb = verb_of(method, query_params)
        if verb in ("create", "update", "patch", "delete"):
            await self._writes.take()
        self.requests[verb] += 1
        return await super().request(method, url, query_params=query_params, **kwargs)


async def make_api_client(kubeconfig: str | None, qps: float, burst: int) -> CountingApiClient:
    cfg = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return CountingApiClient(cfg, qps, burst)
