"""Many concurrent CreateVolume calls on one node: creates queued on a disk share one partition-table write, and
every partition comes out as asked (name, size, 1 MiB alignment, distinct, no overlap) as sfdisk reads it; an agent
SIGKILLed while a batch is in flight leaves, once restarted, every volume Ready on exactly one partition and no
partition over, a member deleted meanwhile included. Real API server, real driver processes, real loop disks."""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from typing import Any

import grpc

from csidriver.api import naming
from harness.csi import MIB, create, delete
from harness.disks import partitions
from tests.conftest import NODE, Cluster
from tests.e2e.test_resilience import our_partitions, volumes

SECTOR = 512


def _shared_writes(log: str) -> list[int]:
    """Sizes of the table writes that several creates shared, from the agent's log lines."""
    return [int(m.group(1)) for m in re.finditer(r"(\d+) partitions in one table write", log)]


def _create_until_answered(cluster: Cluster, name: str, size: int, results: dict[str, Any], gone: set[str]) -> None:
    """CreateVolume retried as the external-provisioner would while the agent is down, except for a volume the test
    deletes meanwhile (its call ends with the deletion)."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        try:
            results[name] = create(cluster.controller_channel, name, size)
            return
        except grpc.RpcError as e:
            if name in gone or e.code() not in (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                grpc.StatusCode.ABORTED,
                grpc.StatusCode.UNAVAILABLE,
            ):
                results[name] = e
                return
            time.sleep(0.2)
    results[name] = TimeoutError(name)


def _run_creates(
    cluster: Cluster, sizes: dict[str, int], gone: set[str]
) -> tuple[list[threading.Thread], dict[str, Any]]:
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=_create_until_answered, args=(cluster, n, s, results, gone)) for n, s in sizes.items()
    ]
    for t in threads:
        t.start()
    return threads, results


def _check_tables(cluster: Cluster, sizes: dict[str, int]) -> None:
    """Every volume's partition as sfdisk reads it: its name, its size rounded up to 1 MiB, 1 MiB aligned, the
    device status reports; all distinct and none overlapping (meta partition and other tests' volumes included)."""
    vols = volumes(cluster)
    wanted = {naming.partition_name(n): n for n in sizes}
    seen: dict[str, dict[str, Any]] = {}
    for disk in cluster.pool_disks:
        entries = partitions(disk.device)
        spans = sorted((int(p["start"]), int(p["start"]) + int(p["size"])) for p in entries)
        assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans)), f"overlap on {disk.device}"
        names = [str(p.get("name", "")) for p in entries]
        assert len(names) == len(set(names)), f"a name twice on {disk.device}"
        for p in entries:
            if p.get("name") in wanted:
                assert p["name"] not in seen, f"{p['name']} on two disks"
                seen[str(p["name"])] = dict(p)
    assert set(seen) == set(wanted)
    for pname, entry in seen.items():
        name = wanted[pname]
        assert int(entry["size"]) * SECTOR == -(-sizes[name] // MIB) * MIB
        assert int(entry["start"]) * SECTOR % MIB == 0
        status = vols[name]["status"]
        assert status["state"] == "Ready" and status["devicePath"] == entry["node"]
        assert status["partitionUUID"].upper() == str(entry["uuid"]).upper()


def test_concurrent_creates_on_one_disk_share_table_writes(cluster: Cluster) -> None:
    agent_log = cluster.workdir / f"agent-{NODE}.log"
    mark = len(agent_log.read_text(errors="replace"))
    before = our_partitions(cluster)
    sizes = {f"pvc-{uuid.uuid4()}": (1 + i % 4) * MIB + (i % 3) * 4096 for i in range(40)}
    threads, results = _run_creates(cluster, sizes, set())
    for t in threads:
        t.join(150)
    failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    assert not failed and len(results) == len(sizes), failed
    _check_tables(cluster, sizes)
    # The forty did not take forty table writes: creates queued on a disk went together.
    shared = _shared_writes(agent_log.read_text(errors="replace")[mark:])
    assert shared and sum(shared) >= len(sizes) // 2, shared
    for n in sizes:
        delete(cluster.controller_channel, n)
    assert our_partitions(cluster) == before


def test_agent_killed_while_a_batch_is_in_flight(cluster: Cluster) -> None:
    before = our_partitions(cluster)
    sizes = {f"pvc-{uuid.uuid4()}": 2 * MIB for _ in range(40)}
    ours = {naming.partition_name(n): n for n in sizes}
    agent = cluster.driver.processes[f"agent-{NODE}"]
    gone: set[str] = set()
    threads, results = _run_creates(cluster, sizes, gone)
    # Kill the agent the moment a table write with several of ours shows on a disk.
    written: set[str] = set()
    deadline = time.monotonic() + 60
    while len(written) < 2 and time.monotonic() < deadline:
        written = {str(p.get("name")) for d in cluster.pool_disks for p in partitions(d.device)} & set(ours)
    agent.kill()
    assert len(written) >= 2, "no batch was written"
    # The batch was in flight: some of what was written had no Ready status yet.
    vols = volumes(cluster)
    unready = sorted(ours[p] for p in written if vols[ours[p]].get("status", {}).get("state") != "Ready")
    assert unready, "the agent was killed after every written partition was reported Ready"
    # One of them is deleted while no agent runs: its partition must not outlive it.
    doomed = unready[0]
    gone.add(doomed)
    cluster.api.kubectl("delete", "devicevolume", doomed, "-n", "openebs", "--wait=false")
    time.sleep(0.5)
    agent.start().wait_ready()
    for t in threads:
        t.join(150)
    survivors = {n: s for n, s in sizes.items() if n != doomed}
    failed = {n: r for n, r in results.items() if n in survivors and isinstance(r, BaseException)}
    assert not failed and all(n in results for n in survivors), failed
    deadline = time.monotonic() + 60
    while doomed in volumes(cluster) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert doomed not in volumes(cluster)
    parts = our_partitions(cluster)
    assert naming.partition_name(doomed) not in parts
    _check_tables(cluster, survivors)
    assert set(parts) == set(before) | {naming.partition_name(n) for n in survivors}  # nothing else, nothing twice
    for n in survivors:
        delete(cluster.controller_channel, n)
    assert our_partitions(cluster) == before
