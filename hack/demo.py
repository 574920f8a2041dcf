"""The driver's main job end to end on an embedded default: a local API server, loop-device disks, the
controller and one node agent. Creates a volume through CSI, publishes it, writes and reads a file, shows the
custom resources, then cleans everything up."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import grpc

from harness.apiserver import ApiServer
from harness.csi import MIB, create, delete, mount_cap, publish, unpublish
from harness.disks import LoopDisks
from harness.driver import Driver
from harness.tools import tools

NODE = "demo-node"


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="dlpv-demo-"))
    with ApiServer(tools()) as api, LoopDisks() as disks:
        step("starting etcd + kube-apiserver, applying CRDs, RBAC and the CSIDriver from deploy/")
        api.start()
        api.install_driver_objects()
        api.add_node(NODE)
        step("making two pool disks (GPT, partition #1 named 'ssd') from loop devices")
        pool = [disks.pool("ssd", 512), disks.pool("ssd", 512)]
        print("   " + ", ".join(d.device for d in pool))
        driver = Driver(api, work)
        try:
            step("starting the controller and the node agent (each with its own RBAC identity)")
            driver.controller().wait_ready()
            driver.agent(NODE, [d.device for d in pool]).wait_ready()
            ctl = grpc.insecure_channel(f"unix://{driver.processes['controller'].socket}")
            node = grpc.insecure_channel(f"unix://{driver.processes['agent-' + NODE].socket}")

            step("CreateVolume pvc-demo: 64 MiB in pool 'ssd', ext4")
            t = time.perf_counter()
            vol = create(ctl, "pvc-0d3c5e1a-2b4f-4c6d-8e9f-a0b1c2d3e4f5", 64 * MIB, cap=mount_cap("ext4"))
            print(
                f"   volume {vol.volume_id} ready on {dict(vol.accessible_topology[0].segments)} "
                f"in {(time.perf_counter() - t) * 1000:.0f} ms"
            )

            target = str(work / "pod-volume")
            step(f"NodePublishVolume at {target}: formats the blank partition and mounts it")
            publish(node, vol, target, mount_cap("ext4"))
            Path(target, "hello.txt").write_text("hello from a local partition\n")
            print(f"   wrote and read back: {Path(target, 'hello.txt').read_text().strip()!r}")
            print(
                "   "
                + next(line for line in Path("/proc/self/mounts").read_text().splitlines() if target in line).strip()
            )

            step("kubectl get devicevolumes,devicenodes -n openebs -o wide")
            print(api.kubectl("get", "devicevolumes,devicenodes", "-n", "openebs", "-o", "wide"))

            step("NodeUnpublishVolume, DeleteVolume: the partition is wiped and removed")
            unpublish(node, vol.volume_id, target)
            delete(ctl, vol.volume_id)
            print(api.kubectl("get", "devicevolumes", "-n", "openebs") or "   no DeviceVolumes left")
            print(f"   target removed: {not os.path.exists(target)}")
        finally:
            step("cleaning up: stopping processes, detaching loop devices")
            driver.stop()
    print("\ndemo finished")


if __name__ == "__main__":
    main()
