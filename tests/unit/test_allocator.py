"""The process limits its malloc arenas unless the environment already says how many."""

from __future__ import annotations

import platform

import pytest

from csidriver.allocator import limit_arenas


def test_the_limit_is_set_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_arenas() is (platform.libc_ver()[0] == "glibc")


def test_an_environment_setting_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_arenas() is False
