"""Prometheus metrics, on a registry owned by the process (no global registry)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
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

    def serve(self, address: str | None, health: Health | None = None) -> None:
        """/metrics (any path but /healthz) and, when `health` is given, /healthz: 200 "ok" or 503 with the reason."""
        if not address:
            return
        host, _, port = address.rpartition(":")
        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/healthz" or health is None:
                return metrics_app(environ, start_response)  # type: ignore[no-any-return]
            try:
                why = health()
            except Exception as e:  # a check that times out or breaks is a failed check
                why = f"health check failed: {e!r}"
            status = "200 OK" if why is None else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [b"ok\n" if why is None else why.encode() + b"\n"]

        server = make_server(host or "0.0.0.0", int(port), app, _ThreadingServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()


Health = Callable[[], str | None]  # None when healthy, else why not


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes and probes are not news
        pass
