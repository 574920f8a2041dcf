"""A long copy's progress reaches status every few seconds, only when it moved, and never stops the copy."""

from __future__ import annotations

import asyncio
import threading

from csidriver.agent.carving import copy_progress


async def test_progress_is_reported_while_the_copy_runs_and_only_when_it_moved() -> None:
    reported: list[int] = []

    async def report(done: int) -> None:
        reported.append(done)

    async with copy_progress(report, every=0.02) as progress:

        def copy() -> None:  # the copy runs in a thread, as copy_device does
            for done in (1, 2, 3):
                progress(done)
                threading.Event().wait(0.05)
            threading.Event().wait(0.05)  # no progress for a while: nothing more reported

        await asyncio.to_thread(copy)
    assert reported == sorted(set(reported)) and reported[-1] == 3 and 1 <= len(reported) <= 3


async def test_a_failing_report_never_stops_the_copy() -> None:
    calls = 0

    async def report(done: int) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("API server unreachable")

    async with copy_progress(report, every=0.01) as progress:
        for done in range(5):
            progress(done + 1)
            await asyncio.sleep(0.02)
    assert calls >= 2
