"""One multi-node cluster for the Kubernetes-in-the-loop tests: three heterogeneous nodes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.apiserver import ApiServer
from harness.kubernetes import KubeCluster
from harness.tools import ARTIFACTS, Tools

MIB = 1 << 20


@pytest.fixture(scope="session")
def kube(go_tools: Tools) -> Iterator[KubeCluster]:
    for path in (go_tools.kube_controller_manager, go_tools.kube_scheduler, go_tools.csi_provisioner):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run hack/tools.sh all")
    api = ApiServer(go_tools).start()
    workdir = Path(tempfile.mkdtemp(prefix="dlpv-k8s-"))
    cluster = KubeCluster(api, go_tools, workdir)
    try:
        api.install_driver_objects()
        cluster.start_kube_components()
        cluster.start_driver()
        cluster.add_node("node-1", [("ssd", 1024), ("ssd", 1024)])  # two disks
        cluster.add_node("node-2", [("ssd", 256)])  # one small disk
        cluster.add_node("node-3", [])  # no pool disk at all
        yield cluster
    finally:
        cluster.stop()
        api.stop()
        dest = ARTIFACTS / "k8s"
        dest.mkdir(parents=True, exist_ok=True)
        for log in [*workdir.glob("*.log"), api.workdir / "kube-apiserver.log"]:
            if log.exists():
                shutil.copy(log, dest / log.name)
