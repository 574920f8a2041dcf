"""Kubernetes objects and waits for the Kubernetes-in-the-loop tests."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from harness.kubernetes import DRIVER, KubeCluster

MIB = 1 << 20


def storage_class_body(
    name: str,
    parameters: dict[str, str] | None = None,
    binding: str = "Immediate",
    nodes: list[str] | None = None,
    expandable: bool = False,
) -> dict[str, Any]:
    """A StorageClass of this driver (pool "ssd" unless `parameters` say otherwise); `nodes`: its allowedTopologies
    (volumes are made on those nodes only)."""
    sc: dict[str, Any] = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name},
        "provisioner": DRIVER,
        "parameters": {"devname": "ssd"} if parameters is None else parameters,
        "volumeBindingMode": binding,
        "reclaimPolicy": "Delete",
    }
    if nodes:
        sc["allowedTopologies"] = [{"matchLabelExpressions": [{"key": "openebs.io/nodename", "values": nodes}]}]
    if expandable:
        sc["allowVolumeExpansion"] = True
    return sc


def storage_class(
    kube: KubeCluster,
    name: str,
    binding: str = "Immediate",
    scheduler: str = "CapacityWeighted",
    nodes: list[str] | None = None,
    pool: str = "ssd",
) -> None:
    kube.apply(storage_class_body(name, {"devname": pool, "scheduler": scheduler}, binding, nodes))


def pvc_body(name: str, sc: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": sc,
            "resources": {"requests": {"storage": str(size)}},
        },
    }


def create_pvcs(kube: KubeCluster, bodies: list[dict[str, Any]]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": bodies}
    kube.api.kubectl("create", "-f", "-", input=json.dumps(items))


def pvcs(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in kube.get("pvc")["items"]}


def wait_bound(kube: KubeCluster, names: list[str], timeout: float = 120) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        got = pvcs(kube)
        if all(got.get(n, {}).get("status", {}).get("phase") == "Bound" for n in names):
            return got
        if time.monotonic() > deadline:
            pending = [n for n in names if got.get(n, {}).get("status", {}).get("phase") != "Bound"]
            raise AssertionError(f"{len(pending)} PVCs not Bound after {timeout}s: {pending[:5]}")
        time.sleep(0.2)


def pv_node(kube: KubeCluster, pvc: dict[str, Any]) -> str:
    pv = kube.get("pv", pvc["spec"]["volumeName"], namespace=None)
    term = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]
    return str(term["matchExpressions"][0]["values"][0])


def delete_pvcs(kube: KubeCluster, names: list[str], timeout: float = 120) -> None:
    """Deletes the claims and waits until their PVs and DeviceVolumes are gone."""
    if not names:
        return
    volumes = [p["spec"].get("volumeName") for n, p in pvcs(kube).items() if n in names]
    kube.api.kubectl("delete", "pvc", "-n", "default", "--wait=false", "--ignore-not-found", *names)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pvs = {p["metadata"]["name"] for p in kube.get("pv", namespace=None)["items"]}
        dvs = {d["metadata"]["name"] for d in kube.get("devicevolumes", namespace="openebs")["items"]}
        if not any(v in pvs or v in dvs for v in volumes if v) and not (set(names) & set(pvcs(kube))):
            return
        time.sleep(0.2)
    raise AssertionError("volumes not cleaned up in time")


def device_volumes(kube: KubeCluster) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in kube.get("devicevolumes", namespace="openebs")["items"]}


def until(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    """The first truthy result of `check`, polled every 0.1 s; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)
