"""`kubectl device-localpv …` (installed as the `kubectl-device_localpv` entry point).

nodes | volumes [-o table|wide|json|yaml]
init-disk DEVICE --pool NAME [--force] [--dry-run]     run on the node that holds the disk
cordon-disk | uncordon-disk NODE DISK_GUID [--dry-run]
migrate-disk DISK_GUID --to NODE [--dry-run]            after the disk was moved to NODE: all its volumes
migrate VOLUME --to NODE [--dry-run]                    after the volume's disk was moved to NODE
release-node NODE --reason TEXT [--force] [--dry-run]   a node that is gone for good
upgrade-check [--driver-name NAME]                      what an upgrade from the original adopts, what blocks it
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

from csidriver.api import constants as c
from csidriver.api.objects import node_from_dict, volume_from_dict
from csidriver.host.initdisk import InitDiskRefused, apply_init, plan_init
from csidriver.host.runner import Runner
from csidriver.kube.client import make_api_client
from csidriver.kube.resources import Kube
from csidriver.plugin import operations
from csidriver.plugin.migrate import MigrationError, migrate, migrate_disk
from csidriver.plugin.upgrade import upgrade_check


def _table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    widths = {col: max([len(col)] + [len(str(r.get(col, ""))) for r in rows]) for col in columns}
    lines = ["  ".join(col.upper().ljust(widths[col]) for col in columns)]
    lines += ["  ".join(str(r.get(col, "")).ljust(widths[col]) for col in columns) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _emit(rows: list[dict[str, Any]], fmt: str, columns: Sequence[str], wide: Sequence[str]) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(rows, sort_keys=False), end="")
    else:
        print(_table(rows, [*columns, *(wide if fmt == "wide" else ())]))


async def cmd_nodes(kube: Kube, args: argparse.Namespace) -> int:
    rows = []
    for raw in sorted(await kube.list_device_nodes(), key=lambda o: o["metadata"]["name"]):
        node = node_from_dict(raw)
        for d in node.devices:
            rows.append(
                {
                    "node": node.name,
                    "pool": d.name,
                    "disk": d.uuid,
                    "path": d.path,
                    "size": d.size,
                    "free": d.free,
                    "largestExtent": d.largest_extent,
                    "freeEntries": d.free_entries,
                    "health": "Healthy" if d.healthy else "Unhealthy",
                    "cordoned": d.cordoned,
                }
            )
    _emit(
        rows,
        args.output,
        ["node", "pool", "path", "size", "free", "largestExtent", "health"],
        ["disk", "freeEntries", "cordoned"],
    )
    return 0


async def cmd_volumes(kube: Kube, args: argparse.Namespace) -> int:
    claims = {
        pv["metadata"]["name"]: f"{pv['spec']['claimRef']['namespace']}/{pv['spec']['claimRef']['name']}"
        for pv in await kube.list_pvs()
        if (pv.get("spec") or {}).get("claimRef")
    }
    rows = []
    for raw in sorted(await kube.list_volumes(), key=lambda o: o["metadata"]["name"]):
        v = volume_from_dict(raw)
        rows.append(
            {
                "name": v.name,
                "node": v.owner_node,
                "pool": v.pool,
                "disk": v.placement.disk_path,
                "partition": v.placement.device_path,
                "size": v.capacity,
                "state": "Deleting" if v.deleting else v.state.value,
                "pvc": claims.get(v.name, ""),
                "diskGUID": v.placement.disk_guid,
                "partitionName": v.placement.partition_name,
            }
        )
    _emit(
        rows,
        args.output,
        ["name", "node", "pool", "size", "state", "pvc"],
        ["disk", "partition", "diskGUID", "partitionName"],
    )
    return 0


async def cmd_cordon(kube: Kube, args: argparse.Namespace, cordon: bool) -> int:
    try:
        print(await operations.cordon(kube, args.node, args.disk, cordon, args.dry_run))
    except operations.OperationRefused as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


async def cmd_release(kube: Kube, args: argparse.Namespace) -> int:
    try:
        done = await operations.release_node(
            kube, args.node, args.reason, getpass.getuser(), force=args.force, dry_run=args.dry_run
        )
    except operations.OperationRefused as e:
        for reason in e.reasons:
            print(f"error: {reason}", file=sys.stderr)
        return 1
    verb = "would release" if args.dry_run else "releasing"
    for line in done.volumes:
        print(f"{verb} {line}")
    for line in done.snapshots:
        print(f"{verb} snapshot {line}")
    print(
        f"{len(done.volumes)} volume(s) of node {args.node} {'would be ' if args.dry_run else ''}released; "
        "their PVCs can now be deleted and recreated elsewhere"
    )
    return 0


async def cmd_migrate(kube: Kube, args: argparse.Namespace) -> int:
    try:
        steps = await migrate(kube, args.volume, args.to, args.dry_run)
    except MigrationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for step in steps:
        print(("would " if args.dry_run else "done: ") + step)
    print(f"volume {args.volume} {'would be' if args.dry_run else 'is'} served by node {args.to}")
    return 0


async def cmd_migrate_disk(kube: Kube, args: argparse.Namespace) -> int:
    try:
        steps, errors = await migrate_disk(kube, args.disk, args.to, args.dry_run)
    except MigrationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for step in steps:
        print(("would " if args.dry_run else "done: ") + step)
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    if errors:
        print(f"{len(errors)} volume(s) not migrated; fix the cause and run the same command again", file=sys.stderr)
        return 1
    print(f"disk {args.disk.upper()} and its volumes {'would be' if args.dry_run else 'are'} served by node {args.to}")
    return 0


async def cmd_upgrade_check(kube: Kube, args: argparse.Namespace) -> int:
    report = await upgrade_check(kube, args.driver_name)
    for title, lines in (("adopts", report.adopt), ("warnings", report.warnings), ("blockers", report.blockers)):
        print(f"{title}:" + ("" if lines else " none"))
        for line in lines:
            print(f"  - {line}")
    if report.blockers:
        print(f"{len(report.blockers)} blocker(s): fix them before upgrading (see docs/upgrade.md)", file=sys.stderr)
        return 1
    return 0


async def cmd_init_disk(args: argparse.Namespace) -> int:
    runner = Runner()
    try:
        plan = await plan_init(runner, args.device, args.pool, args.force)
    except (InitDiskRefused, ValueError) as e:
        print(f"refused: {e}", file=sys.stderr)
        return 1
    print(plan.describe())
    if args.dry_run:
        print("dry run: nothing written")
        return 0
    await apply_init(runner, plan)
    print(f"{plan.device} is now a pool disk of pool {plan.pool!r}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kubectl device-localpv", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--kubeconfig", default=None)
    p.add_argument("--namespace", "-n", default=None, help="namespace of the driver's objects (default openebs)")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("nodes", "volumes"):
        s = sub.add_parser(name)
        s.add_argument("-o", "--output", choices=["table", "wide", "json", "yaml"], default="table")
    s = sub.add_parser("init-disk")
    s.add_argument("device")
    s.add_argument("--pool", required=True)
    s.add_argument("--force", action="store_true", help="erase existing signatures and partition tables")
    s.add_argument("--dry-run", action="store_true")
    for name in ("cordon-disk", "uncordon-disk"):
        s = sub.add_parser(name)
        s.add_argument("node")
        s.add_argument("disk", help="GPT disk GUID (see `nodes -o wide`)")
        s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("migrate", help="finish moving a volume whose disk was moved to another node")
    s.add_argument("volume", help="DeviceVolume (= PV) name")
    s.add_argument("--to", required=True, help="node whose agent now sees the disk")
    s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("migrate-disk", help="finish moving every volume of a disk that was moved to another node")
    s.add_argument("disk", help="GPT disk GUID (see `nodes -o wide`)")
    s.add_argument("--to", required=True, help="node whose agent now sees the disk")
    s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("release-node")
    s.add_argument("node")
    s.add_argument("--reason", required=True, help="recorded in an Event on every released volume")
    s.add_argument("--force", action="store_true", help="even if the Node still reports Ready")
    s.add_argument("--dry-run", action="store_true")
    s = sub.add_parser("upgrade-check", help="what an upgrade from the original driver adopts, and what blocks it")
    s.add_argument("--driver-name", default="device.csi.openebs.io", help="CSI driver name of the StorageClasses")
    return p


async def _main(args: argparse.Namespace) -> int:
    if args.command == "init-disk":
        return await cmd_init_disk(args)
    api = await make_api_client(args.kubeconfig, qps=20, burst=40)
    kube = Kube(
        api, args.namespace or os.environ.get("DEVICE_DRIVER_NAMESPACE", c.DEFAULT_NAMESPACE), "kubectl-device-localpv"
    )
    try:
        if args.command == "nodes":
            return await cmd_nodes(kube, args)
        if args.command == "volumes":
            return await cmd_volumes(kube, args)
        if args.command in ("cordon-disk", "uncordon-disk"):
            return await cmd_cordon(kube, args, args.command == "cordon-disk")
        if args.command == "migrate":
            return await cmd_migrate(kube, args)
        if args.command == "migrate-disk":
            return await cmd_migrate_disk(kube, args)
        if args.command == "upgrade-check":
            return await cmd_upgrade_check(kube, args)
        return await cmd_release(kube, args)
    finally:
        await api.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    args.kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
