"""`upgrade-check`: what an upgrade from the original driver (v0.9.x) would adopt, and what blocks it.

Read-only: it lists the CRDs, DeviceVolumes, DeviceNodes and StorageClasses and changes nothing. Run it before
applying the new workloads (after the new CRDs) and again after the roll; docs/upgrade.md is the procedure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.api.objects import node_from_dict, volume_from_dict
from csidriver.kube.resources import Kube

CRDS = (f"{c.VOLUME_PLURAL}.{c.GROUP}", f"{c.NODE_PLURAL}.{c.GROUP}")


@dataclass
class Report:
    adopt: list[str] = field(default_factory=list)  # what this driver takes over, and how
    warnings: list[str] = field(default_factory=list)  # works, but the operator should know
    blockers: list[str] = field(default_factory=list)  # fix before (or right after) rolling the workloads


async def upgrade_check(kube: Kube, driver_name: str) -> Report:
    report = Report()
    if not await _check_crds(kube, report):
        # The CRDs are not upgraded yet: read the objects the way the original does.
        kube = Kube(kube.api, kube.namespace, "kubectl-device-localpv", version=c.ORIGINAL_VERSION)
    pools = await _node_pools(kube, report)
    await _check_volumes(kube, pools, report)
    await _check_storage_classes(kube, driver_name, pools, report)
    return report


async def _check_crds(kube: Kube, report: Report) -> bool:
    """True when every CRD serves this driver's version."""
    upgraded = True
    snapshots = f"{c.SNAPSHOT_PLURAL}.{c.GROUP}"  # a kind of this driver only: no version of the original's
    crd = await kube.get_crd(snapshots)
    if crd is None or not any(
        v.get("name") == c.VERSION and v.get("served") for v in crd["spec"].get("versions") or []
    ):
        report.blockers.append(
            f"CRD {snapshots} is missing or does not serve {c.VERSION}: apply this release's crds/ first"
        )
        upgraded = False
    for name in CRDS:
        crd = await kube.get_crd(name)
        if crd is None:
            report.blockers.append(f"CRD {name} is missing: apply this release's crds/ first")
            upgraded = False
            continue
        versions = {v["name"]: v for v in crd["spec"].get("versions") or []}
        if not (versions.get(c.VERSION) or {}).get("served"):
            upgraded = False
            report.blockers.append(
                f"CRD {name} does not serve {c.VERSION}: apply this release's crds/ before its workloads "
                "(the new components read and write that version)"
            )
        if not (versions.get(c.ORIGINAL_VERSION) or {}).get("served"):
            report.blockers.append(f"CRD {name} does not serve {c.ORIGINAL_VERSION}: the original's components need it")
        stored = set((crd.get("status") or {}).get("storedVersions") or [])
        if stored - {c.ORIGINAL_VERSION}:
            report.warnings.append(
                f"CRD {name} has objects stored as {sorted(stored)}: a rollback must keep serving those versions"
            )
    return upgraded


async def _node_pools(kube: Kube, report: Report) -> dict[str, set[str]]:
    pools: dict[str, set[str]] = {}
    for raw in await kube.list_device_nodes():
        node = node_from_dict(raw)
        pools[node.name] = {d.name for d in node.devices}
        bad = sorted(p for p in pools[node.name] if not naming.is_valid_pool(p))
        if bad:
            report.warnings.append(
                f"node {node.name} has pool names this driver cannot use (1-36 of [A-Za-z0-9._-]): {', '.join(bad)}"
            )
    return pools


async def _check_volumes(kube: Kube, pools: dict[str, set[str]], report: Report) -> None:
    states: Counter[str] = Counter()
    unlabelled = 0
    for raw in await kube.list_volumes():
        name = str((raw.get("metadata") or {}).get("name", "?"))
        try:
            vol = volume_from_dict(raw)
        except (KeyError, ValueError, TypeError) as e:
            report.blockers.append(f"volume {name}: cannot be read ({e}); fix or remove the object")
            continue
        states["Deleting" if vol.deleting else vol.state.value] += 1
        if c.NODE_LABEL not in vol.labels:
            unlabelled += 1
        if not naming.is_valid_pool(vol.pool):
            report.blockers.append(f"volume {name}: pool {vol.pool!r} is not a pool name this driver accepts")
            continue
        node_pools = pools.get(vol.owner_node)
        if node_pools is None:
            report.warnings.append(
                f"volume {name}: node {vol.owner_node} has no DeviceNode (agent not running, or the node is gone: "
                "see `release-node`)"
            )
        elif vol.pool not in node_pools and not vol.deleting:
            report.blockers.append(
                f"volume {name}: no pool of node {vol.owner_node} is named exactly {vol.pool!r} (pools: "
                f"{', '.join(sorted(node_pools)) or 'none'}). The original matched pool names as unanchored "
                "patterns; this driver matches them exactly and would not find the partition"
            )
    total = sum(states.values())
    if total:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        report.adopt.append(f"{total} DeviceVolume(s): {counts}")
        if states["Ready"]:
            report.adopt.append("Ready: located by partition name and served as they are; no byte is rewritten")
        if states["Pending"]:
            report.adopt.append("Pending: carved once by the new agent of their node")
        if states["Deleting"]:
            report.adopt.append("Deleting: their partitions are wiped and removed, then the objects go")
        if states["Failed"]:
            report.adopt.append("Failed: reported at the provisioner's next retry and removed, then created afresh")
        if unlabelled:
            report.adopt.append(f"{unlabelled} without the {c.NODE_LABEL} label: found by spec.ownerNodeID")
    else:
        report.adopt.append("no DeviceVolume: nothing to adopt")


async def _check_storage_classes(kube: Kube, driver_name: str, pools: dict[str, set[str]], report: Report) -> None:
    known: set[str] = set().union(*pools.values())
    for sc in await kube.list_storage_classes():
        if sc.get("provisioner") != driver_name:
            continue
        name = sc["metadata"]["name"]
        params = {str(k).lower(): str(v) for k, v in (sc.get("parameters") or {}).items()}
        pool = params.get("devname")
        if pool is None:
            report.blockers.append(f"StorageClass {name}: no devname parameter")
        elif not naming.is_valid_pool(pool):
            report.blockers.append(
                f"StorageClass {name}: devname {pool!r} is not a plain pool name (a pattern?). This driver matches "
                "pool names exactly; make a StorageClass with the exact pool name"
            )
        elif known and pool not in known:
            near = sorted(p for p in known if pool in p)
            if near:
                report.blockers.append(
                    f"StorageClass {name}: devname {pool!r} names no pool exactly; the original matched it inside "
                    f"{', '.join(near)}. Use the exact pool name"
                )
            else:
                report.warnings.append(f"StorageClass {name}: no node reports pool {pool!r}")
