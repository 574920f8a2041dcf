"""Snapshots as a user takes them, with deploy/'s csi-snapshotter, the cluster's snapshot-controller and a real
kubelet: a running Pod's claim is snapshotted while the Pod keeps writing (its filesystem is frozen only for the
copy), a new claim is restored from the VolumeSnapshot, and a second Pod reads the snapshot's files from it."""

from __future__ import annotations

import time

from harness.node import wait_for
from harness.workloads import DRIVER, NAMESPACE, NodeCluster

SC, SNAP_CLASS = "dlpv-snap-ext4", "dlpv-snapshots"
CLAIM, RESTORED, SNAPSHOT = "data-snap", "data-restored", "data-snap-1"
WRITER, READER = "snap-writer", "snap-reader"
# Writes a payload and its checksum once, then keeps appending to another file (a live workload during the copy).
WRITE = (
    "set -e; head -c 16777216 /dev/urandom > /data/payload; sha256sum /data/payload > /data/sum; sync; "
    "while true; do date >> /data/log; sleep 0.2; done"
)


def test_snapshot_of_a_running_pods_claim_restores_its_files(node: NodeCluster) -> None:
    node.storage_class(SC, "ssd", "ext4", "WaitForFirstConsumer")
    node.apply(
        {
            "apiVersion": "snapshot.storage.k8s.io/v1",
            "kind": "VolumeSnapshotClass",
            "metadata": {"name": SNAP_CLASS},
            "driver": DRIVER,
            "deletionPolicy": "Delete",
        }
    )
    node.pvc(CLAIM, SC, "256Mi")
    node.pod(WRITER, CLAIM, WRITE)
    try:
        node.wait_pod(WRITER, ("Running",))
        wait_for("payload written", lambda: node.kubectl("exec", WRITER, "--", "cat", "/data/sum", check=False), 60)
        start = time.monotonic()
        node.apply(
            {
                "apiVersion": "snapshot.storage.k8s.io/v1",
                "kind": "VolumeSnapshot",
                "metadata": {"name": SNAPSHOT, "namespace": "default"},
                "spec": {"volumeSnapshotClassName": SNAP_CLASS, "source": {"persistentVolumeClaimName": CLAIM}},
            }
        )

        def ready() -> bool:
            status = node.real.get("volumesnapshot", SNAPSHOT).get("status") or {}
            return status.get("readyToUse") is True

        wait_for("VolumeSnapshot readyToUse", ready, 120, interval=0.2)
        took = time.monotonic() - start
        # The writer kept running through the copy (its filesystem was thawed).
        lines = int(node.kubectl("exec", WRITER, "--", "sh", "-c", "wc -l < /data/log").strip())
        time.sleep(1)
        assert int(node.kubectl("exec", WRITER, "--", "sh", "-c", "wc -l < /data/log").strip()) > lines
        snaps = node.real.get("devicesnapshots", namespace=NAMESPACE)["items"]
        assert [s["status"]["state"] for s in snaps] == ["Ready"], snaps
        print(f"VolumeSnapshot of a running Pod's 256Mi ext4 claim ready in {took:.2f} s")

        node.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": RESTORED, "namespace": "default"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": SC,
                    "resources": {"requests": {"storage": "256Mi"}},
                    "dataSource": {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": SNAPSHOT},
                },
            }
        )
        out = node.run_pod(READER, RESTORED, "cd /data && sha256sum -c sum && ls")
        assert "payload: OK" in out, out
    finally:
        node.delete("pod", WRITER)
        node.delete("pod", READER)
        node.delete("pvc", RESTORED)
        node.kubectl("delete", "volumesnapshot", SNAPSHOT, "-n", "default", "--ignore-not-found", "--wait=true")
        node.delete("pvc", CLAIM)
        node.kubectl("delete", "volumesnapshotclass", SNAP_CLASS, "--ignore-not-found")
        node.kubectl("delete", "storageclass", SC, "--ignore-not-found")
    assert not node.real.get("devicesnapshots", namespace=NAMESPACE)["items"]
