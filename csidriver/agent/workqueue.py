"""A keyed work queue: deduplicated, one in-flight reconcile per key, per-key exponential backoff."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Reconcile = Callable[[str], Awaitable[float | None]]  # returns seconds to requeue after, or None when done


class Retry(Exception):
    """A failure worth retrying with backoff."""


@dataclass(frozen=True)
class Item:
    """The key a worker is reconciling: when it was first added since its last run began, and when a worker took it
    (time.monotonic()). Read by a reconcile (current_item) to report where a key's time went."""

    key: str
    added: float
    started: float


# Each worker is its own task with its own context: the value is the item that task is running.
_CURRENT: contextvars.ContextVar[Item | None] = contextvars.ContextVar("workqueue_item", default=None)


def current_item() -> Item | None:
    """The item the calling task's worker is reconciling, or None outside a work queue."""
    return _CURRENT.get()


class WorkQueue:
    def __init__(
        self, reconcile: Reconcile, workers: int, name: str, on_idle: Callable[[], None] | None = None
    ) -> None:
        """`on_idle`: called each time the last key running finishes with none queued (a burst of work is over)."""
        self._reconcile = reconcile
        self._on_idle = on_idle
        self._workers = workers
        self._name = name
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._running: set[str] = set()
        self._dirty: set[str] = set()  # added while running: run again afterwards
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._added: dict[str, float] = {}  # key -> when it was first added since its last run began
        self.retries = 0

    def depth(self) -> int:
        return len(self._queued)

    def add(self, key: str) -> None:
        self._added.setdefault(key, time.monotonic())
        if key in self._running:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def wake(self, key: str) -> None:
        """Run `key` now even if it waits out a backoff: what it waited for has just happened."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.add(key)

    def add_after(self, key: str, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        self._timers[key] = asyncio.get_running_loop().call_later(delay, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            self._running.add(key)
            now = time.monotonic()
            token = _CURRENT.set(Item(key, self._added.pop(key, now), now))
            try:
                again = await self._reconcile(key)
                self._failures.pop(key, None)
                if again is not None:
                    self.add_after(key, again)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                n = self._failures.get(key, 0) + 1
                self._failures[key] = n
                self.retries += 1
                delay = min(0.05 * 2**n, 60.0) * (1 + random.random() / 4)
                level = logging.INFO if isinstance(e, Retry) else logging.WARNING
                log.log(
                    level,
                    "%s %s: attempt %d failed (%s); retrying in %.2fs",
                    self._name,
                    key,
                    n,
                    e,
                    delay,
                    exc_info=not isinstance(e, Retry),
                )
                self.add_after(key, delay)
            finally:
                _CURRENT.reset(token)
                self._running.discard(key)
                if key in self._dirty:
                    self._dirty.discard(key)
                    self.add(key)
                if self._on_idle is not None and not self._running and not self._queued:
                    self._on_idle()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for _ in range(self._workers):
                tg.create_task(self._worker())
