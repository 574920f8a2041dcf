"""Informer: paginated list, watch from that version, bookmarks, relist on 410 Gone, reconnect without relisting.

The API client is an in-memory API server answering the calls the Informer makes: lists as pages, watches as JSON
lines decoded by the client's own event decoding (an ERROR event with a 410 raises as from a real server), so the
real event handling and 410 handling are in the loop. The test scripts what each call returns; a call with nothing
scripted waits, which is how a test knows the Informer has caught up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from csidriver.kube import client
from csidriver.kube.client import ApiError, Decode
from csidriver.kube.informer import Informer, Obj

_yield = asyncio.sleep  # the real one: the tests record and skip the Informer's sleeps

LABELS = "app=device-localpv"
FIELDS = "spec.ownerNodeID=n1"
SELECTORS = {"labelSelector": LABELS, "fieldSelector": FIELDS}
TARGET = "/apis/local.openebs.io/v1alpha2/namespaces/openebs/devicevolumes"


def obj(name: str, rv: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}, "spec": spec}


@dataclass
class Page:
    items: list[dict[str, Any]]
    rv: str = ""
    cont: str = ""


@dataclass
class Stream:
    """One watch response: its events (a dict is one JSON line, an exception breaks the connection), then EOF."""

    events: list[dict[str, Any] | BaseException]


def event(kind: str, o: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "object": o}


def bookmark(rv: str) -> dict[str, Any]:
    return event("BOOKMARK", {"kind": "DeviceVolume", "metadata": {"resourceVersion": rv}})


def gone() -> dict[str, Any]:
    status = {"kind": "Status", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old"}
    return event("ERROR", status)


async def _lines(events: list[dict[str, Any] | BaseException]) -> AsyncIterator[bytes]:
    for e in events:
        await _yield(0)
        if isinstance(e, BaseException):
            raise e
        yield json.dumps(e).encode()
    # then the server ends the watch (its timeout)


@dataclass
class FakeServer:
    script: list[Page | Stream | BaseException] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    _more: asyncio.Event = field(default_factory=asyncio.Event)
    _waiting: asyncio.Event = field(default_factory=asyncio.Event)

    def push(self, *steps: Page | Stream | BaseException) -> None:
        self.script.extend(steps)
        self._more.set()

    async def caught_up(self) -> None:
        """Until the Informer has consumed the whole script and waits in its next call."""
        await asyncio.wait_for(self._wait_idle(), 5)

    async def _wait_idle(self) -> None:
        while self.script or not self._waiting.is_set():
            await _yield(0)

    def lists(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if not c.get("watch")]

    def watches(self) -> list[dict[str, Any]]:
        return [c for c in self.calls if c.get("watch")]

    async def get(self, target: str, **kw: Any) -> Any:
        assert target == TARGET
        return await self._next(kw)

    @contextlib.asynccontextmanager
    async def watch(self, target: str, *, decode: Decode, **kw: Any) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        assert target == TARGET
        stream = await self._next(dict(kw, watch=True))
        yield client._events(_lines(stream.events), decode)

    async def _next(self, kw: dict[str, Any]) -> Any:
        self.calls.append(kw)
        while not self.script:
            self._more.clear()
            self._waiting.set()
            await self._more.wait()
        self._waiting.clear()
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if kw.get("watch"):
            if not isinstance(step, Stream):
                self.mismatches.append(f"watch call {kw} answered with {step}")
                raise AssertionError("script out of step")
            return step
        if not isinstance(step, Page):
            self.mismatches.append(f"list call {kw} answered with {step}")
            raise AssertionError("script out of step")
        meta: dict[str, Any] = {"resourceVersion": step.rv}
        if step.cont:
            meta["continue"] = step.cont
        return {"kind": "DeviceVolumeList", "metadata": meta, "items": step.items}


@dataclass
class Seen:
    calls: list[tuple[str, Obj | None, Obj | None]] = field(default_factory=list)
    cache_at_call: list[Obj | None] = field(default_factory=list)

    def take(self) -> list[tuple[str, Obj | None, Obj | None]]:
        out, self.calls = self.calls, []
        return out


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The Informer's backoff sleeps, recorded and made instant."""
    slept: list[float] = []
    real = asyncio.sleep

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await real(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)  # the one csidriver.kube.informer calls
    return slept


@contextlib.asynccontextmanager
async def running(
    *, keep_objects: bool = True, list_from_cache: bool = True
) -> AsyncIterator[tuple[FakeServer, Informer, Seen]]:
    """An Informer with selectors and pages of two, on a fake server, running until the block ends."""
    server = FakeServer()
    inf = Informer(
        server,
        TARGET,
        what="devicevolumes",
        label_selector=LABELS,
        field_selector=FIELDS,
        page_size=2,
        keep_objects=keep_objects,
        list_from_cache=list_from_cache,
    )
    seen = Seen()

    def handler(name: str, old: Obj | None, new: Obj | None) -> None:
        seen.calls.append((name, old, new))
        seen.cache_at_call.append(inf.cache.get(name))

    inf.subscribe(handler)
    task = asyncio.create_task(inf.run())
    try:
        yield server, inf, seen
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert server.mismatches == []


async def test_list_watch_bookmark_gone_and_reconnect(sleeps: list[float]) -> None:
    async with running() as (server, inf, seen):
        cache = inf.cache
        a1, b2, c3 = obj("a", "1"), obj("b", "2"), obj("c", "3")

        # The list is paginated: nothing is cached, handled or synced before its last page.
        server.push(Page([a1, b2], rv="", cont="token-1"))
        await server.caught_up()
        assert not inf.synced.is_set() and inf.cache == {} and seen.calls == []
        server.push(Page([c3], rv="10"))
        await server.caught_up()
        assert inf.synced.is_set()
        assert inf.cache == {"a": a1, "b": b2, "c": c3}
        assert seen.take() == [("a", None, a1), ("b", None, b2), ("c", None, c3)]
        first, second = server.lists()
        assert first == dict(SELECTORS, limit=2, resourceVersion="0")  # from the API server's cache
        assert second == {**SELECTORS, "limit": 2, "continue": "token-1"}  # a continue carries no resourceVersion
        watch = server.watches()[0]
        assert watch["resourceVersion"] == "10" and watch["allowWatchBookmarks"] is True
        assert watch["labelSelector"] == LABELS and watch["fieldSelector"] == FIELDS
        assert 600 <= watch["timeoutSeconds"] <= 720

        # Watch events change the cache (before the handlers run); a bookmark only moves the version.
        d11, a12 = obj("d", "11"), obj("a", "12", size=2)
        b13 = obj("b", "13")
        server.push(Stream([event("ADDED", d11), event("MODIFIED", a12), event("DELETED", b13), bookmark("20")]))
        await server.caught_up()
        assert seen.take() == [("d", None, d11), ("a", a1, a12), ("b", b2, None)]
        assert seen.cache_at_call[-3:] == [d11, a12, None]
        assert inf.cache == {"a": a12, "c": c3, "d": d11}
        assert server.watches()[-1]["resourceVersion"] == "20", "the watch after a bookmark did not resume from it"
        assert len(server.lists()) == 2 and sleeps == []  # a watch the server ended is simply resumed

        # 410 Gone: relist at once; the difference comes out as updates, additions and deletions.
        c30, e31 = obj("c", "30", size=3), obj("e", "31")
        server.push(Stream([gone()]), Page([a12, c30, e31], rv="40"))
        await server.caught_up()
        assert len(server.lists()) == 3 and server.lists()[-1] == dict(SELECTORS, limit=2, resourceVersion="0")
        assert sorted(seen.take(), key=lambda c: c[0]) == [("c", c3, c30), ("d", d11, None), ("e", None, e31)]
        assert inf.cache == {"a": a12, "c": c30, "e": e31}
        assert inf.cache is cache, "readers hold the cache dict: a relist must update it in place"
        assert server.watches()[-1]["resourceVersion"] == "40"
        assert sleeps == []

        # A broken connection: back off, then watch again from where we were, with no relist.
        server.push(Stream([ConnectionResetError("connection reset by peer")]))
        await server.caught_up()
        assert len(server.lists()) == 3
        assert server.watches()[-1]["resourceVersion"] == "40"
        assert len(sleeps) == 1 and 0.2 <= sleeps[0] <= 0.4
        assert seen.take() == []

        for call in server.calls:
            assert call["labelSelector"] == LABELS and call["fieldSelector"] == FIELDS, call


async def test_errors_back_off_doubling_and_a_good_watch_resets_it(sleeps: list[float]) -> None:
    async with running() as (server, inf, _seen):
        boom = ApiError(500, "InternalError", "etcd is down")
        server.push(boom, boom, ConnectionRefusedError("no route"), Page([obj("a", "1")], rv="5"))
        await server.caught_up()
        assert inf.synced.is_set() and list(inf.cache) == ["a"]
        assert len(server.lists()) == 4  # the version is unknown until a list succeeds: each retry lists
        assert len(sleeps) == 3
        for slept, base in zip(sleeps, [0.2, 0.4, 0.8], strict=True):
            assert base <= slept <= 2 * base  # doubling, with up to as much again of jitter
        # A watch that ends normally resets the backoff: the next failure waits the first step again.
        server.push(Stream([]), Stream([ConnectionResetError("reset")]))
        await server.caught_up()
        assert len(sleeps) == 4 and 0.2 <= sleeps[3] <= 0.4
        assert len(server.lists()) == 4


async def test_a_410_error_event_on_the_first_watch_relists_without_backoff(sleeps: list[float]) -> None:
    async with running() as (server, inf, seen):
        server.push(Page([obj("a", "1")], rv="5"), Stream([event("ADDED", obj("b", "6")), gone()]))
        server.push(Page([obj("b", "6")], rv="7"))
        await server.caught_up()
        assert seen.take() == [("a", None, obj("a", "1")), ("b", None, obj("b", "6")), ("a", obj("a", "1"), None)]
        assert inf.cache == {"b": obj("b", "6")}
        assert sleeps == []
        assert server.watches()[-1]["resourceVersion"] == "7"


async def test_a_failing_handler_does_not_stop_the_others_or_the_informer(sleeps: list[float]) -> None:
    async with running() as (server, inf, seen):
        got: list[str] = []

        def broken(name: str, old: Obj | None, new: Obj | None) -> None:
            raise RuntimeError("handler bug")

        inf.subscribe(broken)
        inf.subscribe(lambda name, old, new: got.append(name))
        server.push(Page([obj("a", "1")], rv="1"), Stream([event("ADDED", obj("b", "2"))]))
        await server.caught_up()
        assert got == ["a", "b"] and [c[0] for c in seen.take()] == ["a", "b"]
        assert sleeps == [] and set(inf.cache) == {"a", "b"}


async def test_a_broken_watch_resumes_from_the_last_version_it_delivered(sleeps: list[float]) -> None:
    async with running() as (server, _inf, _seen):
        server.push(Page([], rv="10"), Stream([event("ADDED", obj("a", "11")), bookmark("15"), OSError("reset")]))
        await server.caught_up()
        assert [w["resourceVersion"] for w in server.watches()] == ["10", "15"]


async def test_the_cache_keeps_no_managed_fields(sleeps: list[float]) -> None:
    managed = [{"manager": "agent", "operation": "Update", "fieldsV1": {"f:status": {}}}]
    a = {"metadata": {"name": "a", "resourceVersion": "1", "managedFields": managed}, "spec": {}}
    b = {"metadata": {"name": "b", "resourceVersion": "2", "managedFields": managed}, "spec": {"x": 1}}
    async with running() as (server, inf, seen):
        server.push(Page([a], rv="1"), Stream([event("ADDED", b)]))
        await server.caught_up()
        assert inf.cache == {"a": obj("a", "1"), "b": obj("b", "2", x=1)}
        assert all("managedFields" not in new["metadata"] for _, _, new in seen.take() if new is not None)


async def test_an_informer_keeping_no_objects_delivers_page_by_page_and_only_what_changed(sleeps: list[float]) -> None:
    """The controller's informers keep no objects (ClusterState keeps its own compact form): only each object's
    version is remembered, handlers get old=None, a list's pages are delivered as they come, and a relist delivers
    what changed and the deletions, after its last page."""
    async with running(keep_objects=False, list_from_cache=False) as (server, inf, seen):
        a1, b2, c3 = obj("a", "1"), obj("b", "2"), obj("c", "3")
        # A server without streaming lists (v1.33 by default) refuses one as invalid: pages from then on.
        server.push(ApiError(422, "Invalid", "sendInitialEvents is forbidden"), Page([a1, b2], rv="", cont="token-1"))
        await server.caught_up()
        assert seen.take() == [("a", None, a1), ("b", None, b2)]
        assert not inf.synced.is_set()
        server.push(Page([c3], rv="10"))
        await server.caught_up()
        assert inf.synced.is_set() and seen.take() == [("c", None, c3)]
        assert inf.cache == {} and seen.cache_at_call == [None, None, None]
        # Not from the API server's cache, which would answer every object at once whatever the limit: a
        # consistent list in pages.
        assert server.lists() == [dict(SELECTORS, limit=2), dict(SELECTORS, limit=2, **{"continue": "token-1"})]
        assert server.watches()[0]["sendInitialEvents"] == "true" and sleeps == []

        a11 = obj("a", "11", size=2)
        server.push(Stream([event("MODIFIED", a11), event("DELETED", obj("b", "12")), bookmark("20")]))
        await server.caught_up()
        assert seen.take() == [("a", None, a11), ("b", None, None)]

        # A relist after 410: a (unchanged) is not delivered again, c changed, d is new; nothing was deleted.
        c30, d31 = obj("c", "30"), obj("d", "31")
        server.push(Stream([gone()]), Page([a11, c30], rv="", cont="token-2"))
        await server.caught_up()
        assert seen.take() == [("c", None, c30)]
        server.push(Page([d31], rv="40"))
        await server.caught_up()
        assert seen.take() == [("d", None, d31)]

        # Another: the deletions of what the list lacks come after its last page.
        server.push(Stream([gone()]), Page([d31], rv="50"))
        await server.caught_up()
        assert sorted(seen.take(), key=lambda c: c[0]) == [("a", None, None), ("c", None, None)]
        assert inf.cache == {} and server.watches()[-1]["resourceVersion"] == "50"
        assert sleeps == []


def end_of_list(rv: str) -> dict[str, Any]:
    meta = {"resourceVersion": rv, "annotations": {"k8s.io/initial-events-end": "true"}}
    return event("BOOKMARK", {"kind": "DeviceVolume", "metadata": meta})


async def test_a_streaming_list_then_the_same_watch_goes_on(sleeps: list[float]) -> None:
    """Where the server offers it, an informer that does not list from the cache lists by one watch with
    sendInitialEvents: its ADDED events are the collection, a bookmark annotated initial-events-end ends the list
    (synced, deletions of what it lacked), and the same watch goes on."""
    async with running(keep_objects=False, list_from_cache=False) as (server, inf, seen):
        a1, b2 = obj("a", "1"), obj("b", "2")
        server.push(Stream([event("ADDED", a1), event("ADDED", b2)]))
        await server.caught_up()
        # The stream ended before its bookmark: nothing is synced, the next try streams again after a backoff.
        assert not inf.synced.is_set() and seen.take() == [("a", None, a1), ("b", None, b2)]
        assert len(sleeps) == 1

        a11 = obj("a", "11", size=2)
        server.push(Stream([event("ADDED", a1), event("ADDED", b2), end_of_list("10"), event("MODIFIED", a11)]))
        await server.caught_up()
        assert inf.synced.is_set()
        assert seen.take() == [("a", None, a11)]  # a and b unchanged since the first try: not delivered again
        first = server.watches()[0]
        assert first["sendInitialEvents"] == "true" and first["resourceVersionMatch"] == "NotOlderThan"
        assert "resourceVersion" not in first and first["allowWatchBookmarks"] is True
        assert first["labelSelector"] == LABELS and first["fieldSelector"] == FIELDS
        assert server.watches()[-1]["resourceVersion"] == "11", "the watch did not resume after the streamed list"
        assert server.lists() == []

        # 410 Gone: stream again; what it lacks is deleted once it ends, what did not change is not delivered.
        c3 = obj("c", "30")
        server.push(Stream([gone()]), Stream([event("ADDED", a11), event("ADDED", c3), end_of_list("31")]))
        await server.caught_up()
        assert seen.take() == [("c", None, c3), ("b", None, None)]
        assert server.watches()[-1]["resourceVersion"] == "31" and "sendInitialEvents" in server.watches()[-2]
        assert server.lists() == [] and inf.cache == {}
