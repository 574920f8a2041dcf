"""Runs last: the disks that are not ours are byte-for-byte what they were before the suite."""

from __future__ import annotations

from tests.conftest import Cluster


def test_foreign_and_lookalike_disks_untouched(cluster: Cluster) -> None:
    assert cluster.foreign.sha256() == cluster.foreign_sha
    assert cluster.lookalike.sha256() == cluster.lookalike_sha
