"""Faults at random moments: no leaked partition, no lost or corrupted data, no double allocation, nothing stuck."""

from __future__ import annotations

import json

from harness.disks import partitions
from harness.drill import leftovers, run_drill
from tests.conftest import NODE, Cluster


def test_fault_drill(cluster: Cluster) -> None:
    before = [partitions(d.device) for d in cluster.pool_disks]
    procs = cluster.driver.processes
    report, _ = run_drill(
        cluster.api,
        [procs[f"agent-{NODE}"], procs["controller"]],
        lambda: cluster.controller_channel,
        lambda: cluster.node_channel,
        cluster.workdir,
        operations=16,
        seed=20261121,
        min_kills=3,
        disks=[d.device for d in cluster.pool_disks],
    )
    assert report.operations >= 16 and report.apiserver_restarts == 1
    assert report.verified == report.operations  # every volume's data read back intact before it was deleted
    assert sum(report.kills.values()) >= 3, report
    assert [partitions(d.device) for d in cluster.pool_disks] == before  # nothing leaked
    assert report.layout_checks > report.operations and not report.double_allocations, report.double_allocations
    assert leftovers(cluster.workdir) == []  # no mount or target left
    items = json.loads(cluster.api.kubectl("get", "devicevolumes", "-n", "openebs", "-o", "json"))["items"]
    assert [i["metadata"]["name"] for i in items] == []  # nothing stuck
