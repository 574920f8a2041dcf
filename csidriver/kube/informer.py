"""List once, then watch from that version: the local cache every read in a hot path comes from.

List with resourceVersion=0 (served whole from the API server's watch cache, which ignores limit there), or, for a
big collection read unfiltered (list_from_cache=False), never one response of every object: a streaming list (a watch
with sendInitialEvents, served from the cache, one object per event, where the server offers it: v1.34 on, and 1.32)
or else a consistent list in pages; watch with bookmarks, relist only on 410 Gone, reconnect
with jittered exponential backoff. Handlers run synchronously on every change and must be quick (enqueue, resolve a
future).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from csidriver.kube.client import Decode
from csidriver.kube.http import ApiError

Obj = Mapping[str, Any]
Handler = Callable[[str, Obj | None, Obj | None], None]  # (name, old, new); new None = deleted


class Source(Protocol):
    """What the Informer needs of the API client (csidriver.kube.client.ApiClient)."""

    async def get(self, target: str, **params: Any) -> dict[str, Any]: ...

    def watch(
        self, target: str, *, decode: Decode, **params: Any
    ) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]: ...


log = logging.getLogger(__name__)
INITIAL_EVENTS_END = "k8s.io/initial-events-end"  # the annotation of the bookmark that ends a streaming list


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _slim(obj: Obj) -> Obj:
    """The object without metadata.managedFields, which nothing here reads and which can be most of an object's
    size (one entry per writer). The cache holds every object of its kind: this is most of the process's memory
    per object. An update sent without the field leaves the server's record of it as it was."""
    meta = obj.get("metadata")
    if not meta or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


class Informer:
    def __init__(
        self,
        api: Source,
        target: str,
        *,
        what: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        page_size: int = 500,
        watch_seconds: int = 600,
        keep_objects: bool = True,
        list_from_cache: bool = True,
        decode: Decode = json.loads,
    ) -> None:
        """keep_objects=False: the informer remembers only each object's resourceVersion (for its consumer, which
        keeps its own compact form); `cache` stays empty and handlers always get old=None. `decode`: how each line
        of its watches is read (csidriver.kube.wire for a whole collection read by the controller)."""
        self._api = api
        self._target = target  # the collection's path
        self._what = what
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["labelSelector"] = label_selector
        if field_selector:
            self._selectors["fieldSelector"] = field_selector
        self._page = page_size
        self._watch_seconds = watch_seconds
        self._handlers: list[Handler] = []
        self.cache: dict[str, Obj] = {}
        self._keep = keep_objects
        self._from_cache = list_from_cache
        self._streaming = not list_from_cache  # until the server refuses a streaming list
        self._versions: dict[str, str] = {}  # name -> resourceVersion, when objects are not kept
        self.synced = asyncio.Event()
        self._resume = ""  # resourceVersion of the last event or bookmark delivered by the current watch
        self._decode = decode

    def subscribe(self, handler: Handler) -> None:
        self._handlers.append(handler)

    def _emit(self, name: str, old: Obj | None, new: Obj | None) -> None:
        for h in self._handlers:
            try:
                h(name, old, new)
            except Exception:
                log.exception("informer %s: handler failed for %s", self._what, name)

    async def _list(self) -> str:
        """List every page, then deliver what changed against what was known: each object whose version differs,
        and a deletion for each known object the list no longer holds. An informer that keeps objects delivers once
        the last page is in; one that keeps none delivers each page as it comes, so it never holds more than one page
        of objects (deletions still wait for the last page)."""
        kept: list[Obj] = []
        seen: set[str] = set()
        cont: str | None = None
        rv = ""
        while True:
            params: dict[str, Any] = dict(self._selectors, limit=self._page)
            if cont:
                params["continue"] = cont
            elif self._from_cache:
                params["resourceVersion"] = "0"
            page = await self._api.get(self._target, **params)
            items = [_slim(obj) for obj in page.get("items") or ()]
            meta = page.get("metadata") or {}
            rv = str(meta.get("resourceVersion", rv))
            cont = meta.get("continue")
            if self._keep:
                kept.extend(items)
            else:
                for obj in items:
                    self._deliver(obj, seen)
            if not cont:
                break
        for obj in kept:
            self._deliver(obj, seen)
        self._forget_unseen(seen)
        return rv

    def _deliver(self, obj: Obj, seen: set[str]) -> None:
        """One object of a list (paged or streamed), delivered if its version differs from the one known."""
        name = _name(obj)
        seen.add(name)
        version = str(obj["metadata"].get("resourceVersion", ""))
        if self._keep:
            prev = self.cache.get(name)
            if prev is None or prev["metadata"].get("resourceVersion") != version:
                self.cache[name] = obj
                self._emit(name, prev, obj)
        elif self._versions.get(name) != version:
            self._versions[name] = version
            self._emit(name, None, obj)

    def _forget_unseen(self, seen: set[str]) -> None:
        """After a whole list: a deletion for every known object it did not hold."""
        if self._keep:
            for name in [name for name in self.cache if name not in seen]:
                self._emit(name, self.cache.pop(name), None)
        else:
            for name in [name for name in self._versions if name not in seen]:
                del self._versions[name]
                self._emit(name, None, None)

    def _watching(self, **params: str) -> AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]:
        """A watch of the collection with bookmarks, which the server ends after about watch_seconds (jittered, so
        informers started together do not reconnect together)."""
        timeout = self._watch_seconds + random.randint(0, self._watch_seconds // 5)
        return self._api.watch(
            self._target,
            allowWatchBookmarks=True,
            timeoutSeconds=timeout,
            **params,
            **self._selectors,
            decode=self._decode,
        )

    async def _stream(self) -> str:
        """A streaming list: one watch (sendInitialEvents, resourceVersionMatch=NotOlderThan, no version: a
        consistent read) whose ADDED events are the collection as it is, ended by a bookmark annotated
        initial-events-end; then it goes on as any watch. Objects come one per event, so no response holds them all.
        A stream that ends before its bookmark raises (the next try streams again; what was delivered is not
        delivered twice unless it changed)."""
        seen: set[str] = set()
        listed = False
        rv = ""
        self._resume = ""
        async with (
            asyncio.timeout(self._watch_seconds * 2),
            self._watching(sendInitialEvents="true", resourceVersionMatch="NotOlderThan") as stream,
        ):
            async for event in stream:
                kind = event["type"]
                obj = event["object"]
                meta = obj.get("metadata") or {}
                rv = meta.get("resourceVersion", rv)
                if listed:
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._apply(kind, obj)
                    self._resume = rv
                elif kind == "BOOKMARK":
                    if (meta.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true":
                        self._forget_unseen(seen)
                        listed = True
                        self.synced.set()
                        self._resume = rv
                elif kind in ("ADDED", "MODIFIED"):
                    self._deliver(_slim(obj), seen)
                elif kind == "DELETED":
                    seen.discard(_name(obj))
                    self._apply(kind, obj)
        if not listed:
            raise ConnectionError("the streaming list ended before its last object")
        return rv

    def _apply(self, kind: str, obj: Obj) -> None:
        obj = _slim(obj)
        name = _name(obj)
        if not self._keep:
            if kind == "DELETED":
                self._versions.pop(name, None)
                self._emit(name, None, None)
            else:
                self._versions[name] = str(obj["metadata"].get("resourceVersion", ""))
                self._emit(name, None, obj)
            return
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
        async with (
            asyncio.timeout(self._watch_seconds * 2),
            self._watching(resourceVersion=rv) as stream,
        ):
            async for event in stream:
                kind = event["type"]
                obj = event["object"]
                rv = obj.get("metadata", {}).get("resourceVersion", rv)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(kind, obj)
                self._resume = rv
        return rv

    async def _sync(self) -> str:
        """The whole collection, as a streaming list while the server offers one, else in pages; its version."""
        if self._streaming:
            try:
                return await self._stream()
            except ApiError as e:
                if e.status not in (400, 422) or self._resume:
                    raise
                # v1.33 (its WatchList gate off by default) and servers before 1.32 refuse it as invalid
                log.info("informer %s: no streaming list here (%s), listing in pages", self._what, e.status)
                self._streaming = False
        rv = await self._list()
        self.synced.set()
        return rv

    async def run(self) -> None:
        """Runs until cancelled."""
        backoff = 0.2
        rv: str | None = None
        while True:
            try:
                if rv is None:
                    rv = await self._sync()
                rv = await self._watch(rv)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except ApiError as e:
                if e.status == 410:
                    log.info("informer %s: resource version expired, relisting", self._what)
                    rv = None
                    self._resume = ""
                    continue
                if rv is not None or self._resume:
                    rv = self._resume
                log.warning("informer %s: API error %s, retrying in %.1fs", self._what, e.status, backoff)
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 30.0)
            except Exception as e:
                if rv is not None or self._resume:
                    rv = self._resume  # the last version delivered before the connection broke
                log.warning("informer %s: %s, retrying in %.1fs", self._what, e, backoff)
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, 30.0)
