"""Clone copy throughput against plain dd on the same devices: `.venv/bin/python -m bench.copy_throughput [--mib 512]`.

Two loop devices of the given size (backed by files on the same filesystem, as the tests' disks are); the source is
filled with random bytes once; then each copier runs three times, alternating, and the best and median of each are
printed with the ratio (target: the driver's copy at 80 % of dd's speed or better).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

from csidriver.host.clone import copy_device
from harness.disks import MIB, LoopDisks


def _dd(src: str, dst: str, length: int) -> None:
    subprocess.run(
        [
            "dd",
            f"if={src}",
            f"of={dst}",
            "bs=4M",
            f"count={length // (4 * MIB)}",
            "iflag=direct",
            "oflag=direct",
            "conv=fsync",
            "status=none",
        ],
        check=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    length = args.mib * MIB
    with LoopDisks() as disks:
        src, dst = disks.blank(args.mib).device, disks.blank(args.mib).device
        with open(src, "r+b") as f:
            for _ in range(args.mib // 16):
                f.write(os.urandom(16 * MIB))
            os.fsync(f.fileno())
        times: dict[str, list[float]] = {"driver copy": [], "dd bs=4M direct": []}
        for _ in range(args.rounds):
            for name, run in (("driver copy", copy_device), ("dd bs=4M direct", _dd)):
                start = time.perf_counter()
                run(src, dst, length)
                times[name].append(time.perf_counter() - start)
        print(f"copy of {args.mib} MiB between two loop devices, {args.rounds} rounds each")
        rates = {}
        for name, took in times.items():
            rates[name] = args.mib / statistics.median(took)
            print(f"  {name:18s} best {args.mib / min(took):7.0f} MiB/s   median {rates[name]:7.0f} MiB/s")
        ratio = rates["driver copy"] / rates["dd bs=4M direct"]
        print(f"  driver / dd (median): {ratio:.0%} (target >= 80 %)")


if __name__ == "__main__":
    main()
