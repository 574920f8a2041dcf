"""Metrics in the Prometheus text exposition format (version 0.0.4), owned by the process (no global registry).

The format is small and stable, so the driver writes it itself rather than import a client library for it (which
costs every agent about 5 MiB of memory). Counters are exposed as `<name>_total`, histograms as cumulative
`_bucket{le=...}` samples with `_count` and `_sum`, as Prometheus expects.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[str, ...]


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(text: str, quote: bool) -> str:
    text = text.replace("\\", "\\\\").replace("\n", "\\n")
    return text.replace('"', '\\"') if quote else text


class Family:
    """One metric family: its help text, type, label names and samples, rendered as one block of the format."""

    def __init__(self, name: str, doc: str, kind: str = "gauge", labels: Sequence[str] = ()) -> None:
        self.name = name  # a counter's samples are named <name>_total
        self.doc = doc
        self.kind = kind
        self.labels = tuple(labels)
        self.samples: list[tuple[str, Labels, Labels, float]] = []  # (suffix, extra names, values, value)

    def add(self, values: Sequence[str], value: float) -> None:
        self.sample("_total" if self.kind == "counter" else "", values, value)

    def sample(self, suffix: str, values: Sequence[str], value: float, extra: Mapping[str, str] | None = None) -> None:
        if len(values) != len(self.labels):
            raise ValueError(f"{self.name}: {len(self.labels)} label values expected, got {len(values)}")
        names = tuple(extra or ())
        self.samples.append((suffix, names, (*values, *(extra or {}).values()), float(value)))

    def render(self) -> Iterator[str]:
        shown = self.name + ("_total" if self.kind == "counter" else "")
        yield f"# HELP {shown} {_escape(self.doc, quote=False)}\n"
        yield f"# TYPE {shown} {self.kind}\n"
        for suffix, extra, values, value in self.samples:
            pairs = sorted(zip((*self.labels, *extra), values, strict=True))
            inner = ",".join(f'{k}="{_escape(v, quote=True)}"' for k, v in pairs)
            yield (
                f"{self.name}{suffix}{{{inner}}} {_number(value)}\n"
                if inner
                else f"{self.name}{suffix} {_number(value)}\n"
            )


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Family:
    return Family(name, doc, "gauge", labels)


def counter(name: str, doc: str, labels: Sequence[str] = ()) -> Family:
    """`name` without the `_total` its samples carry."""
    return Family(name, doc, "counter", labels)


Collect = Callable[[], Iterable[Family]]


class _Counters:
    def __init__(self, name: str, doc: str, labels: Sequence[str]) -> None:
        self._family = (name, doc, tuple(labels))
        self._values: dict[Labels, float] = {}
        self._lock = threading.Lock()  # scrapes run on the HTTP server's thread

    def inc(self, values: Labels, by: float = 1.0) -> None:
        with self._lock:
            self._values[values] = self._values.get(values, 0.0) + by

    def collect(self) -> Iterable[Family]:
        name, doc, labels = self._family
        family = counter(name, doc, labels)
        with self._lock:
            for values, n in sorted(self._values.items()):
                family.add(values, n)
        return [family]


class _Histograms:
    def __init__(self, name: str, doc: str, labels: Sequence[str], buckets: Sequence[float]) -> None:
        self._family = (name, doc, tuple(labels))
        self._bounds = (*sorted(buckets), math.inf)
        self._series: dict[Labels, list[float]] = {}  # per bound a count (not cumulative), then the sum
        self._lock = threading.Lock()

    def observe(self, values: Labels, seconds: float) -> None:
        with self._lock:
            series = self._series.setdefault(values, [0.0] * (len(self._bounds) + 1))
            series[next(i for i, bound in enumerate(self._bounds) if seconds <= bound)] += 1
            series[-1] += seconds

    def collect(self) -> Iterable[Family]:
        name, doc, labels = self._family
        family = Family(name, doc, "histogram", labels)
        with self._lock:
            for values, series in sorted(self._series.items()):
                running = 0.0
                for bound, n in zip(self._bounds, series, strict=False):
                    running += n
                    family.sample("_bucket", values, running, {"le": _number(bound)})
                family.sample("_count", values, running)
                family.sample("_sum", values, series[-1])
        return [family]


class Metrics:
    def __init__(self) -> None:
        self._collectors: list[Collect] = []
        self._rpc_total = _Counters("device_localpv_rpc", "CSI calls by method and status code", ["method", "code"])
        self._rpc_seconds = _Histograms(
            "device_localpv_rpc_duration_seconds",
            "CSI call latency by method and status code",
            ["method", "code"],
            (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.add_collector(self._rpc_total.collect)
        self.add_collector(self._rpc_seconds.collect)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self._rpc_total.inc((method, code))
        self._rpc_seconds.observe((method, code), seconds)

    def api_requests(self, counts: Mapping[str, int]) -> None:
        """Export the API client's per-verb request counters."""

        def collect() -> Iterable[Family]:
            g = gauge("device_localpv_api_requests", "Requests made to the Kubernetes API server by verb", ["verb"])
            for verb, n in sorted(counts.items()):
                g.add([verb], n)
            return [g]

        self.add_collector(collect)

    def add_collector(self, collect: Collect) -> None:
        self._collectors.append(collect)

    def exposition(self) -> bytes:
        return "".join(line for collect in self._collectors for f in collect() for line in f.render()).encode()

    def serve(self, address: str | None, health: Health | None = None) -> None:
        """/metrics (any path but /healthz) and, when `health` is given, /healthz: 200 "ok" or 503 with the reason."""
        if not address:
            return
        host, _, port = address.rpartition(":")

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            if environ.get("PATH_INFO") != "/healthz" or health is None:
                body = self.exposition()
                start_response("200 OK", [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body)))])
                return [body]
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
