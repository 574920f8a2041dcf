"""Readers survive anything the API server can hold; quantities parse as Kubernetes writes them."""

from __future__ import annotations

import time
from typing import Any

import pytest

from csidriver.api.objects import node_from_dict, volume_from_dict
from csidriver.api.quantity import parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("10Gi", 10 << 30),
        ("1536Mi", 1536 << 20),
        ("1k", 1000),
        ("1500m", 2),  # 1.5 bytes, rounded up
        ("1n", 1),
        ("2u", 1),
        ("1e3", 1000),
        ("0.5Ki", 512),
        (12345, 12345),
    ],
)
def test_quantities(text: object, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1Zi", "--1", "1e999999999", "9" * 60, True, "1.2.3"])
def test_garbage_quantities_are_refused_quickly(text: object) -> None:
    start = time.monotonic()
    with pytest.raises(ValueError):
        parse_quantity(text)
    assert time.monotonic() - start < 1


HOSTILE_NODES: list[Any] = [
    {},
    {"metadata": None, "devices": None},
    {"metadata": "x", "devices": "x"},
    {"metadata": {"name": "n", "annotations": {"local.openebs.io/cordoned-disks": 5}}, "devices": [5, None, "x"]},
    {"metadata": {"name": "n"}, "devices": [{"name": "ssd", "uuid": "U", "size": "1500m", "free": "1n"}]},
    {"metadata": {"name": "n"}, "devices": [{"name": "ssd", "uuid": "U", "size": "garbage", "free": "1Gi"}]},
    {"metadata": {"name": "n"}, "devices": [{"name": "ssd", "uuid": "U", "size": -5, "free": -1}]},
    {"metadata": {"name": "n"}, "devices": [{"name": "ssd", "uuid": "U", "size": "1e999999999", "free": "1"}]},
    {"metadata": {"name": "n"}, "devices": [{"name": "ssd", "uuid": "U", "size": {"a": 1}, "free": [1]}]},
    {"metadata": {"name": "n"}, "devices": [{"name": "ssd", "uuid": "U", "size": "1Gi", "free": "2Gi"}]},
    {"metadata": {"name": "n"}, "devices": [{"name": 7, "uuid": None, "freeEntries": "many", "healthy": "no"}]},
]


@pytest.mark.parametrize("obj", HOSTILE_NODES)
def test_node_reader_never_raises_and_never_offers_space_it_cannot_prove(obj: Any) -> None:
    node = node_from_dict(obj)
    for d in node.devices:
        assert 0 <= d.largest_extent <= d.free <= d.size
        if not d.healthy:
            assert d.free == 0 or d.size > 0


def test_unreadable_row_is_kept_unhealthy_and_empty() -> None:
    (d,) = node_from_dict(HOSTILE_NODES[5]).devices
    assert (d.healthy, d.size, d.free) == (False, 0, 0)
    (clamped,) = node_from_dict(HOSTILE_NODES[9]).devices
    assert clamped.free == clamped.size == 1 << 30


@pytest.mark.parametrize(
    "spec",
    [None, {}, {"capacity": "0"}, {"capacity": "abc"}, {"capacity": "99999999999999999999"}, {"capacity": [1]}],
)
def test_volume_reader_never_raises_and_reads_bad_capacity_as_zero(spec: Any) -> None:
    vol = volume_from_dict({"metadata": {"name": "v"}, "spec": spec, "status": {"partitionNumber": "x"}})
    assert vol.capacity == 0 and vol.placement.partition_number == 0
