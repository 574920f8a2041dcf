"""A failed disk is visible on the claims whose volumes it holds."""

from __future__ import annotations

import json
import subprocess
import time
import uuid

from harness.kubernetes import KubeCluster
from harness.objects import MIB, create_pvcs, delete_pvcs, pvc_body, storage_class, wait_bound


def _wait(what: str, check: object, limit: float = 40) -> None:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.3)


def test_pvc_event_when_its_disk_fails(kube: KubeCluster) -> None:
    storage_class(kube, "dfail", nodes=["node-2"])
    claim = f"f-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [pvc_body(claim, "dfail", 8 * MIB)])
    wait_bound(kube, [claim])
    disk = kube.nodes["node-2"].disks[0]
    subprocess.run(["losetup", "--detach", disk.device], check=True)
    try:

        def event() -> bool:
            out = kube.api.kubectl(
                "get",
                "events",
                "-n",
                "default",
                "--field-selector",
                f"involvedObject.name={claim},reason=DiskFailed",
                "-o",
                "json",
            )
            return bool(json.loads(out)["items"])

        _wait("DiskFailed event on the claim", event)
        text = kube.api.kubectl("describe", "pvc", "-n", "default", claim)
        assert "DiskFailed" in text and "node-2" in text
    finally:
        # The disk comes back (same image, maybe another loop device): the volume is served again.
        disk.device = subprocess.run(
            ["losetup", "--find", "--show", "--partscan", str(disk.image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        kube.set_disks("node-2", [disk])

        def healthy() -> bool:
            devices = kube.get("devicenode", "node-2", namespace="openebs")["devices"]
            return [d["healthy"] for d in devices] == [True]

        _wait("node-2's disk healthy again", healthy)
        delete_pvcs(kube, [claim])
