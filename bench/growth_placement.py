"""How often a volume can grow in place under each placement rule: a simulation on the agent's own placement code.

One pool disk (GPT, the meta partition first) lives through a random workload of creations, deletions and growths;
each placement rule (`BestFit`, the default, and `RoomToGrow`, for StorageClasses that allow expansion) runs the
same kind of workload with the same seeds. A growth succeeds when the room right after the partition holds the new
size (what `PartitionManager.grow` requires); a creation fails when no free extent holds it. The placement and room
functions are the agent's (`csidriver.host.partitions`), not copies, so the figures follow the code.

    python -m bench.growth_placement [--trials 200] [--operations 400] [--disk-gib 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from csidriver.host.parsers import MIB, DiskTable, Extent, PartitionEntry
from csidriver.host.partitions import InsufficientCapacity, best_fit, room_after, roomy_fit

SECTOR = 512
Fit = Callable[[DiskTable, int], Extent]


def _disk(gib: int) -> DiskTable:
    sectors = gib * (1 << 30) // SECTOR
    meta = PartitionEntry(1, "", MIB // SECTOR, 9 * MIB // SECTOR, "", str(uuid.uuid4()), "pool", "")
    return DiskTable("gpt", str(uuid.uuid4()), SECTOR, 2048, sectors - 34, 128, (meta,))


def _number(table: DiskTable) -> int:
    used = {p.number for p in table.partitions}
    return next(n for n in range(2, table.table_length + 2) if n not in used)


@dataclass
class Tally:
    creates: int = 0
    creates_refused: int = 0
    grows: int = 0
    grows_in_place: int = 0
    fill: float = 0.0  # share of the disk allocated at the end of each trial, summed

    def add(self, other: Tally) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


def run_trial(fit: Fit, seed: int, operations: int, disk_gib: int) -> Tally:
    rng = random.Random(seed)
    table = _disk(disk_gib)
    usable = (table.last_lba + 1 - table.first_lba) * SECTOR
    tally = Tally()
    for _ in range(operations):
        volumes = [p for p in table.partitions if p.number != 1]
        used = sum(p.size for p in volumes) * SECTOR
        roll = rng.random()
        # Fill to about 70 %, then a steady mix: 40 % creations, 30 % deletions, 30 % growths.
        if not volumes or (used < 0.7 * usable and roll < 0.7) or roll < 0.4:
            size = int(math.exp(rng.uniform(math.log(64), math.log(1024)))) * MIB  # 64 MiB-1 GiB, log-uniform
            tally.creates += 1
            try:
                extent = fit(table, size)
            except InsufficientCapacity:
                tally.creates_refused += 1
                continue
            entry = PartitionEntry(
                _number(table), "", extent.start_bytes // SECTOR, size // SECTOR, "", "", uuid.uuid4().hex[:8], ""
            )
            table = dataclasses.replace(table, partitions=(*table.partitions, entry))
        elif roll < 0.7:
            gone = rng.choice(volumes)
            table = dataclasses.replace(table, partitions=tuple(p for p in table.partitions if p is not gone))
        else:
            vol = rng.choice(volumes)
            new = vol.size * SECTOR * rng.choice((5, 6, 8)) // 4 // MIB * MIB  # +25 %, +50 % or doubled
            tally.grows += 1
            if (room_after(table, vol) - vol.start) * SECTOR >= new:
                tally.grows_in_place += 1
                grown = dataclasses.replace(vol, size=new // SECTOR)
                table = dataclasses.replace(table, partitions=tuple(grown if p is vol else p for p in table.partitions))
    tally.fill = sum(p.size for p in table.partitions if p.number != 1) * SECTOR / usable
    return tally


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--operations", type=int, default=400)
    ap.add_argument("--disk-gib", type=int, default=20)
    args = ap.parse_args()
    print(
        f"{args.trials} trials of {args.operations} operations on a {args.disk_gib} GiB pool disk "
        "(volumes 64 MiB-1 GiB log-uniform; growths +25/+50/+100 %)"
    )
    print(f"{'placement':<12} {'grown in place':>15} {'creations refused':>18} {'disk filled':>12}")
    for label, fit in (("BestFit", best_fit), ("RoomToGrow", roomy_fit)):
        total = Tally()
        for trial in range(args.trials):
            total.add(run_trial(fit, trial, args.operations, args.disk_gib))
        print(
            f"{label:<12} {100 * total.grows_in_place / max(total.grows, 1):>14.1f}% "
            f"{100 * total.creates_refused / max(total.creates, 1):>17.1f}% "
            f"{100 * total.fill / args.trials:>11.1f}%"
        )


if __name__ == "__main__":
    main()
