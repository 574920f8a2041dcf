"""The documented metrics are served by the real processes."""

from __future__ import annotations

import urllib.request
import uuid

from harness.csi import MIB, create, delete
from tests.conftest import Cluster


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        body: bytes = reply.read()
    return body.decode()


def test_metrics(cluster: Cluster) -> None:
    name = f"pvc-{uuid.uuid4()}"
    create(cluster.controller_channel, name, MIB)
    try:
        ctl = scrape(cluster.metrics_ports["controller"])
        assert 'device_localpv_rpc_total{code="OK",method="CreateVolume"}' in ctl
        assert 'device_localpv_volumes{node="node-a",pool="ssd"}' in ctl
        assert "device_localpv_provisioned_bytes" in ctl and 'device_localpv_api_requests{verb="create"}' in ctl
        agent = scrape(cluster.metrics_ports["agent"])
        for metric in (
            "device_localpv_disk_free{",
            "device_localpv_disk_largest_extent{",
            "device_localpv_disk_free_entries{",
            "device_localpv_reconcile_queue_depth ",
            "device_localpv_reconcile_retries_total ",
            "device_localpv_deletions_deferred_total ",
            "device_localpv_deletion_brake_engaged ",
            'device_localpv_api_requests{verb="watch"}',
        ):
            assert metric in agent, metric
    finally:
        delete(cluster.controller_channel, name)
