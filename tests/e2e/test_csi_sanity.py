"""The kubernetes-csi conformance suite against the real controller and agent, in mount and block modes."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest

from harness.tools import ARTIFACTS, Tools
from tests.conftest import Cluster
from tests.e2e.nodes import own_node

# btrfs (below) needs 114 MiB at least.
SIZE = 128 << 20
NODE = "node-sanity"
SANITY_POOL = "sanity"  # only this node has it, so every volume csi-sanity makes lands where it publishes


@pytest.fixture(scope="module")
def sanity_agent(cluster: Cluster) -> Iterator[str]:
    """An agent of its own whose filesystem default is btrfs: ext4 grows online only with CAP_SYS_RESOURCE, which
    this machine's sandbox withholds even from root, and csi-sanity's expansion spec uses the default filesystem."""
    with own_node(cluster, NODE, (1024, 1024), pool=SANITY_POOL, DEFAULT_FSTYPE="btrfs") as (agent, _):
        yield agent.socket


@pytest.mark.parametrize("access_type", ["mount", "block"])
def test_csi_sanity(cluster: Cluster, go_tools: Tools, sanity_agent: str, access_type: str) -> None:
    work = cluster.workdir / f"sanity-{access_type}"
    work.mkdir()
    params = work / "params.yaml"
    params.write_text(f"devname: {SANITY_POOL}\n")
    ARTIFACTS.mkdir(exist_ok=True)
    junit = ARTIFACTS / f"csi-sanity-{access_type}.xml"
    log = ARTIFACTS / f"csi-sanity-{access_type}.log"
    argv = [
        go_tools.csi_sanity,
        f"--csi.endpoint=unix://{sanity_agent}",
        f"--csi.controllerendpoint=unix://{cluster.driver.processes['controller'].socket}",
        f"--csi.mountdir={work / 'mnt'}",
        f"--csi.stagingdir={work / 'staging'}",
        f"--csi.testvolumesize={SIZE}",
        f"--csi.testvolumeexpandsize={2 * SIZE}",
        f"--csi.testvolumeparameters={params}",
        f"--csi.testvolumeaccesstype={access_type}",
        f"--ginkgo.junit-report={junit}",
        "--ginkgo.timeout=20m",
        "--ginkgo.no-color",
    ]
    with log.open("w") as out:
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=1500)
    text = log.read_text()
    failed = [line for line in text.splitlines() if "[FAILED]" in line or "[PANICKED]" in line]
    tail = "\n".join(failed) + "\n" + text[-3000:]
    assert done.returncode == 0, f"csi-sanity ({access_type}) failed:\n{tail}"
    suite = ET.parse(junit).getroot()
    failures = int(suite.get("failures", "0")) + int(suite.get("errors", "0"))
    assert failures == 0, tail
    ran = int(suite.get("tests", "0")) - int(suite.get("skipped", "0")) - int(suite.get("disabled", "0"))
    assert ran >= 66, f"only {ran} specs ran"
