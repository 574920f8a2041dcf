"""The controller process at scale, on a real kube-apiserver: memory and CPU to sync N DeviceNodes and M DeviceVolumes.

1. Idle: the controller started against an API server holding no driver objects; its RSS once ready.
2. Loaded: N DeviceNodes and M Ready DeviceVolumes (with the placement an agent writes, and the managedFields the API
   server keeps) are written first; a fresh controller starts, lists them all and reads ready. Printed: wall time to
   ready, CPU seconds (user + system) the process spent until ready, RSS once ready and its high-water mark.

The objects are written with many parallel HTTP connections (one create each, status included: v1alpha1, the
version the driver speaks, has no status subresource), which takes a few
minutes for 100,000 volumes on this machine; that part is not measured.

    .venv/bin/python -m bench.controller_scale [--nodes 5000] [--volumes 100000] [--writers 16]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.scheduler_scale import node_obj
from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import new_volume_body
from harness.apiserver import ApiServer
from harness.driver import Driver, Process
from harness.tools import tools

GIB = 1 << 30
GROUP = "/apis/local.openebs.io/v1alpha1/namespaces/openebs"


def volume(i: int, nodes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A DeviceVolume as the controller creates it, and the status its agent writes once Ready."""
    name = f"pvc-{uuid.UUID(int=i)}"
    node = f"node-{i % nodes:05d}"
    body = new_volume_body(name, "openebs", node, "ssd", (1 + i % 50) * GIB, name)
    body["apiVersion"] = f"{c.GROUP}/{c.ORIGINAL_VERSION}"  # as Kube.create_volume sends it
    body["metadata"]["finalizers"] = [c.FINALIZER]  # as the agent adds it
    del body["status"]  # the Ready status follows
    number = 1 + i // nodes % 100
    status = {
        "status": {
            "state": "Ready",
            "diskGUID": str(uuid.UUID(int=(i % nodes) * 4)).upper(),
            "diskPath": "/dev/nvme0n1",
            "partitionName": naming.partition_name(name),
            "partitionUUID": str(uuid.uuid4()).upper(),
            "partitionNumber": number,
            "devicePath": f"/dev/nvme0n1p{number}",
            "capacityBytes": (1 + i % 50) * GIB,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Provisioned",
                    "message": f"node {node}: partition /dev/nvme0n1p{number} ({(1 + i % 50) * GIB} bytes)",
                    "lastTransitionTime": "2026-12-07T19:00:00Z",
                }
            ],
        }
    }
    return body, status


class Writer:
    """Parallel keep-alive HTTPS connections to the API server as its admin."""

    def __init__(self, api: ApiServer, workers: int) -> None:
        url = urlsplit(api.url)
        self._host, self._port = url.hostname or "127.0.0.1", url.port or 443
        self._token = api.identities["admin"].token
        self._ctx = ssl.create_default_context()
        self._ctx.check_hostname = False
        self._ctx.verify_mode = ssl.CERT_NONE
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(workers)

    def _conn(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(self._host, self._port, context=self._ctx, timeout=60)
            self._local.conn = conn
        return conn

    def call(self, method: str, path: str, body: dict[str, Any], content: str = "application/json") -> None:
        data = json.dumps(body).encode()
        for attempt in range(5):
            conn = self._conn()
            try:
                conn.request(method, path, data, {"Authorization": f"Bearer {self._token}", "Content-Type": content})
                resp = conn.getresponse()
                text = resp.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                time.sleep(0.2 * (attempt + 1))
                continue
            if resp.status == 429 or resp.status >= 500:
                time.sleep(0.2 * (attempt + 1))
                continue
            if resp.status >= 300 and resp.status != 409:
                raise RuntimeError(f"{method} {path}: {resp.status} {text[:300]!r}")
            return
        raise RuntimeError(f"{method} {path}: no answer after retries")

    def run(self, jobs: Iterator[Callable[[], None]]) -> None:
        for future in [self._pool.submit(job) for job in jobs]:
            future.result()

    def close(self) -> None:
        self._pool.shutdown()


def populate(api: ApiServer, nodes: int, volumes: int, workers: int) -> None:
    w = Writer(api, workers)
    try:
        t = time.perf_counter()
        w.run(lambda i=i: w.call("POST", f"{GROUP}/devicenodes", node_obj(i)) for i in range(nodes))  # type: ignore[misc]
        print(f"wrote {nodes} DeviceNodes in {time.perf_counter() - t:.0f} s")
        t = time.perf_counter()

        def one(i: int) -> None:
            body, status = volume(i, nodes)
            w.call("POST", f"{GROUP}/devicevolumes", {**body, **status})  # v1alpha1 has no status subresource

        w.run(lambda i=i: one(i) for i in range(volumes))  # type: ignore[misc]
        print(f"wrote {volumes} Ready DeviceVolumes in {time.perf_counter() - t:.0f} s")
    finally:
        w.close()


def proc_figures(pid: int) -> tuple[float, float, float]:
    """(CPU seconds user+system, RSS MiB, RSS high-water MiB) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return cpu, int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def measure(driver: Driver, name: str, what: str) -> None:
    t = time.perf_counter()
    ctl: Process = driver.controller(name, CREATE_TIMEOUT_SECONDS="1")
    ctl.wait_ready(timeout=600)
    wall = time.perf_counter() - t
    assert ctl.proc is not None
    time.sleep(2)  # let the first scrape-free moment settle
    cpu, rss, hwm = proc_figures(ctl.proc.pid)
    print(f"controller {what}: ready in {wall:.2f} s, {cpu:.2f} s of CPU; RSS {rss:.1f} MiB (high-water {hwm:.1f} MiB)")
    ctl.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--volumes", type=int, default=100000)
    ap.add_argument("--writers", type=int, default=16)
    args = ap.parse_args()
    api = ApiServer(tools()).start()
    try:
        api.install_driver_objects()
        driver = Driver(api, Path(tempfile.mkdtemp(prefix="dlpv-ctl-scale-")))
        try:
            measure(driver, "idle", "idle, no driver objects")
            populate(api, args.nodes, args.volumes, args.writers)
            measure(driver, "loaded", f"with {args.nodes} DeviceNodes and {args.volumes} DeviceVolumes")
        finally:
            driver.stop()
    finally:
        api.stop()


if __name__ == "__main__":
    main()
