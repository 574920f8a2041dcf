"""The user's main job on a real node: the driver installed from deploy/ runs in Pods on a real kubelet
(containerd + runc), and an application Pod gets a local volume through a PVC, writes to it, and a second Pod reads
the same bytes back. Everything is torn down at the end."""

from __future__ import annotations

import json
import subprocess
import time

from harness.tools import ROOT, tools
from harness.workloads import IMAGE, NAMESPACE, bring_up

APP = """apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: demo-data, namespace: default}
spec:
  accessModes: [ReadWriteOnce]
  storageClassName: openebs-device-ssd
  resources: {requests: {storage: 128Mi}}
---
apiVersion: v1
kind: Pod
metadata: {name: demo-writer, namespace: default}
spec:
  restartPolicy: Never
  containers:
    - name: app
      image: %(image)s
      imagePullPolicy: Never
      command: [sh, -c, "date > /data/hello && df -h /data && cat /data/hello"]
      volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, persistentVolumeClaim: {claimName: demo-data}}]
"""


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> None:
    step("building the images deploy/ names (cached after the first run) with hack/image.sh")
    images = subprocess.run([str(ROOT / "hack" / "image.sh")], check=True, capture_output=True, text=True)
    archives = images.stdout.split()
    for archive in archives:
        print("   " + archive)
    step("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd and a real kubelet;")
    print("    two 1 GiB loop disks become pool 'ssd'; then `kubectl apply -k` of deploy/ (overlay: the disk filter)")
    t = time.monotonic()
    cluster = bring_up(tools(), archives, ROOT / "artifacts" / "demo")
    try:
        print(f"   node Ready and driver installed in {time.monotonic() - t:.0f} s")
        print(cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide"))
        columns = "custom-columns=NODE:.metadata.name,DRIVERS:.spec.drivers[*].name"
        print(cluster.kubectl("get", "csinode", "-o", columns))
        print(cluster.kubectl("get", "devicenode", "-n", NAMESPACE))

        step("a user's PVC (StorageClass openebs-device-ssd, WaitForFirstConsumer) and a Pod that writes to it")
        t = time.monotonic()
        cluster.kubectl("apply", "-f", "-", input=APP % {"image": IMAGE})
        cluster.wait_pod("demo-writer", ("Succeeded",))
        print(f"   Pod done in {time.monotonic() - t:.1f} s; its output:")
        print(cluster.logs("demo-writer"))
        print(cluster.kubectl("get", "pvc,pv"))
        print(cluster.kubectl("get", "devicevolume", "-n", NAMESPACE, "-o", "wide"))
        cluster.delete("pod", "demo-writer")

        step("a second Pod on the same claim reads the file back")
        out = cluster.run_pod("demo-reader", "demo-data", "cat /data/hello; grep ' /data ' /proc/mounts")
        print(out)

        step("deleting the PVC: the partition goes and the space comes back")
        pv = cluster.pv_of("demo-data")
        cluster.delete("pvc", "demo-data")
        cluster.wait_gone("devicevolume", pv, namespace=NAMESPACE)
        free = {d["uuid"][:8]: d["free"] for d in cluster.device_node_disks()}
        print(f"   free space per disk: {json.dumps(free)}")
    finally:
        step("tearing down (kubelet, containers, mounts, loop disks, API server)")
        cluster.real.stop()


if __name__ == "__main__":
    main()
