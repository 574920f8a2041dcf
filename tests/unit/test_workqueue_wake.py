"""WorkQueue.wake: a key waiting out a backoff runs at once when what it waited for has happened."""

from __future__ import annotations

import asyncio

from csidriver.agent.workqueue import Retry, WorkQueue


async def test_wake_ends_a_backoff() -> None:
    runs: list[float] = []
    ran = asyncio.Event()
    loop = asyncio.get_running_loop()

    async def reconcile(key: str) -> float | None:
        runs.append(loop.time())
        ran.set()
        if len(runs) < 8:
            raise Retry("volume still mounted")  # each failure doubles the wait: 0.1 s ... 12.8 s
        return None

    async def run_number(n: int) -> None:
        while len(runs) < n:
            ran.clear()
            await ran.wait()

    queue = WorkQueue(reconcile, 1, "test")
    task = asyncio.create_task(queue.run())
    try:
        queue.add("pvc-1")
        await asyncio.wait_for(run_number(5), 10)  # the fifth failure backs off about 1.6-2 s
        await asyncio.sleep(0.05)
        woken = loop.time()
        queue.wake("pvc-1")
        await asyncio.wait_for(run_number(6), 10)
        assert runs[5] - woken < 0.2, "wake did not end the backoff"
        queue.wake("pvc-unknown")  # a key that was never queued just runs once
        await asyncio.wait_for(run_number(7), 1)
    finally:
        task.cancel()
