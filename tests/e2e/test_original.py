"""The original driver (openebs/device-localpv v0.9.0) runs as a test component on our CRDs: its controller creates
a DeviceVolume, its agent carves the partition on the test's pool disk, and DeleteVolume removes both.

A fresh API server of its own (not the session one): the original's agent acts on every DeviceVolume of its node in
`openebs`, and its controller schedules over every Node and DeviceVolume it sees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from harness.apiserver import ApiServer, keep_logs
from harness.csi import MIB, create, delete
from harness.disks import LoopDisk, LoopDisks, partitions
from harness.original import DRIVER_NAME, DRIVER_NAMESPACE, SECRETS_DIR, TOPOLOGY_KEY, Original, unique_pool
from harness.tools import ARTIFACTS, Tools

NODE = "orig-node-a"
PVC_NAMESPACE = "default"


@dataclass
class OriginalCluster:
    api: ApiServer
    original: Original
    disk: LoopDisk
    pool: str
    # Same pool, smaller (so the original's best fit would pick it first), not given to the agent.
    hidden: LoopDisk
    hidden_sha: str

    def controller(self) -> grpc.Channel:
        return self.original.processes["original-controller"].channel()

    def pvc(self, name: str, size: int) -> None:
        """A real PVC: the original's leak protection reads it and puts its finalizer on it."""
        claim = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": PVC_NAMESPACE},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "storageClassName": "original-device",
                "resources": {"requests": {"storage": str(size)}},
            },
        }
        self.api.kubectl("apply", "-f", "-", input=json.dumps(claim))

    def create(self, size: int = 32 * MIB) -> tuple[Any, str]:
        """CreateVolume through the original's controller, as csi-provisioner would call it; returns the volume
        and the PVC's name."""
        name = f"pvc-{uuid.uuid4()}"
        claim = "claim-" + name[4:12]
        self.pvc(claim, size)
        params = {
            "devname": self.pool,
            "csi.storage.k8s.io/pvc/name": claim,
            "csi.storage.k8s.io/pvc/namespace": PVC_NAMESPACE,
            "csi.storage.k8s.io/pv/name": name,
        }
        with self.controller() as ch:
            vol = create(ch, name, size, params=params, preferred=[{TOPOLOGY_KEY: NODE}])
        return vol, claim

    def get(self, kind: str, name: str, namespace: str = DRIVER_NAMESPACE) -> dict[str, Any] | None:
        out = self.api.kubectl("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None


@pytest.fixture(scope="module")
def orig(go_tools: Tools) -> Iterator[OriginalCluster]:
    if not os.access(go_tools.original, os.X_OK):
        pytest.fail(f"{go_tools.original} is missing: run hack/tools.sh original (or all)")
    for tool in ("parted", "wipefs", "fdisk", "lsblk", "unshare", "findmnt"):
        if not shutil.which(tool):
            pytest.fail(f"the original driver needs {tool} on the host")
    api = ApiServer(go_tools).start()
    disks = LoopDisks()
    original = Original(api, go_tools.original)
    try:
        api.install_driver_objects()
        api.add_node(NODE, labels={TOPOLOGY_KEY: NODE})
        pool = unique_pool()
        hidden = disks.pool(pool, 64)
        disk = disks.pool(pool, 256)
        original.install()
        original.controller().wait_ready()
        original.agent(NODE, [disk.device]).wait_ready()
        yield OriginalCluster(api, original, disk, pool, hidden, hidden.sha256())
    finally:
        original.keep_logs(ARTIFACTS / "original")
        original.cleanup()
        api.stop()
        keep_logs(api, ARTIFACTS / "original")
        disks.cleanup()


def _wait(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := check():
            return got
        time.sleep(0.5)
    raise AssertionError(f"{what} not seen after {timeout}s")


def test_original_agent_reports_only_the_test_disk(orig: OriginalCluster) -> None:
    node = _wait("the original's DeviceNode", lambda: orig.get("devicenode", NODE))
    assert [d["name"] for d in node.get("devices") or []] == [orig.pool]
    # The service-account bind stays inside the processes' mount namespaces.
    assert subprocess.run(["findmnt", SECRETS_DIR], capture_output=True).returncode != 0


def test_original_creates_and_deletes_a_volume(orig: OriginalCluster) -> None:
    vol, claim = orig.create(32 * MIB)
    assert vol.capacity_bytes == 32 * MIB
    assert dict(vol.accessible_topology[0].segments) == {TOPOLOGY_KEY: NODE}
    assert vol.volume_context["openebs.io/devicename"] == orig.pool

    dv = orig.get("devicevolume", vol.volume_id)
    assert dv is not None
    assert dv["spec"]["ownerNodeID"] == NODE and dv["spec"]["devname"] == orig.pool
    assert dv["spec"]["capacity"] == str(32 * MIB)
    assert dv["status"]["state"] == "Ready"
    assert dv["metadata"]["finalizers"] == ["device.openebs.io/finalizer"]

    parts = partitions(orig.disk.device)
    carved = [p for p in parts if p.get("name") == vol.volume_id[4:]]
    assert len(carved) == 1 and int(str(carved[0]["size"])) * 512 == 32 * MIB
    assert parts[0].get("name") == orig.pool  # the meta partition is left as it was

    pvc = orig.get("pvc", claim, PVC_NAMESPACE)
    assert pvc is not None and any(f.startswith(DRIVER_NAME + "/") for f in pvc["metadata"].get("finalizers", []))

    with orig.controller() as ch:
        delete(ch, vol.volume_id)
    assert orig.get("devicevolume", vol.volume_id) is None
    assert [p.get("name") for p in partitions(orig.disk.device)] == [orig.pool]
    assert orig.hidden.sha256() == orig.hidden_sha  # the device filter kept it out of reach
