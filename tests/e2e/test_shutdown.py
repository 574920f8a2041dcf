"""SIGTERM stops a process cleanly: exit code 0, its sockets removed or closed, no unclosed API sessions."""

from __future__ import annotations

import signal

from harness.csi import POOL
from tests.conftest import Cluster


def _stopped_cleanly(log: str) -> None:
    for noise in ("Unclosed client session", "Unclosed connector", "Traceback", "Task was destroyed"):
        assert noise not in log, log[-3000:]


def test_sigterm_stops_controller_and_agent_cleanly(cluster: Cluster) -> None:
    disk = cluster.disks.pool(POOL, 32)
    cluster.api.add_node("node-term")
    for proc in (
        cluster.driver.controller("controller-term", LEASE_SECONDS="4"),
        cluster.driver.agent("node-term", [disk.device]),
    ):
        proc.wait_ready()
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(20) == 0, proc.log.read_text()[-3000:]
        _stopped_cleanly(proc.log.read_text())
    cluster.api.kubectl("delete", "devicenode", "-n", "openebs", "node-term", "--ignore-not-found")
    cluster.api.kubectl("delete", "node", "node-term", "--ignore-not-found")
