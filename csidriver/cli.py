"""The one entry point: `device-localpv controller|agent [flags]`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

from csidriver.allocator import limit_arenas
from csidriver.config import Role, Settings, SettingsError, from_process


async def _run(settings: Settings) -> None:
    if settings.role is Role.CONTROLLER:
        from csidriver.controller.app import run
    else:
        from csidriver.agent.app import run
    task = asyncio.current_task()
    stop = asyncio.Event()

    def on_signal() -> None:
        # The first signal stops the process cleanly (sockets closed, Lease released, API sessions closed); a
        # second one, while that clean-up hangs, stops it at once.
        if stop.is_set() and task is not None:
            task.cancel()
        stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with contextlib.suppress(asyncio.CancelledError):
        await run(settings, stop)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = from_process(sys.argv[1:] if argv is None else argv)
    except SettingsError as e:
        print(f"device-localpv: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    limit_arenas()  # before any thread starts
    asyncio.run(_run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
