"""Session fixtures: one real API server, loop disks and the driver's processes, shared by the e2e tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from harness.apiserver import ApiServer, free_port, keep_logs
from harness.csi import POOL
from harness.disks import LoopDisk, LoopDisks
from harness.driver import Driver
from harness.tools import ARTIFACTS, Tools, tools

NODE = "node-a"


def _e2e_possible() -> str | None:
    if os.geteuid() != 0:
        return "needs root (loop devices, partitions, mounts)"
    if shutil.which("losetup") is None:
        return "needs util-linux losetup"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    why = _e2e_possible()
    for item in items:
        if any(part in str(item.fspath) for part in ("/e2e/", "/k8s/", "/node/", "/bench/", "/contract/")):
            item.add_marker(pytest.mark.e2e)
            if why:
                item.add_marker(pytest.mark.skip(reason=why))


@pytest.fixture(scope="session")
def go_tools() -> Tools:
    t = tools()
    for path in (t.etcd, t.kube_apiserver, t.kubectl, t.csi_sanity):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run hack/tools.sh all (the README's test command does)")
    return t


@pytest.fixture(scope="session")
def api(go_tools: Tools) -> Iterator[ApiServer]:
    server = ApiServer(go_tools).start()
    try:
        server.install_driver_objects()
        server.add_node(NODE)
        yield server
    finally:
        server.stop()
        keep_logs(server, ARTIFACTS)


@dataclass
class Cluster:
    api: ApiServer
    driver: Driver
    disks: LoopDisks
    pool_disks: list[LoopDisk]
    foreign: LoopDisk
    foreign_sha: str
    lookalike: LoopDisk
    lookalike_sha: str
    workdir: Path
    metrics_ports: dict[str, int]

    @property
    def controller_channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.driver.processes['controller'].socket}")

    @property
    def node_channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.driver.processes['agent-' + NODE].socket}")

    def restart(self, name: str) -> None:
        proc = self.driver.processes[name]
        proc.kill()
        proc.start().wait_ready()


@pytest.fixture(scope="session")
def cluster(api: ApiServer) -> Iterator[Cluster]:
    workdir = Path(tempfile.mkdtemp(prefix="dlpv-e2e-"))
    disks = LoopDisks()
    driver = Driver(api, workdir)
    try:
        pool_disks = [disks.pool(POOL, 1024), disks.pool(POOL, 1024, msftdata=True)]
        foreign = disks.foreign_ext4(64)
        lookalike = disks.pool("nvme-" + POOL + "2", 256)  # an unanchored match would take it
        ports = {"controller": free_port(), "agent": free_port()}
        driver.controller(LEASE_SECONDS="4", METRICS_ADDRESS=f"127.0.0.1:{ports['controller']}").wait_ready()
        # The agent sees every test disk; only the pool disks may ever be touched.
        driver.agent(
            NODE, [d.device for d in [*pool_disks, foreign, lookalike]], METRICS_ADDRESS=f"127.0.0.1:{ports['agent']}"
        ).wait_ready()
        yield Cluster(
            api, driver, disks, pool_disks, foreign, foreign.sha256(), lookalike, lookalike.sha256(), workdir, ports
        )
    finally:
        driver.stop()
        ARTIFACTS.mkdir(exist_ok=True)
        for log in workdir.glob("*.log"):
            shutil.copy(log, ARTIFACTS / log.name)
        disks.cleanup()
