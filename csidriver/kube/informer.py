"""List once, then watch from that version: the local cache every read in a hot path comes from.

List with resourceVersion=0 (served from the API server's cache, paginated when it honours limit), watch with
bookmarks, relist only on 410 Gone, reconnect with jittered exponential backoff. Handlers run synchronously on
every change and must be quick (enqueue, resolve a future).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException

Obj = Mapping[str, Any]
Handler = Callable[[str, Obj | None, Obj | None], None]  # (name, old, new); new None = deleted
Lister = Callable[..., Awaitable[Any]]

log = logging.getLogger(__name__)


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


class Informer:
    def __init__(
        self,
        lister: Lister,
        *,
        what: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        watch_seconds: int = 600,
    ) -> None:
        self._lister = lister
        self._what = what
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["label_selector"] = label_selector
        if field_selector:
            self._selectors["field_selector"] = field_selector
        self._page = page_size
        self._watch_seconds = watch_seconds
        self._handlers: list[Handler] = []
        self.cache: dict[str, Obj] = {}
        self.synced = asyncio.Event()
        self._resume = ""  # resourceVersion of the last event or bookmark delivered by the current watch

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def _emit(self, name: str, old: Obj | None, new: Obj | None) -> None:
        for h in self._handlers:
            try:
                h(name, old, new)
            except Exception:
                log.exception("informer %s: handler failed for %s", self._what, name)

    async def _list(self) -> str:
        fresh: dict[str, Obj] = {}
        cont: str | None = None
        rv = ""
        while True:
            kwargs: dict[str, Any] = dict(self._selectors, limit=self._page)
            if cont:
                kwargs["_continue"] = cont
            else:
                kwargs["resource_version"] = "0"
            page = await self._lister(**kwargs)
            for obj in page.get("items") or ():
                fresh[_name(obj)] = obj
            meta = page.get("metadata") or {}
            rv = str(meta.get("resourceVersion", rv))
            cont = meta.get("continue")
            if not cont:
                break
        old = dict(self.cache)
        self.cache.clear()  # in place: readers hold a reference to this dict
        self.cache.update(fresh)
        for name, obj in fresh.items():
            prev = old.get(name)
            if prev is None or prev["metadata"].get("resourceVersion") != obj["metadata"].get("resourceVersion"):
                self._emit(name, prev, obj)
        for name in old.keys() - fresh.keys():
            self._emit(name, old[name], None)
        return rv

    def _apply(self, kind: str, obj: Obj) -> None:
        name = _name(obj)
        prev = self.cache.get(name)
        if kind == "DELETED":
            self.cache.pop(name, None)
            self._emit(name, prev, None)
        else:
            self.cache[name] = obj
            self._emit(name, prev, obj)

    async def _watch(self, rv: str) -> str:
        """Watch from `rv`; `self._resume` follows every event and bookmark delivered, so a watch that breaks is
        resumed from the last one, not from where it started (which would deliver its events twice, or expire)."""
        self._resume = rv
        w = watch.Watch()
        async with w.stream(
            self._lister,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_seconds + random.randint(0, self._watch_seconds // 5),
            _request_timeout=self._watch_seconds * 2,
            **self._selectors,
        ) as stream:
            async for event in stream:
                kind = event["type"]
                obj = event["raw_object"] if "raw_object" in event else event["object"]
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(kind, obj)
                self._resume = rv
        return rv

    async def run(self) -> None:
        """Runs until cancelled."""
        backoff = 0.2
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    rv = await self._list()
                    self.synced.set()
                rv = await self._watch(rv)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except ApiException as e:
                if e.status == 410:
                    log.info("informer %s: resource version expired, relisting", self._what)
                    rv = None
                    continue
                if rv is not None:
                    rv = self._resume
                log.warning("informer %s: API error %s, retrying in %.1fs", self._what, e.status, backoff)
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 30.0)
            except Exception as e:
                if rv is not None:
                    rv = self._resume  # the last version delivered before the connection broke
                log.warning("informer %s: %s, retrying in %.1fs", self._what, e, backoff)
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 30.0)
