"""Prometheus metrics, on a registry owned by the process (no global registry)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class _Callback(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.rpc_total = Counter(
            "device_localpv_rpc_total",
            "CSI calls by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.rpc_seconds = Histogram(
            "device_localpv_rpc_duration_seconds",
            "CSI call latency by method and status code",
            ["method", "code"],
            registry=self.registry,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_total.labels(method, code).inc()
        self.rpc_seconds.labels(method, code).observe(seconds)

    def api_requests(self, counts: Mapping[str, int]) -> None:
        """Export the API client's per-verb request counters."""

        def collect() -> Iterable[Metric]:
            g = GaugeMetricFamily(
                "device_localpv_api_requests",
                "Requests made to the Kubernetes API server by verb",
                labels=["verb"],
            )
            for verb, n in sorted(counts.items()):
                g.add_metric([verb], n)
            yield g

        self.registry.register(_Callback(collect))

    def add_collector(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self.registry.register(_Callback(collect))

    def serve(self, address: str | None) -> None:
        if not address:
            return
        host, _, port = address.rpartition(":")
        start_http_server(int(port), addr=host or "0.0.0.0", registry=self.registry)
