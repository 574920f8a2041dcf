"""Where a partition goes: best fit (the default) and room to grow (StorageClass `placement: RoomToGrow`)."""

from __future__ import annotations

import pytest

from csidriver.host.parsers import MIB, DiskTable, PartitionEntry
from csidriver.host.partitions import InsufficientCapacity, best_fit, room_after, roomy_fit
from csidriver.services.errors import InvalidArgument
from csidriver.services.requests import parse_params

S = 512  # sector size


def _table(*parts: tuple[int, int], total_mib: int = 1024) -> DiskTable:
    """A pool disk of `total_mib`: the meta partition at 1-10 MiB, then volumes at (start MiB, size MiB)."""
    entries = [PartitionEntry(1, "", MIB // S, 9 * MIB // S, "", "", "pool", "")]
    for n, (start, size) in enumerate(parts, start=2):
        entries.append(PartitionEntry(n, "", start * MIB // S, size * MIB // S, "", "", f"v{n}", ""))
    return DiskTable("gpt", "", S, 2048, total_mib * MIB // S - 34, 128, tuple(entries))


def test_first_volume_goes_right_after_the_meta_partition() -> None:
    assert roomy_fit(_table(), 100 * MIB).start_bytes == 10 * MIB


def test_the_volume_before_keeps_room_to_double() -> None:
    table = _table((10, 100))  # free from 110 MiB to the end
    got = roomy_fit(table, 100 * MIB)
    assert got.start_bytes == 210 * MIB  # 100 MiB left after the volume before it
    assert best_fit(table, 100 * MIB).start_bytes == 110 * MIB  # best fit leaves it none


def test_an_extent_with_room_to_double_beats_a_tighter_one() -> None:
    table = _table((10, 100), (260, 100))  # gaps: 150 MiB at 110, ~663 MiB at 360
    assert best_fit(table, 100 * MIB).start_bytes == 110 * MIB
    got = roomy_fit(table, 100 * MIB)
    assert got.start_bytes == 460 * MIB  # in the big gap, 100 MiB after the volume at 260


def test_without_room_to_double_the_largest_extent() -> None:
    table = _table((10, 400), (560, 400))  # gaps: 150 MiB at 410, ~63 MiB at 960
    got = roomy_fit(table, 120 * MIB)
    assert 410 * MIB <= got.start_bytes <= 440 * MIB and got.start_bytes + 120 * MIB <= 560 * MIB


def test_no_extent_holds_it() -> None:
    with pytest.raises(InsufficientCapacity):
        roomy_fit(_table((10, 1000)), 100 * MIB)


def test_room_after_is_what_growth_can_use() -> None:
    table = _table((10, 100), (300, 100))
    assert (room_after(table, table.partitions[1]) - table.partitions[1].start) * S == 290 * MIB


@pytest.mark.parametrize(("value", "roomy"), [("RoomToGrow", True), ("roomtogrow", True), ("BestFit", False)])
def test_placement_parameter(value: str, roomy: bool) -> None:
    assert parse_params({"devname": "ssd", "Placement": value}).room_to_grow is roomy
    assert parse_params({"devname": "ssd"}).room_to_grow is False


def test_unknown_placement_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="placement 'WorstFit' is invalid"):
        parse_params({"devname": "ssd", "placement": "WorstFit"})
