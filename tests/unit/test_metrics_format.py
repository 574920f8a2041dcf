"""The driver writes the Prometheus text format itself: an independent parser (prometheus_client's, a test-only
dependency) must read back exactly the families, names, labels and values it meant."""

from __future__ import annotations

import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from csidriver.metrics import Family, Metrics, counter, gauge


def _parsed(m: Metrics) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for fam in text_string_to_metric_families(m.exposition().decode()):
        for s in fam.samples:
            out.setdefault(f"{fam.type}:{fam.name}", {})[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_rpc_counters_and_histograms_read_back() -> None:
    m = Metrics()
    for seconds in (0.005, 0.03, 0.03, 7.0, 100.0):
        m.observe_rpc("CreateVolume", "OK", seconds)
    m.observe_rpc("DeleteVolume", "NOT_FOUND", 0.2)
    got = _parsed(m)
    calls = got["counter:device_localpv_rpc"]
    assert calls[("device_localpv_rpc_total", (("code", "OK"), ("method", "CreateVolume")))] == 5
    assert calls[("device_localpv_rpc_total", (("code", "NOT_FOUND"), ("method", "DeleteVolume")))] == 1
    hist = got["histogram:device_localpv_rpc_duration_seconds"]
    key = (("code", "OK"), ("method", "CreateVolume"))

    def bucket(le: str) -> float:
        return hist[("device_localpv_rpc_duration_seconds_bucket", tuple(sorted((*key, ("le", le)))))]

    assert [bucket(le) for le in ("0.01", "0.025", "0.05", "5.0", "10.0", "60.0", "+Inf")] == [1, 1, 3, 3, 4, 4, 5]
    assert hist[("device_localpv_rpc_duration_seconds_count", key)] == 5
    assert math.isclose(hist[("device_localpv_rpc_duration_seconds_sum", key)], 107.065)


def test_collected_families_with_hostile_label_values_and_help() -> None:
    m = Metrics()
    m.api_requests({"patch": 3, "get_or_list": 2})

    def collect() -> list[Family]:
        g = gauge("x_disk_free", 'Free "bytes"\\ per\ndisk', ["pool", "disk"])
        g.add(['a"b\\c\nd', "/dev/x"], 1.5)
        r = counter("x_retries", "Retries")
        r.add([], 2)
        return [g, r]

    m.add_collector(collect)
    text = m.exposition().decode()
    assert "# TYPE x_retries_total counter\nx_retries_total 2.0\n" in text
    got = _parsed(m)
    assert got["gauge:x_disk_free"] == {("x_disk_free", (("disk", "/dev/x"), ("pool", 'a"b\\c\nd'))): 1.5}
    assert got["counter:x_retries"] == {("x_retries_total", ()): 2}
    assert got["gauge:device_localpv_api_requests"] == {
        ("device_localpv_api_requests", (("verb", "get_or_list"),)): 2,
        ("device_localpv_api_requests", (("verb", "patch"),)): 3,
    }


def test_a_sample_with_the_wrong_number_of_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="2 label values expected"):
        gauge("x", "x", ["a", "b"]).add(["only-one"], 1)
