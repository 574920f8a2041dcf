"""A fault drill: creates, publishes, writes, verifies and deletes volumes while the agent and the controller are
killed at random moments and the API server is restarted once. Used by a test (short) and a bench (long).

Besides the data check (what was written before a kill reads back after it), the drill reads the pool disks'
partition tables after every create and at the end: no two partitions may overlap and no partition name may appear
twice (a double allocation), and every live volume must own exactly one partition."""

from __future__ import annotations

import collections
import contextlib
import fcntl
import functools
import hashlib
import json
import os
import random
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc

from harness.apiserver import ApiServer
from harness.csi import MIB, create, delete, mount_cap, publish, unpublish
from harness.driver import Process
from harness.node import mounts_under

T = TypeVar("T")
RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED)
KINDS = ("create", "publish", "write", "unpublish", "verify", "delete")


@dataclass
class DrillReport:
    operations: int = 0  # full create/publish/write/unpublish cycles
    by_kind: collections.Counter[str] = field(default_factory=collections.Counter)
    kills: dict[str, int] = field(default_factory=dict)
    apiserver_restarts: int = 0
    verified: int = 0  # volumes whose data was read back intact before deletion
    verified_across_fault: int = 0  # ... of which a kill or API server restart happened between write and read
    retries: collections.Counter[str] = field(default_factory=collections.Counter)  # failed attempts by code
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    layout_checks: int = 0
    double_allocations: set[str] = field(default_factory=set)  # descriptions of overlaps and duplicates
    seconds: float = 0.0

    def faults(self) -> int:
        return sum(self.kills.values()) + self.apiserver_restarts

    def percentile(self, kind: str, q: float) -> float:
        """Nearest-rank percentile (q in 0..100) of the latencies of `kind`, in seconds; 0 when none."""
        values = sorted(self.latencies.get(kind, []))
        if not values:
            return 0.0
        rank = max(1, -(-len(values) * q // 100))
        return values[int(rank) - 1]


def retrying(call: Callable[[], T], within: float = 180, report: DrillReport | None = None) -> T:
    deadline = time.monotonic() + within
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() not in RETRY or time.monotonic() > deadline:
                raise
            if report is not None:
                report.retries[e.code().name] += 1
            time.sleep(0.3)


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


@contextlib.contextmanager
def _opened(make: Callable[[], grpc.Channel]) -> Iterator[grpc.Channel]:
    ch = make()
    try:
        yield ch
    finally:
        ch.close()


def _read_table(device: str) -> list[dict[str, Any]]:
    """The partitions of a pool disk, read under a shared flock on the disk (the agent writes under an exclusive
    one), so a table is never read half written."""
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        out = subprocess.run(["sfdisk", "--json", device], capture_output=True, text=True, check=True).stdout
    finally:
        os.close(fd)
    return list(json.loads(out)["partitiontable"].get("partitions", []))


def layout_problems(disks: list[str], live: set[str] | None = None) -> list[str]:
    """Double allocations on the pool disks: partitions whose blocks overlap, a partition name on two partitions,
    and (given the partition names of the live volumes) a live volume without exactly one partition."""
    problems: list[str] = []
    names: collections.Counter[str] = collections.Counter()
    for device in disks:
        parts = sorted(_read_table(device), key=lambda p: int(p["start"]))
        reach: dict[str, Any] | None = None  # the partition reaching furthest so far
        for p in parts:
            if reach is not None and int(reach["start"]) + int(reach["size"]) > int(p["start"]):
                problems.append(f"{device}: {reach.get('name')} and {p.get('name')} share blocks from {p['start']}")
            if reach is None or int(p["start"]) + int(p["size"]) > int(reach["start"]) + int(reach["size"]):
                reach = p
        names.update(str(p.get("name", "")) for p in parts[1:])  # partition 1 is the pool's meta partition
    problems += [f"partition name {n} on {k} partitions" for n, k in names.items() if k > 1]
    for name in sorted(live or ()):
        if names[name] != 1:
            problems.append(f"live volume partition {name} found {names[name]} times")
    return problems


def _partition_name(volume_id: str) -> str:
    return volume_id.removeprefix("pvc-")  # a pvc-<uuid> volume's GPT partition name is its UUID


def run_drill(
    api: ApiServer,
    victims: list[Process],
    controller: Callable[[], grpc.Channel],
    node: Callable[[], grpc.Channel],
    workdir: Path,
    operations: int,
    seed: int,
    min_kills: int = 0,
    disks: list[str] | None = None,
    max_alive: int = 24,
    progress: Callable[[DrillReport], None] | None = None,
) -> tuple[DrillReport, dict[str, str]]:
    """Returns the report and the checksums of the volumes still alive at the end (all verified, then deleted).

    `disks`: the pool disks, whose tables are checked for double allocations after every create and at the end.
    `max_alive`: volumes kept at once; above 3 each cycle deletes one with probability 1/2, at `max_alive` always,
    so a long drill does not fill the pool. `progress` is called after each cycle."""
    rng = random.Random(seed)
    report = DrillReport()
    alive: dict[str, tuple[Any, str, int]] = {}  # volume id -> (volume, sha256 of its data file, faults at write)
    chaos = Chaos(victims, rng, report)

    def timed(kind: str, call: Callable[[grpc.Channel], T], make: Callable[[], grpc.Channel]) -> T:
        def once() -> T:
            with _opened(make) as ch:
                return call(ch)

        began = time.monotonic()
        result = retrying(once, report=report)
        report.latencies[kind].append(time.monotonic() - began)
        report.by_kind[kind] += 1
        return result

    def check_layout() -> None:
        if disks:
            report.layout_checks += 1
            report.double_allocations.update(layout_problems(disks, {_partition_name(v) for v in alive}))

    def verify_and_delete(vid: str) -> None:
        _verify(timed, node, alive.pop(vid), workdir, report)
        timed("delete", lambda ch: delete(ch, vid), controller)

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
            vol = timed("create", functools.partial(create, name=name, size=16 * MIB), controller)
            alive[vol.volume_id] = (vol, "", 0)  # owns a partition from now on
            check_layout()
            target = str(workdir / f"drill-{i}")
            timed("publish", functools.partial(publish, vol=vol, target=target, cap=mount_cap("ext4")), node)
            data = rng.randbytes(256 * 1024)
            with open(os.path.join(target, "data"), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            report.by_kind["write"] += 1
            faults = report.faults()
            timed("unpublish", functools.partial(unpublish, volume_id=vol.volume_id, target=target), node)
            alive[vol.volume_id] = (vol, hashlib.sha256(data).hexdigest(), faults)
            report.operations += 1
            if len(alive) >= max_alive or (len(alive) > 3 and rng.random() < 0.5):
                verify_and_delete(rng.choice(sorted(alive)))
            if progress is not None:
                progress(report)
    finally:
        chaos.stop()
    sums = {vid: sha for vid, (_, sha, _) in alive.items()}
    check_layout()
    for vid in sorted(alive):
        verify_and_delete(vid)
    check_layout()
    report.seconds = time.monotonic() - start
    return report, sums


def leftovers(workdir: Path) -> list[str]:
    """What the drill's publishes left behind: mounts under `workdir` and target paths that still exist."""
    ours = ("drill-", "verify-")
    left = [m for m in mounts_under(str(workdir)) if os.path.basename(m).startswith(ours)]
    return left + sorted(str(p) for prefix in ours for p in workdir.glob(prefix + "*"))


def _verify(
    timed: Callable[..., Any],
    node: Callable[[], grpc.Channel],
    entry: tuple[Any, str, int],
    workdir: Path,
    report: DrillReport,
) -> None:
    vol, sha, faults = entry
    target = str(workdir / f"verify-{vol.volume_id}")
    timed("publish", lambda ch: publish(ch, vol, target, mount_cap("ext4")), node)
    with open(os.path.join(target, "data"), "rb") as f:
        got = hashlib.sha256(f.read()).hexdigest()
    report.by_kind["verify"] += 1
    timed("unpublish", lambda ch: unpublish(ch, vol.volume_id, target), node)
    assert got == sha, f"data of {vol.volume_id} changed"
    report.verified += 1
    if report.faults() > faults:
        report.verified_across_fault += 1
