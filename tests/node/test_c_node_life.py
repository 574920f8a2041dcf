"""A volume in use by a running Pod while the node's life goes on: Bidirectional mount propagation, the agent Pod
replaced, kubelet restarted, kubelet's volume stats, and a clean unpublish at the end."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.disks import partitions
from harness.node import KUBELET_DIR, mounts_under, wait_for
from harness.workloads import NAMESPACE, NodeCluster

CLAIM, POD, SC = "life", "life-app", "dlpv-life"
WRITER = "i=0; while true; do i=$((i+1)); echo line-$i >> /data/log; sync /data/log; sleep 0.2; done"


@dataclass
class App:
    pv: str
    uid: str
    target: str  # where kubelet asked the driver to publish the volume
    device: str  # the partition's device node on the host


@pytest.fixture(scope="module")
def app(node: NodeCluster) -> Iterator[App]:
    node.storage_class(SC, "ssd", "ext4", "WaitForFirstConsumer")
    node.pvc(CLAIM, SC, "64Mi")
    node.pod(POD, CLAIM, WRITER)
    pod = node.wait_pod(POD, ("Running",))
    pv = node.pv_of(CLAIM)
    uid = pod["metadata"]["uid"]
    target = f"{KUBELET_DIR}/pods/{uid}/volumes/kubernetes.io~csi/{pv}/mount"
    device = node.real.get("devicevolume", pv, namespace=NAMESPACE)["status"]["devicePath"]
    try:
        yield App(pv, uid, target, device)
    finally:
        node.delete("pod", POD)
        node.delete("pvc", CLAIM)
        node.kubectl("delete", "storageclass", SC, "--ignore-not-found")


def lines_written(node: NodeCluster) -> int:
    return int(node.kubectl("exec", POD, "--", "sh", "-c", "wc -l < /data/log").strip())


def host_mounts_of(device: str) -> list[str]:
    """Mount points on the host whose source is `device` (by device number, like the kernel sees it)."""
    rdev = os.stat(device).st_rdev
    want = f"{os.major(rdev)}:{os.minor(rdev)}"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[2] == want:
                points.append(fields[4])
    return points


def test_mount_made_in_the_agent_reaches_host_and_pod(node: NodeCluster, app: App) -> None:
    assert app.target in mounts_under(str(KUBELET_DIR / "pods" / app.uid)), "publish target not mounted on the host"
    assert host_mounts_of(app.device) == [app.target]
    inside = node.kubectl("exec", POD, "--", "grep", " /data ", "/proc/self/mounts")
    assert " ext4 rw," in inside, inside
    rdev = os.stat(app.device).st_rdev
    seen = node.kubectl("exec", POD, "--", "mountpoint", "-d", "/data").strip()
    assert seen == f"{os.major(rdev)}:{os.minor(rdev)}"


def test_agent_pod_replaced_while_the_app_writes(node: NodeCluster, app: App) -> None:
    old = node.agent_pod()
    before = lines_written(node)
    node.kubectl("delete", "pod", "-n", NAMESPACE, old, "--wait=true", "--timeout=60s")
    new = node.agent_pod()
    assert new != old
    wait_for("app keeps writing", lambda: lines_written(node) > before + 10, 30)
    assert host_mounts_of(app.device) == [app.target], "the app's mount changed while the agent was replaced"
    assert node.real.get("devicevolume", app.pv, namespace=NAMESPACE)["status"]["state"] == "Ready"
    wait_for("new agent registered", lambda: "kubelet registered the plugin" in node.logs(new, NAMESPACE), 60)


def test_kubelet_restart_while_the_app_writes(node: NodeCluster, app: App) -> None:
    assert node.real.kubelet is not None
    before = lines_written(node)
    node.real.kubelet.restart()
    wait_for("node Ready again", node.real.node_ready, 120)
    wait_for("app keeps writing", lambda: lines_written(node) > before + 10, 60)
    pod = node.real.get("pod", POD)
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    assert host_mounts_of(app.device) == [app.target]
    node.wait_driver_ready()


def kubelet_volume_stats(node: NodeCluster) -> dict[str, float]:
    assert node.real.kubelet is not None
    text = node.real.kubelet.get("/metrics")
    found = {}
    for line in text.splitlines():
        if line.startswith("kubelet_volume_stats_") and f'persistentvolumeclaim="{CLAIM}"' in line:
            found[line.split("{", 1)[0]] = float(line.rsplit(" ", 1)[1])
    return found


def driver_volume_stats(app: App) -> dict[str, float]:
    sock = f"unix://{KUBELET_DIR}/plugins/device-localpv/csi.sock"
    with grpc.insecure_channel(sock) as ch:
        reply = csi_pb2_grpc.NodeStub(ch).NodeGetVolumeStats(
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=app.pv, volume_path=app.target), timeout=10
        )
    by_unit = {u.unit: u for u in reply.usage}
    b, i = by_unit[csi_pb2.VolumeUsage.BYTES], by_unit[csi_pb2.VolumeUsage.INODES]
    return {
        "kubelet_volume_stats_capacity_bytes": b.total,
        "kubelet_volume_stats_available_bytes": b.available,
        "kubelet_volume_stats_used_bytes": b.used,
        "kubelet_volume_stats_inodes": i.total,
        "kubelet_volume_stats_inodes_free": i.available,
        "kubelet_volume_stats_inodes_used": i.used,
    }


def test_kubelet_volume_stats_are_the_drivers(node: NodeCluster, app: App) -> None:
    """kubelet's metrics come from NodeGetVolumeStats. The writer keeps the byte counts moving, so compare the
    fixed figures exactly and the moving ones as a pair read close together."""

    def same() -> tuple[dict[str, float], dict[str, float]] | None:
        kubelet = kubelet_volume_stats(node)
        driver = driver_volume_stats(app)
        if not kubelet:
            return None
        fixed = ("kubelet_volume_stats_capacity_bytes", "kubelet_volume_stats_inodes")
        assert {k: kubelet[k] for k in fixed} == {k: driver[k] for k in fixed}, (kubelet, driver)
        assert set(driver) <= set(kubelet), kubelet
        return kubelet, driver

    pair = wait_for("kubelet volume stats", same, 90, interval=2)
    assert isinstance(pair, tuple)
    kubelet, driver = pair
    assert kubelet["kubelet_volume_stats_capacity_bytes"] > 50 * (1 << 20)
    assert abs(kubelet["kubelet_volume_stats_used_bytes"] - driver["kubelet_volume_stats_used_bytes"]) < 8 << 20


def test_unpublish_leaves_no_mount(node: NodeCluster, app: App) -> None:
    node.delete("pod", POD)
    node.wait_gone("pod", POD, "default")
    assert host_mounts_of(app.device) == [], "the volume is still mounted on the host"
    assert not mounts_under(str(KUBELET_DIR / "pods" / app.uid))
    disk = node.real.get("devicevolume", app.pv, namespace=NAMESPACE)["status"]["diskPath"]
    name = node.real.get("devicevolume", app.pv, namespace=NAMESPACE)["status"]["partitionName"]
    node.delete("pvc", CLAIM)
    node.wait_gone("devicevolume", app.pv, namespace=NAMESPACE)
    assert not any(p.get("name") == name for p in partitions(disk))
