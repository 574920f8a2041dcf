"""Online expansion latency on real parts: `.venv/bin/python -m bench.expansion [--rounds 5] [--fs xfs]`.

kube-apiserver + etcd, the driver's processes, one loop pool disk. Each round: a 1 GiB volume of the given
filesystem is created and published (mounted), a file is written, then ControllerExpandVolume to 2 GiB followed by
NodeExpandVolume is timed (request to filesystem grown, as kubelet sees it), the file is checked, and the volume
deleted. Prints p50 and max of the two steps and of the whole. ext4 needs CAP_SYS_RESOURCE for an online resize,
which some sandboxes withhold even from root; xfs and btrfs do not.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import grpc

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.apiserver import ApiServer
from harness.csi import MIB, create, delete, mount_cap, publish, unpublish
from harness.disks import LoopDisks
from harness.driver import Driver
from harness.tools import tools

NODE = "bench-grow"
GIB = 1024 * MIB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--fs", default="xfs", choices=["ext4", "xfs", "btrfs"])
    args = ap.parse_args()
    with ApiServer(tools()) as api, LoopDisks() as disks:
        api.start()
        api.install_driver_objects()
        api.add_node(NODE)
        pool = disks.pool("ssd", 4 * 1024 + 16)
        workdir = Path(tempfile.mkdtemp(prefix="dlpv-bench-grow-"))
        driver = Driver(api, workdir)
        try:
            driver.controller().wait_ready()
            agent = driver.agent(NODE, [pool.device], LOG_LEVEL="WARNING")
            agent.wait_ready()
            ctl_ch = grpc.insecure_channel(f"unix://{driver.processes['controller'].socket}")
            node_ch = grpc.insecure_channel(f"unix://{agent.socket}")
            ctl, node = csi_pb2_grpc.ControllerStub(ctl_ch), csi_pb2_grpc.NodeStub(node_ch)
            cap = mount_cap(args.fs)
            controller_ms, node_ms, total_ms = [], [], []
            for _ in range(args.rounds):
                vol = create(ctl_ch, f"pvc-{uuid.uuid4()}", GIB, cap=cap)
                target = str(workdir / f"t-{vol.volume_id}")
                publish(node_ch, vol, target, cap=cap)
                data = os.urandom(MIB)
                Path(target, "data").write_bytes(data)
                start = time.perf_counter()
                ctl.ControllerExpandVolume(
                    csi_pb2.ControllerExpandVolumeRequest(
                        volume_id=vol.volume_id,
                        capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GIB),
                        volume_capability=cap,
                    ),
                    timeout=60,
                )
                mid = time.perf_counter()
                node.NodeExpandVolume(
                    csi_pb2.NodeExpandVolumeRequest(
                        volume_id=vol.volume_id,
                        volume_path=target,
                        capacity_range=csi_pb2.CapacityRange(required_bytes=2 * GIB),
                    ),
                    timeout=60,
                )
                end = time.perf_counter()
                st = os.statvfs(target)
                assert st.f_blocks * st.f_frsize > 1.5 * GIB, "the filesystem did not grow"
                assert Path(target, "data").read_bytes() == data
                controller_ms.append((mid - start) * 1000)
                node_ms.append((end - mid) * 1000)
                total_ms.append((end - start) * 1000)
                unpublish(node_ch, vol.volume_id, target)
                delete(ctl_ch, vol.volume_id)
            print(f"online expansion of a mounted 1 GiB {args.fs} volume to 2 GiB, {args.rounds} rounds")
            for label, values in (
                ("ControllerExpandVolume (partition grown)", controller_ms),
                ("NodeExpandVolume (filesystem grown)", node_ms),
                ("request to filesystem grown", total_ms),
            ):
                print(f"  {label:42s} p50 {statistics.median(values):7.1f} ms   max {max(values):7.1f} ms")
        finally:
            driver.stop()


if __name__ == "__main__":
    main()
