"""The real API server refuses objects our readers could not use, through both served versions, and still takes
what the original driver writes; what the schema cannot express (free above size) is clamped by the readers."""

from __future__ import annotations

import json
import subprocess
import uuid
from typing import Any

import pytest

from harness.csi import POOL
from tests.conftest import Cluster
from tests.e2e.test_plugin import plugin

GUID = "5D3C0B1E-8F0A-4C7E-9F51-0E6B2B8D7A11"
VERSIONS = ("v1alpha1", "v1alpha2")


def _apply(cluster: Cluster, obj: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    kubectl = cluster.api.tools.kubectl
    argv = [kubectl, "--kubeconfig", cluster.api.identities["admin"].kubeconfig, "create", "-f", "-"]
    return subprocess.run(argv, input=json.dumps(obj), capture_output=True, text=True, check=False)


def _volume(version: str, capacity: object) -> dict[str, Any]:
    return {
        "apiVersion": f"local.openebs.io/{version}",
        "kind": "DeviceVolume",
        "metadata": {"name": f"pvc-{uuid.uuid4()}", "namespace": "openebs"},
        "spec": {"ownerNodeID": "nowhere", "capacity": capacity, "devname": POOL},
    }


def _node(version: str, **device: object) -> dict[str, Any]:
    row = {"name": POOL, "uuid": GUID, **device}
    return {
        "apiVersion": f"local.openebs.io/{version}",
        "kind": "DeviceNode",
        "metadata": {"name": f"schema-{uuid.uuid4().hex[:8]}", "namespace": "openebs"},
        "devices": [row],
    }


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("capacity", ["0", "007", "99999999999999999999", "9999999999999999999", "1Gi", "-1", ""])
def test_volume_capacity_must_be_a_positive_int64_of_bytes(cluster: Cluster, version: str, capacity: str) -> None:
    done = _apply(cluster, _volume(version, capacity))
    assert done.returncode != 0, f"{capacity!r} was accepted"
    assert "spec.capacity" in done.stderr, done.stderr


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("size", "free"), [("1500m", "1"), ("1n", "0"), ("1.5G", "1"), ("1e3", "1"), ("10Gi", "0.5")])
def test_node_sizes_must_be_whole_bytes(cluster: Cluster, version: str, size: str, free: str) -> None:
    done = _apply(cluster, _node(version, size=size, free=free))
    assert done.returncode != 0, f"size={size!r} free={free!r} was accepted"
    assert "devices[0]" in done.stderr, done.stderr


@pytest.mark.parametrize("version", VERSIONS)
def test_what_the_original_writes_is_accepted_and_a_shrink_is_refused(cluster: Cluster, version: str) -> None:
    """resource.Quantity of byte counts (BinarySI): "10Gi", "1536Mi", plain digits; capacity as decimal bytes."""
    objs = [_node(version, size="10Gi", free="1536Mi"), _node(version, size=1073741825, free="1073741825")]
    vol = _volume(version, str(10 << 30))
    try:
        for obj in [*objs, vol]:
            done = _apply(cluster, obj)
            assert done.returncode == 0, done.stderr
        name = vol["metadata"]["name"]
        shrink = json.dumps({"spec": {"capacity": str(1 << 30)}})
        done = subprocess.run(
            [
                cluster.api.tools.kubectl,
                "--kubeconfig",
                cluster.api.identities["admin"].kubeconfig,
                "patch",
                "devicevolume",
                "-n",
                "openebs",
                name,
                "--type=merge",
                "-p",
                shrink,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode != 0 and "never shrink" in done.stderr, done.stderr
    finally:
        for obj in objs:
            cluster.api.kubectl("delete", "devicenode", "-n", "openebs", obj["metadata"]["name"], "--ignore-not-found")
        cluster.api.kubectl("delete", "devicevolume", "-n", "openebs", vol["metadata"]["name"], "--ignore-not-found")


def test_plugin_survives_a_row_claiming_more_free_than_size(cluster: Cluster) -> None:
    obj = _node("v1alpha2", size="1Gi", free="2Gi", largestExtent="3Gi")
    done = _apply(cluster, obj)
    assert done.returncode == 0, done.stderr
    try:
        rows = json.loads(plugin(cluster, "nodes", "-o", "json").stdout)
        (row,) = [r for r in rows if r["node"] == obj["metadata"]["name"]]
        assert (row["size"], row["free"], row["largestExtent"]) == (1 << 30, 1 << 30, 1 << 30), row  # clamped
    finally:
        cluster.api.kubectl("delete", "devicenode", "-n", "openebs", obj["metadata"]["name"], "--ignore-not-found")
