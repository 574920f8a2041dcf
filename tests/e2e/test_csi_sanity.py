"""The kubernetes-csi conformance suite against the real controller and agent, in mount and block modes."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import ARTIFACTS, POOL, Cluster
from tests.harness.tools import Tools

SIZE = 64 << 20


@pytest.mark.parametrize("access_type", ["mount", "block"])
def test_csi_sanity(cluster: Cluster, go_tools: Tools, access_type: str) -> None:
    work = cluster.workdir / f"sanity-{access_type}"
    work.mkdir()
    params = work / "params.yaml"
    params.write_text(f"devname: {POOL}\n")
    ARTIFACTS.mkdir(exist_ok=True)
    junit = ARTIFACTS / f"csi-sanity-{access_type}.xml"
    log = ARTIFACTS / f"csi-sanity-{access_type}.log"
    argv = [
        go_tools.csi_sanity,
        f"--csi.endpoint=unix://{cluster.driver.processes['agent-node-a'].socket}",
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
    assert int(suite.get("tests", "0")) > 30
