"""Every benchmark in one table, with its target beside each figure: `.venv/bin/python -m bench.summary [--quick]`.

Runs each benchmark as its own process, one after another (they time real processes and disks, so never two at once),
reads the figures from what it prints, and prints one table: figure, measured value, target, and whether the target
is met (`ok`, `MISSED`, or `-` where there is no target). A benchmark that fails or prints nothing readable shows as
`not measured` with its exit status, so a broken benchmark is as visible as a regression. The full outputs go to
artifacts/bench/<name>.log. `--quick` runs smaller sizes (a smoke run: figures are indicative only). The real-node
benchmark (bench.node_pods) and the fault drill are left out: they need minutes of their own; run them directly.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "artifacts" / "bench"


@dataclass(frozen=True)
class Figure:
    label: str
    pattern: str  # regex with one group: the number
    unit: str
    target: float | None = None
    higher_is_better: bool = False

    def read(self, text: str) -> float | None:
        m = re.search(self.pattern, text)
        return float(m.group(1)) if m else None

    def verdict(self, value: float) -> str:
        if self.target is None:
            return "-"
        ok = value >= self.target if self.higher_is_better else value <= self.target
        return "ok" if ok else "MISSED"

    def shown_target(self) -> str:
        if self.target is None:
            return ""
        return f"{'>=' if self.higher_is_better else '<='} {self.target:g} {self.unit}"


@dataclass(frozen=True)
class Bench:
    module: str
    args: tuple[str, ...]
    quick: tuple[str, ...]
    figures: tuple[Figure, ...]
    timeout: float = 1800


BENCHES = (
    Bench(
        "bench.provisioning",
        (),
        ("--sequential", "20", "--resident", "50", "--idle", "20"),
        (
            Figure("create-to-ready p50", r"create-to-ready latency.*?p50 ([\d.]+) ms", "ms"),
            Figure("100 concurrent CreateVolume, one node", r"([\d.]+) s wall", "s", 3),
            Figure("agent RSS after start-up", r"agent resident memory: ([\d.]+) MiB", "MiB", 50),
            Figure(
                "agent RSS with N volumes", r"agent resident memory: [\d.]+ MiB after start-up, ([\d.]+) MiB", "MiB", 55
            ),
            Figure("idle agent API requests per window", r"idle agent over .*?: ([\d.]+) API requests", "req"),
        ),
    ),
    Bench(
        "bench.kubernetes",
        (),
        ("--sequential", "20", "--burst", "20"),
        (
            Figure("PVC -> Bound p50 (watch)", r"PVC created -> Bound.*?p50 ([\d.]+) ms", "ms", 500),
            Figure("PVCs at once -> all Bound", r"PVCs created at once.*?all Bound ([\d.]+) s", "s"),
            Figure("API requests per volume lifecycle", r"driver total ([\d.]+) per volume", "req", 6),
            Figure("... with the lease renewals made meanwhile", r"([\d.]+) per volume with them", "req"),
            Figure("driver LISTs during the run", r"LIST calls by the driver during the run: (\d+)", "", 0),
        ),
    ),
    Bench(
        "bench.scheduler_scale",
        (),
        ("--nodes", "500", "--volumes", "10000"),
        (
            Figure("scheduler's cache (tracemalloc), 5,000 nodes and 100,000 volumes", r"cache holds (\d+) MiB", "MiB"),
            Figure("placement decision p99", r"placement decision.*?p99 ([\d.]+) ms", "ms"),
        ),
    ),
    Bench(
        "bench.controller_scale",
        (),
        ("--nodes", "500", "--volumes", "10000"),
        (
            Figure("controller RSS idle", r"controller idle.*?RSS ([\d.]+) MiB", "MiB", 55),
            Figure(
                "controller RSS, 5,000 nodes and 100,000 volumes", r"controller with.*?RSS ([\d.]+) MiB", "MiB", 160
            ),
            Figure("controller CPU to sync them", r"controller with.*?ready in [\d.]+ s, ([\d.]+) s of CPU", "s", 5),
        ),
        timeout=2400,
    ),
    Bench(
        "bench.expansion",
        ("--rounds", "5"),
        ("--rounds", "2"),
        (
            Figure(
                "online growth, request to filesystem grown p50",
                r"request to filesystem grown\s+p50\s+([\d.]+) ms",
                "ms",
            ),
        ),
    ),
    Bench(
        "bench.copy_throughput",
        (),
        ("--mib", "128", "--rounds", "1"),
        (Figure("clone copy vs dd", r"driver / dd \(median\): (\d+)%", "%", 80, True),),
    ),
    Bench(
        "bench.snapshot_copy",
        (),
        ("--mib", "256", "--rounds", "1"),
        (
            Figure("CreateSnapshot vs dd", r"CreateSnapshot\s+\d+ MiB/s\s+(\d+)% of dd", "%", 80, True),
            Figure("restore vs dd", r"restore \(CreateVolume\)\s+\d+ MiB/s\s+(\d+)% of dd", "%", 80, True),
            Figure("clone vs dd", r"clone \(CreateVolume\)\s+\d+ MiB/s\s+(\d+)% of dd", "%", 80, True),
        ),
    ),
    Bench(
        "bench.growth_placement",
        (),
        ("--trials", "40"),
        (
            Figure("growths in place, BestFit", r"BestFit\s+([\d.]+)%", "%"),
            Figure("growths in place, RoomToGrow", r"RoomToGrow\s+([\d.]+)%", "%"),
        ),
    ),
)


def run(bench: Bench, quick: bool) -> tuple[str, int, float]:
    OUT.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", bench.module, *(bench.quick if quick else bench.args)]
    start = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=bench.timeout, check=False)
        text, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as e:
        partial = [p.decode(errors="replace") if isinstance(p, bytes) else p or "" for p in (e.stdout, e.stderr)]
        text, code = f"{''.join(partial)}\ntimed out after {bench.timeout:.0f} s", -1
    took = time.monotonic() - start
    (OUT / f"{bench.module.split('.')[-1]}.log").write_text(text)
    return text, code, took


def table(rows: list[tuple[str, str, str, str]]) -> str:
    head = ("figure", "measured", "target", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))

    return "\n".join([line(head), line(tuple("-" * w for w in widths)), *(line(r) for r in rows)]).rstrip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run, figures indicative only")
    ap.add_argument("--only", nargs="*", default=None, help="module names to run (default: all)")
    args = ap.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    missed = 0
    for bench in BENCHES:
        if args.only and bench.module not in args.only and bench.module.split(".")[-1] not in args.only:
            continue
        text, code, took = run(bench, args.quick)
        print(f"{bench.module}: exit {code} in {took:.0f} s", file=sys.stderr)
        for fig in bench.figures:
            value = fig.read(text) if code == 0 else None
            if value is None:
                rows.append((fig.label, f"not measured (exit {code})", fig.shown_target(), "MISSED"))
                missed += 1
                continue
            verdict = fig.verdict(value)
            missed += verdict == "MISSED"
            if args.quick and verdict != "-":
                verdict += " (quick sizes)"
            rows.append((fig.label, f"{value:g} {fig.unit}".strip(), fig.shown_target(), verdict))
    print(table(rows))
    print(f"\n{missed} figure(s) missing their target or not measured; full outputs in {OUT.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
