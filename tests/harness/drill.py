"""A fault drill: creates, publishes, writes, verifies and deletes volumes while the agent and the controller are
killed at random moments and the API server is restarted once. Used by a test (short) and a bench (long)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from tests.e2e.csi import MIB, create, delete, mount_cap, publish, unpublish
from tests.harness.apiserver import ApiServer
from tests.harness.driver import Process

T = TypeVar("T")
RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)


def retrying(call: Callable[[], T], within: float = 180) -> T:
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() not in RETRY or time.monotonic() > deadline:
                raise
            time.sleep(0.3)


@dataclass
class DrillReport:
    operations: int = 0
    kills: dict[str, int] = field(default_factory=dict)
    apiserver_restarts: int = 0
    verified: int = 0
    seconds: float = 0.0


class Chaos(threading.Thread):
    """Kills (SIGKILL) and restarts the given processes at random moments until stopped."""

    def __init__(self, victims: list[Process], rng: random.Random, report: DrillReport) -> None:
        super().__init__(daemon=True)
        self._victims = victims
        self._rng = rng
        self._report = report
        self._halt = threading.Event()
        self.lock = threading.Lock()  # held while a victim is down

    def run(self) -> None:
        while not self._halt.wait(self._rng.uniform(0.5, 2.5)):
            victim = self._rng.choice(self._victims)
            with self.lock:
                victim.kill()
                self._report.kills[victim.name] = self._report.kills.get(victim.name, 0) + 1
                victim.start()
                victim.wait_ready(timeout=120)

    def stop(self) -> None:
        self._halt.set()
        self.join(180)


def run_drill(
    api: ApiServer,
    victims: list[Process],
    controller: Callable[[], grpc.Channel],
    node: Callable[[], grpc.Channel],
    workdir: Path,
    operations: int,
    seed: int,
    min_kills: int = 0,
) -> tuple[DrillReport, dict[str, str]]:
    """Returns the report and the checksums of the volumes still alive (all verified, then deleted)."""
    rng = random.Random(seed)
    report = DrillReport()
    alive: dict[str, tuple[Any, str]] = {}  # volume id -> (volume, sha256 of its data file)
    chaos = Chaos(victims, rng, report)
    start = time.monotonic()
    chaos.start()
    try:
        i = 0
        # At least `operations`, and more until the chaos thread has struck `min_kills` times (bounded).
        while i < operations or (sum(report.kills.values()) < min_kills and i < operations * 10):
            i += 1
            if i == operations // 2:
                with chaos.lock:
                    api.restart_apiserver()
                    report.apiserver_restarts += 1
            name = f"pvc-{uuid.UUID(int=rng.getrandbits(128))}"
            vol = retrying(lambda n=name: create(controller(), n, 16 * MIB))
            target = str(workdir / f"drill-{i}")
            retrying(lambda v=vol, t=target: publish(node(), v, t, mount_cap("ext4")))
            data = rng.randbytes(256 * 1024)
            with open(os.path.join(target, "data"), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            retrying(lambda v=vol, t=target: unpublish(node(), v.volume_id, t))
            alive[vol.volume_id] = (vol, hashlib.sha256(data).hexdigest())
            report.operations += 1
            if len(alive) > 3 and rng.random() < 0.5:
                victim = rng.choice(sorted(alive))
                _verify(node, alive.pop(victim), workdir, report)
                retrying(lambda v=victim: delete(controller(), v))
    finally:
        chaos.stop()
    sums = {vid: sha for vid, (_, sha) in alive.items()}
    for vid in sorted(alive):
        _verify(node, alive[vid], workdir, report)
        retrying(lambda v=vid: delete(controller(), v))
    report.seconds = time.monotonic() - start
    return report, sums


def _verify(node: Callable[[], grpc.Channel], entry: tuple[Any, str], workdir: Path, report: DrillReport) -> None:
    vol, sha = entry
    target = str(workdir / f"verify-{vol.volume_id}")
    retrying(lambda: publish(node(), vol, target, mount_cap("ext4")))
    with open(os.path.join(target, "data"), "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    retrying(lambda: unpublish(node(), vol.volume_id, target))
    assert got == sha, f"data of {vol.volume_id} changed"
    report.verified += 1
