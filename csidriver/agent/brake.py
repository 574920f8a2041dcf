"""A brake on destruction: at most N partition deletions per node in any sliding window.

Beyond the limit the agent does not delete: the reconcile is requeued until the window has room again, an Event
says so once per pause, and a counter records every deferral. A bug or a bad script therefore cannot wipe a
node's volumes faster than the configured rate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class DeletionBrake:
    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._stamps: deque[float] = deque()
        self.deferred = 0
        self.engaged = False

    def _trim(self, now: float) -> None:
        while self._stamps and self._stamps[0] <= now - self.window:
            self._stamps.popleft()

    def admit(self) -> float:
        """Admit one deletion: 0 when it may start now (it is then counted in the window), else the seconds until
        the window has room (nothing is counted; it is a deferral)."""
        if self.limit <= 0:
            return 0.0
        now = self._clock()
        self._trim(now)
        if len(self._stamps) < self.limit:
            self._stamps.append(now)
            self.engaged = False
            return 0.0
        self.deferred += 1
        return max(self._stamps[0] + self.window - now, 0.01)
