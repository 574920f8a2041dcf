"""Snapshot, restore and clone throughput on real parts, against dd on the same disk:
`.venv/bin/python -m bench.snapshot_copy [--mib 1024] [--rounds 3]`.

kube-apiserver + etcd, the driver's processes, one loop pool disk. A raw block volume of the given size is filled
with random bytes; each round times, request to answer: CreateSnapshot of it (ready_to_use), CreateVolume from that
snapshot (a restore) and CreateVolume cloning the volume, then `dd bs=4M iflag=direct oflag=direct conv=fsync`
between two partitions of the same size on the same disk. Each copy is checked byte for byte against the source.
Prints the median MiB/s of each and its share of dd's (target: at least 80 %).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

from csidriver.api import naming
from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.apiserver import ApiServer
from harness.csi import MIB, block_cap, create, delete
from harness.disks import LoopDisks, partitions
from harness.driver import Driver
from harness.tools import tools

NODE = "bench-snap"


def _device(disk: str, gpt_name: str) -> str:
    return next(str(p["node"]) for p in partitions(disk) if p.get("name") == gpt_name)


def _digest(device: str, length: int) -> str:
    h = hashlib.sha256()
    with open(device, "rb") as f:
        left = length
        while left:
            chunk = f.read(min(left, 16 * MIB))
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.mib * MIB
    with ApiServer(tools()) as api, LoopDisks() as disks:
        api.start()
        api.install_driver_objects()
        api.add_node(NODE)
        pool = disks.pool("ssd", 8 * args.mib + 16)
        workdir = Path(tempfile.mkdtemp(prefix="dlpv-bench-snap-"))
        driver = Driver(api, workdir)
        try:
            driver.controller().wait_ready()
            driver.agent(NODE, [pool.device], LOG_LEVEL="WARNING").wait_ready()
            ch = grpc.insecure_channel(f"unix://{driver.processes['controller'].socket}")
            ctl = csi_pb2_grpc.ControllerStub(ch)
            source = create(ch, f"pvc-{uuid.uuid4()}", size, cap=block_cap())
            src_dev = _device(pool.device, source.volume_id.removeprefix("pvc-"))
            with open(src_dev, "r+b") as f:
                for _ in range(args.mib // 16):
                    f.write(os.urandom(16 * MIB))
                os.fsync(f.fileno())
            want = _digest(src_dev, size)
            spare = [create(ch, f"pvc-{uuid.uuid4()}", size, cap=block_cap()) for _ in range(2)]
            dd_src, dd_dst = (_device(pool.device, v.volume_id.removeprefix("pvc-")) for v in spare)
            subprocess.run(["dd", f"if={src_dev}", f"of={dd_src}", "bs=4M", "oflag=direct", "status=none"], check=True)

            def snapshot() -> str:
                got = ctl.CreateSnapshot(
                    csi_pb2.CreateSnapshotRequest(name=f"snapshot-{uuid.uuid4()}", source_volume_id=source.volume_id),
                    timeout=300,
                ).snapshot
                assert got.ready_to_use
                return _device(pool.device, naming.snapshot_partition_name(got.snapshot_id))

            def clone() -> str:
                req = csi_pb2.CreateVolumeRequest(
                    name=f"pvc-{uuid.uuid4()}", volume_capabilities=[block_cap()], parameters={"devname": "ssd"}
                )
                req.volume_content_source.volume.volume_id = source.volume_id
                vol = ctl.CreateVolume(req, timeout=300).volume
                return _device(pool.device, vol.volume_id.removeprefix("pvc-"))

            def dd() -> str:
                argv = ["dd", f"if={dd_src}", f"of={dd_dst}", "bs=4M", "iflag=direct", "oflag=direct", "conv=fsync"]
                subprocess.run([*argv, "status=none"], check=True)
                return dd_dst

            rates: dict[str, list[float]] = {}
            for _ in range(args.rounds):
                steps: list[tuple[str, Callable[[], str]]] = [
                    ("dd (same disk)", dd),
                    ("CreateSnapshot", snapshot),
                    ("clone (CreateVolume)", clone),
                ]
                for label, step in steps:
                    start = time.perf_counter()
                    copy = step()
                    rates.setdefault(label, []).append(args.mib / (time.perf_counter() - start))
                    assert _digest(copy, size) == want, f"{label}: the copy differs from its source"
                # The restore, timed from its snapshot's readiness: CreateVolume alone.
                snap_id = ctl.CreateSnapshot(
                    csi_pb2.CreateSnapshotRequest(name=f"snapshot-{uuid.uuid4()}", source_volume_id=source.volume_id),
                    timeout=300,
                ).snapshot.snapshot_id
                req = csi_pb2.CreateVolumeRequest(
                    name=f"pvc-{uuid.uuid4()}", volume_capabilities=[block_cap()], parameters={"devname": "ssd"}
                )
                req.volume_content_source.snapshot.snapshot_id = snap_id
                start = time.perf_counter()
                vol = ctl.CreateVolume(req, timeout=300).volume
                rates.setdefault("restore (CreateVolume)", []).append(args.mib / (time.perf_counter() - start))
                assert _digest(_device(pool.device, vol.volume_id.removeprefix("pvc-")), size) == want
                # Free the space for the next round: every copy made in this round goes.
                keep = {source.volume_id, *(v.volume_id for v in spare)}
                for v in ctl.ListVolumes(csi_pb2.ListVolumesRequest()).entries:
                    if v.volume.volume_id not in keep:
                        delete(ch, v.volume.volume_id)
                for e in ctl.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries:
                    ctl.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=e.snapshot.snapshot_id), timeout=60)
            print(
                f"copies of a {args.mib} MiB raw volume on one loop disk, {args.rounds} rounds"
                " (median, request to answer)"
            )
            base = statistics.median(rates["dd (same disk)"])
            for label, values in rates.items():
                med = statistics.median(values)
                print(f"  {label:24s} {med:7.0f} MiB/s   {med / base:5.0%} of dd")
        finally:
            driver.stop()


if __name__ == "__main__":
    main()
