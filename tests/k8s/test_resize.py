"""Volume expansion through Kubernetes: a grown claim reaches the driver through the real csi-resizer, the PV takes
the new size, and the filesystem step waits for a kubelet (there is none here). A growth with no room in place is a
readable Warning on the claim."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from csidriver.api.quantity import parse_quantity
from harness.kubernetes import KubeCluster
from harness.objects import (
    MIB,
    create_pvcs,
    delete_pvcs,
    device_volumes,
    pvc_body,
    storage_class_body,
    until,
    wait_bound,
)

CLASS = "grow-xfs"


def _expandable_class(kube: KubeCluster) -> None:
    kube.apply(storage_class_body(CLASS, {"devname": "ssd", "csi.storage.k8s.io/fstype": "xfs"}, expandable=True))


def _request(kube: KubeCluster, claim: str, size: int) -> None:
    patch = {"spec": {"resources": {"requests": {"storage": str(size)}}}}
    kube.api.kubectl("patch", "pvc", claim, "-n", "default", "--type=merge", "-p", json.dumps(patch))


def _resize_events(kube: KubeCluster, claim: str) -> list[dict[str, Any]]:
    events = kube.get("events", "--field-selector", f"involvedObject.name={claim}")["items"]
    return [e for e in events if e.get("reason") == "VolumeResizeFailed"]


def test_grown_claim_grows_the_pv_and_waits_for_the_node(kube: KubeCluster) -> None:
    _expandable_class(kube)
    claim = f"g-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [pvc_body(claim, CLASS, 320 * MIB)])
    try:
        pv = wait_bound(kube, [claim])[claim]["spec"]["volumeName"]
        start = time.monotonic()
        _request(kube, claim, 640 * MIB)

        def pv_grown() -> bool:
            return parse_quantity(kube.get("pv", pv, namespace=None)["spec"]["capacity"]["storage"]) == 640 * MIB

        until("PV capacity 640Mi", pv_grown)
        took = time.monotonic() - start
        # The partition itself holds the new size (the agent's report), not only the objects.
        assert device_volumes(kube)[pv]["status"]["capacityBytes"] >= 640 * MIB

        def pending() -> dict[str, Any] | None:
            status = kube.get("pvc", claim)["status"]
            types = {c["type"] for c in status.get("conditions", [])}
            return status if "FileSystemResizePending" in types else None

        # NodeExpandVolume is kubelet's call: without a kubelet the claim says so and keeps its old capacity.
        status = until("FileSystemResizePending", pending)
        assert parse_quantity(status["capacity"]["storage"]) == 320 * MIB
        assert parse_quantity(status["allocatedResources"]["storage"]) == 640 * MIB
        assert not _resize_events(kube, claim)
        print(f"claim grown to 640Mi -> PV capacity updated in {took:.2f} s")
    finally:
        delete_pvcs(kube, [claim])


def test_growth_without_room_in_place_is_a_warning_on_the_claim(kube: KubeCluster) -> None:
    """The pool disks are 1 GiB at most: 4 GiB can never fit after the partition. The claim gets a Warning naming
    the bytes available in place; the PV keeps its size."""
    _expandable_class(kube)
    claim = f"n-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [pvc_body(claim, CLASS, 320 * MIB)])
    try:
        pv = wait_bound(kube, [claim])[claim]["spec"]["volumeName"]
        _request(kube, claim, 4096 * MIB)
        events = until("a VolumeResizeFailed Event", lambda: _resize_events(kube, claim))
        message = events[0]["message"]
        assert events[0]["type"] == "Warning"
        assert "ResourceExhausted" in message, message
        assert "can grow in place to" in message and "bytes" in message, message
        assert parse_quantity(kube.get("pv", pv, namespace=None)["spec"]["capacity"]["storage"]) == 320 * MIB
        assert parse_quantity(kube.get("pvc", claim)["status"]["capacity"]["storage"]) == 320 * MIB
        print(f"VolumeResizeFailed: {message}")
    finally:
        delete_pvcs(kube, [claim])
