"""The C allocator of the process: at most two malloc arenas, and free heap pages given back after a burst.

glibc gives a thread its own arena (up to 8 per CPU) when it meets another in malloc; gRPC's event-engine, timer and
lifeguard threads and asyncio's executor threads each took one, about 1 MiB resident apiece in a process that
allocates little outside Python's own allocator. Set before any thread starts. A MALLOC_ARENA_MAX in the
environment (read by glibc itself) is left to win; on a C library without mallopt this does nothing.

glibc returns freed memory to the system by itself only from the top of a heap; pages freed below a block still in
use stay resident until malloc_trim. After 100 concurrent creates the agent held about 0.7 MiB of such pages.
"""

from __future__ import annotations

import ctypes
import functools
import os
from typing import Any

M_ARENA_MAX = -8  # glibc's mallopt parameter number
ARENAS = 2


def limit_arenas(count: int = ARENAS) -> bool:
    """True if the limit was set."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    return mallopt is not None and bool(mallopt(M_ARENA_MAX, count))


def trim_heap() -> bool:
    """Gives the free pages of every malloc heap back to the system (glibc's malloc_trim(0)): True if any were.
    False, and nothing done, on a C library without malloc_trim."""
    trim = _libc("malloc_trim", ctypes.c_size_t)
    return trim is not None and bool(trim(0))


@functools.cache
def _libc(name: str, *argtypes: Any) -> Any:
    """The C library's function `name` (returning int, taking `argtypes`), or None where it has none."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function
