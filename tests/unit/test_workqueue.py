"""WorkQueue: one reconcile at a time per key, deduplication, per-key backoff and its reset, requeue-after, retries.

The queue's timers are the event loop's, so these tests run it on a loop whose clock is virtual: when nothing is
ready the clock jumps straight to the next timer instead of waiting. A 60 s backoff takes no real time and the
delays between runs are exact. (test_workqueue_wake.py covers wake() on a real clock.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import selectors
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest

from csidriver.agent.app import TrimWhenQuiet
from csidriver.agent.workqueue import Retry, WorkQueue


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; a wait it would have made advances the loop's virtual clock instead."""

    def __init__(self, advance: Callable[[float], None]) -> None:
        super().__init__()
        self._advance = advance

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:  # no timer at all: only a real event can come
            return super().select(None)
        self._advance(timeout)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_JumpingSelector(self._jump))

    def _jump(self, seconds: float) -> None:
        self._now += seconds

    def time(self) -> float:
        return self._now


def on_virtual_clock(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    with asyncio.Runner(loop_factory=VirtualClockLoop) as runner:
        runner.run(asyncio.wait_for(body(), 1e6))  # virtual seconds: a hang fails instead of blocking


class Recorder:
    """A reconcile that records when each key ran and how many ran at once, with a scripted outcome per run."""

    def __init__(self, outcomes: dict[str, list[float | Exception | None]] | None = None) -> None:
        self.outcomes = outcomes or {}
        self.runs: list[tuple[str, float]] = []
        self.running: set[str] = set()
        self.overlaps: list[str] = []  # keys that started while already running
        self.concurrent = 0
        self.most_concurrent = 0
        self.gates: dict[str, asyncio.Event] = {}  # a key with a gate waits for it while running
        self.started = asyncio.Event()

    def times(self, key: str) -> list[float]:
        return [t for k, t in self.runs if k == key]

    async def __call__(self, key: str) -> float | None:
        if key in self.running:
            self.overlaps.append(key)
        self.running.add(key)
        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        self.runs.append((key, asyncio.get_running_loop().time()))
        self.started.set()
        try:
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            script = self.outcomes.get(key) or []
            outcome = script.pop(0) if script else None
            if isinstance(outcome, Exception):
                raise outcome
            return outcome
        finally:
            self.concurrent -= 1
            self.running.discard(key)


async def until(rec: Recorder, cond: Callable[[], bool], limit: float = 3600) -> None:
    """Let the queue work (on the virtual clock) until `cond` holds, checking it whenever a reconcile starts."""

    async def wait() -> None:
        while not cond():
            rec.started.clear()
            await rec.started.wait()

    await asyncio.wait_for(wait(), limit)


async def settle(seconds: float = 1000.0) -> None:
    """Let everything due within `seconds` (virtual) run."""
    await asyncio.sleep(seconds)


def with_queue(
    reconcile: Recorder, workers: int, body: Callable[[WorkQueue], Awaitable[None]]
) -> Callable[[], Coroutine[Any, Any, None]]:
    async def run() -> None:
        queue = WorkQueue(reconcile, workers, "test")
        task = asyncio.create_task(queue.run())
        try:
            await body(queue)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    return run


def test_adds_before_a_worker_takes_the_key_coalesce() -> None:
    rec = Recorder()

    async def body(queue: WorkQueue) -> None:
        for _ in range(3):
            queue.add("a")
        queue.add("b")
        assert queue.depth() == 2
        await settle()
        assert sorted(k for k, _ in rec.runs) == ["a", "b"]
        assert queue.depth() == 0
        assert queue.retries == 0

    on_virtual_clock(with_queue(rec, 4, body))


def test_a_key_never_runs_twice_at_once_and_an_add_while_running_runs_it_once_more() -> None:
    rec = Recorder()
    gate = rec.gates["a"] = asyncio.Event()

    async def body(queue: WorkQueue) -> None:
        queue.add("a")
        await until(rec, lambda: "a" in rec.running)
        for _ in range(5):  # every add while it runs: one more run afterwards, not five
            queue.add("a")
        assert queue.depth() == 0, "a running key is not queued a second time"
        await settle(10)
        assert rec.times("a") == [0.0], "the key ran again while its first run had not finished"
        del rec.gates["a"]
        gate.set()
        await settle()
        assert len(rec.times("a")) == 2
        assert rec.overlaps == []

    on_virtual_clock(with_queue(rec, 4, body))


def test_different_keys_run_in_parallel_up_to_the_worker_count() -> None:
    rec = Recorder()
    gate = asyncio.Event()
    for k in "abc":
        rec.gates[k] = gate

    async def body(queue: WorkQueue) -> None:
        for k in "abc":
            queue.add(k)
        await until(rec, lambda: len(rec.running) == 2)
        await settle(10)
        assert len(rec.running) == 2, "two workers ran more than two keys at once"
        assert queue.depth() == 1
        gate.set()
        await settle()
        assert sorted(k for k, _ in rec.runs) == ["a", "b", "c"]
        assert rec.most_concurrent == 2

    on_virtual_clock(with_queue(rec, 2, body))


def test_failures_back_off_exponentially_per_key_and_count_as_retries() -> None:
    fails = 12
    rec = Recorder({"a": [Retry("not yet")] * fails, "b": [None]})

    async def body(queue: WorkQueue) -> None:
        queue.add("a")
        await until(rec, lambda: len(rec.times("a")) == fails + 1, 3600)
        t = rec.times("a")
        delays = [b - a for a, b in itertools.pairwise(t)]
        for n, delay in enumerate(delays, start=1):
            base = min(0.05 * 2**n, 60.0)  # 0.1 s, 0.2 s, ... doubling up to a minute
            assert base <= delay <= base * 1.25 + 1e-6, f"failure {n}: waited {delay:.3f}s, want {base}s + jitter"
        assert queue.retries == fails
        # Another key is not held back by a's backoff.
        queue.add("b")
        await settle(0.01)
        assert rec.times("b") != []
        assert queue.retries == fails

    on_virtual_clock(with_queue(rec, 1, body))


def test_any_exception_backs_off_like_retry_and_logs_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    rec = Recorder({"a": [ValueError("bug"), Retry("expected"), None]})

    async def body(queue: WorkQueue) -> None:
        with caplog.at_level(logging.INFO, logger="csidriver.agent.workqueue"):
            queue.add("a")
            await settle()
        t = rec.times("a")
        assert len(t) == 3
        assert 0.1 <= t[1] - t[0] <= 0.125 + 1e-6
        assert 0.2 <= t[2] - t[1] <= 0.25 + 1e-6
        assert queue.retries == 2
        levels = [(r.levelno, bool(r.exc_info)) for r in caplog.records if "attempt" in r.getMessage()]
        assert levels == [(logging.WARNING, True), (logging.INFO, False)]  # a Retry is expected: no traceback

    on_virtual_clock(with_queue(rec, 1, body))


def test_success_resets_the_backoff() -> None:
    rec = Recorder({"a": [Retry("1"), Retry("2"), Retry("3"), 5.0, Retry("4"), None]})

    async def body(queue: WorkQueue) -> None:
        queue.add("a")
        await settle()
        t = rec.times("a")
        assert len(t) == 6
        assert t[3] - t[2] >= 0.4  # third failure: 0.4 s
        assert t[4] - t[3] == pytest.approx(5.0)  # the success asked to run again in 5 s
        assert 0.1 <= t[5] - t[4] <= 0.125 + 1e-6, "the failure after a success backed off as if it were the fourth"
        assert queue.retries == 4

    on_virtual_clock(with_queue(rec, 1, body))


def test_backoff_is_per_key() -> None:
    rec = Recorder({"a": [Retry("a")] * 5, "b": [Retry("b"), None]})

    async def body(queue: WorkQueue) -> None:
        queue.add("a")
        await until(rec, lambda: len(rec.times("a")) == 5)
        queue.add("b")
        await settle()
        tb = rec.times("b")
        assert 0.1 <= tb[1] - tb[0] <= 0.125 + 1e-6, "b's first failure inherited a's backoff"

    on_virtual_clock(with_queue(rec, 2, body))


def test_requeue_after_runs_the_key_again_then_stops_when_done() -> None:
    rec = Recorder({"a": [30.0, 2.5, None]})

    async def body(queue: WorkQueue) -> None:
        queue.add("a")
        await settle(10_000)
        assert rec.times("a") == pytest.approx([0.0, 30.0, 32.5])
        assert queue.retries == 0

    on_virtual_clock(with_queue(rec, 1, body))


def test_add_during_a_requeue_wait_runs_now_and_wake_replaces_the_wait() -> None:
    rec = Recorder({"a": [100.0, None, 100.0, None]})

    async def body(queue: WorkQueue) -> None:
        loop = asyncio.get_running_loop()
        queue.add("a")
        await settle(1)
        assert len(rec.times("a")) == 1
        queue.add("a")  # an event for the key does not wait for its requeue timer
        await settle(1)
        assert len(rec.times("a")) == 2
        queue.add("a")
        await settle(1)
        assert len(rec.times("a")) == 3  # third run asks for another 100 s
        woken = loop.time()
        queue.wake("a")  # cancels that wait: one run now and none 100 s later
        await settle(1000)
        assert rec.times("a")[3] == pytest.approx(woken)
        assert len(rec.times("a")) == 4

    on_virtual_clock(with_queue(rec, 1, body))


def test_wake_ends_a_long_backoff_at_once() -> None:
    rec = Recorder({"a": [Retry("x")] * 10 + [None]})

    async def body(queue: WorkQueue) -> None:
        loop = asyncio.get_running_loop()
        queue.add("a")
        await until(rec, lambda: len(rec.times("a")) == 10)  # the tenth failure backs off ~51 s
        await settle(1)
        woken = loop.time()
        queue.wake("a")
        await settle(0.01)
        assert len(rec.times("a")) == 11
        assert rec.times("a")[10] == pytest.approx(woken)
        await settle(1000)
        assert len(rec.times("a")) == 11, "the cancelled backoff timer still fired"

    on_virtual_clock(with_queue(rec, 1, body))


def test_cancelling_run_stops_the_workers_mid_reconcile() -> None:
    rec = Recorder()
    rec.gates["a"] = asyncio.Event()  # never set

    async def body() -> None:
        queue = WorkQueue(rec, 2, "test")
        task = asyncio.create_task(queue.run())
        queue.add("a")
        await until(rec, lambda: "a" in rec.running)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rec.running == set()
        assert queue.retries == 0, "cancellation is not a failure"

    on_virtual_clock(body)


def test_on_idle_is_called_when_a_burst_is_over_not_while_keys_run_or_wait() -> None:
    rec = Recorder()
    gates = {k: asyncio.Event() for k in "abc"}
    rec.gates.update(gates)
    idle: list[tuple[float, set[str]]] = []

    async def body() -> None:
        loop = asyncio.get_running_loop()
        queue = WorkQueue(rec, 2, "test", on_idle=lambda: idle.append((loop.time(), set(rec.running))))
        task = asyncio.create_task(queue.run())
        try:
            for k in "abc":
                queue.add(k)
            await until(rec, lambda: rec.running == {"a", "b"})
            gates["a"].set()  # a ends, c is still queued
            await until(rec, lambda: rec.running == {"b", "c"})
            gates["b"].set()  # b ends while c runs
            await settle(1)
            assert idle == []
            gates["c"].set()  # the last one
            await settle(1)
            assert len(idle) == 1 and idle[0][1] == set()
            rec.gates.clear()
            queue.add("d")
            await settle(1)
            assert len(idle) == 2, "each burst, however small, ends with one call"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    on_virtual_clock(body)


def test_trim_when_quiet_trims_once_after_the_last_of_several_calls() -> None:
    trims: list[float] = []

    async def body() -> None:
        loop = asyncio.get_running_loop()
        quiet = TrimWhenQuiet(0.5, lambda: trims.append(loop.time()))
        start = loop.time()
        for _ in range(3):
            quiet()
            await asyncio.sleep(0.3)
        assert trims == []
        await settle(5)
        assert trims == [pytest.approx(start + 0.6 + 0.5)]

    on_virtual_clock(body)
