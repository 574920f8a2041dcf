"""The process limits its malloc arenas unless the environment already says how many, and gives back the heap's
free pages when asked."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest

from csidriver.allocator import limit_arenas, trim_heap


def test_the_limit_is_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is (platform.libc_ver()[0] == "glibc")


def test_an_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_gives_back_pages_freed_below_memory_still_in_use() -> None:
    """40 MiB in malloc'd blocks (bytes over 512 bytes are not Python's small-object allocator's), every 64th kept:
    once the rest is freed, the kept ones pin the heap's top and glibc keeps the pages between them resident until
    trimmed."""
    blocks = [bytes(2048) for _ in range(20_000)]  # zeroed as they are made: resident
    kept = blocks[::64]
    del blocks
    before = _rss_kib()
    assert trim_heap() is True
    after = _rss_kib()
    assert before - after > 20 * 1024, f"RSS {before} KiB -> {after} KiB"
    assert len(kept) == 313  # held to here
