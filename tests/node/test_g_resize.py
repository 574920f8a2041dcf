"""Online expansion as a user sees it, with deploy/'s csi-resizer and a real kubelet: a running Pod's xfs claim is
grown from 320Mi to 640Mi, and the Pod sees the bigger filesystem with its data intact, without a restart."""

from __future__ import annotations

import json
import time
from typing import Any

from csidriver.api.quantity import parse_quantity
from harness.node import wait_for
from harness.objects import storage_class_body
from harness.workloads import NAMESPACE, NodeCluster

MIB = 1 << 20
SC, CLAIM, POD = "dlpv-grow-xfs", "data-grow", "grower"
WRITER = "set -e; head -c 16777216 /dev/urandom > /data/payload; sha256sum /data/payload > /data/sum; sleep 3600"


def _fs_bytes(node: NodeCluster) -> int:
    """Size of the filesystem at /data as the Pod's own df sees it."""
    out = node.kubectl("exec", POD, "--", "df", "-B1", "--output=size", "/data")
    return int(out.split()[-1])


def _lease_holder(node: NodeCluster, name: str) -> str:
    lease = node.real.get("lease", name, namespace=NAMESPACE)
    return str(lease["spec"].get("holderIdentity", ""))


def test_running_pod_sees_its_claim_grow(node: NodeCluster) -> None:
    params = {"devname": "ssd", "csi.storage.k8s.io/fstype": "xfs"}
    node.apply(storage_class_body(SC, params, "WaitForFirstConsumer", expandable=True))
    node.pvc(CLAIM, SC, "320Mi")
    node.pod(POD, CLAIM, WRITER)
    try:
        pod = node.wait_pod(POD, ("Running",))
        started = pod["status"]["containerStatuses"][0].get("restartCount", 0)
        wait_for("payload written", lambda: node.kubectl("exec", POD, "--", "cat", "/data/sum", check=False), 60)
        before = _fs_bytes(node)
        assert before < 320 * MIB, before
        pv = node.pv_of(CLAIM)
        # Who serves: the driver leads with its Pod's csi-provisioner; csi-resizer has a Lease of its own.
        holders = {
            "provisioner": _lease_holder(node, "device-csi-openebs-io"),
            "resizer": _lease_holder(node, "external-resizer-device-csi-openebs-io"),
        }
        print(f"lease holders: {holders}")

        start = time.monotonic()
        patch = {"spec": {"resources": {"requests": {"storage": "640Mi"}}}}
        node.kubectl("patch", "pvc", CLAIM, "-n", "default", "--type=merge", "-p", json.dumps(patch))

        def pv_grown() -> bool:
            capacity = node.real.get("pv", pv, namespace=None)["spec"]["capacity"]["storage"]
            return parse_quantity(capacity) == 640 * MIB

        try:
            wait_for("PV capacity 640Mi", pv_grown, 90, interval=0.1)
        except TimeoutError as e:
            events = node.kubectl("get", "events", "-n", "default", "--field-selector", f"involvedObject.name={CLAIM}")
            raise AssertionError(f"{e} (lease holders {holders})\n{events}") from None
        pv_took = time.monotonic() - start

        def claim_grown() -> dict[str, Any] | None:
            status = node.real.get("pvc", CLAIM)["status"]
            done = parse_quantity(status.get("capacity", {}).get("storage", "0")) == 640 * MIB
            return status if done and not status.get("conditions") else None

        wait_for("claim capacity 640Mi, no resize condition left", claim_grown, 180, interval=0.2)
        after = _fs_bytes(node)
        fs_took = time.monotonic() - start
        print(f"640Mi asked -> PV capacity in {pv_took:.2f} s, filesystem grown in the Pod in {fs_took:.2f} s")
        print(f"df in the Pod: {before} -> {after} bytes")
        assert after > before + 300 * MIB, (before, after)

        check = node.kubectl("exec", POD, "--", "sh", "-c", "cd /data && sha256sum -c sum")
        assert "payload: OK" in check, check
        pod = node.real.get("pod", POD)
        assert pod["status"]["phase"] == "Running"
        assert pod["status"]["containerStatuses"][0].get("restartCount", 0) == started
        volume = node.real.get("devicevolume", pv, namespace=NAMESPACE)
        assert int(volume["status"]["capacityBytes"]) >= 640 * MIB
    finally:
        node.delete("pod", POD)
        node.delete("pvc", CLAIM)
        node.kubectl("delete", "storageclass", SC, "--ignore-not-found")
