"""Is a disk still readable? One O_DIRECT read of its first 4 KiB (the GPT header region), never the page cache.

A failing disk may answer with EIO at once, or hang a read for minutes: the read runs in a thread of its own and a
caller waits at most `timeout` seconds; a read still hanging is reported as such, and no second read of the same
device is started while it hangs (a dying disk is not piled up with stuck threads).
"""

from __future__ import annotations

import mmap
import os
import threading
import time

_BLOCK = 4096


def present(device: str) -> bool:
    """Whether the device node exists (no read, no thread)."""
    return os.path.exists(device)


def read_problem(device: str) -> str | None:
    """Why the first 4 KiB of `device` cannot be read with O_DIRECT, or None when they can."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError as e:
        return f"cannot open {device}: {e.strerror}"
    buf = mmap.mmap(-1, _BLOCK)  # page-aligned, as O_DIRECT requires
    try:
        os.preadv(fd, [buf], 0)
        return None
    except OSError as e:
        return f"I/O error reading {device}: {e.strerror}"
    finally:
        os.close(fd)
        buf.close()


class ReadProbe:
    """`read_problem` with a time limit, for many devices, from any thread."""

    def __init__(self, timeout: float = 3.0) -> None:
        self._timeout = timeout
        self._lock = threading.Lock()
        self._hanging: dict[str, float] = {}  # device -> monotonic start of a read that has not returned

    def problem(self, device: str) -> str | None:
        with self._lock:
            started = self._hanging.get(device)
        if started is not None:
            return f"a read of {device} has not returned for {time.monotonic() - started:.0f} s"
        result: list[str | None] = []

        def run() -> None:
            result.append(read_problem(device))
            with self._lock:
                self._hanging.pop(device, None)

        with self._lock:
            self._hanging[device] = time.monotonic()
        worker = threading.Thread(target=run, name=f"read-probe {device}", daemon=True)
        worker.start()
        worker.join(self._timeout)
        if not result:
            return f"a read of {device} did not return within {self._timeout:.0f} s"
        return result[0]
