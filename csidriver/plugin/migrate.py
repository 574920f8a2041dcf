"""`migrate VOLUME --to NODE` and `migrate-disk DISK_GUID --to NODE`: finish moving volumes whose disk was moved to
another node.

Order, every step check-then-act so the command can be re-run after an interruption:
1. the target's agent must report the volume's disk (by GPT disk GUID) as healthy in its DeviceNode;
2. the DeviceVolume is handed to the target (spec.ownerNodeID + node label) and the command waits until the
   target's agent has found the partition (condition Located=True); if it cannot, the hand-over is undone;
3. the PV's node affinity is immutable, so the PV is recreated with the same name and claim binding; its
   reclaim policy is Retain while it is absent, so no data can be deleted, and is restored afterwards. The new
   PV body is saved on the DeviceVolume first, so an interrupted run recreates it;
4. pods using the claim are deleted so that their controllers reschedule them onto the target node;
5. a Normal `Migrated` Event on the claim says what was done. While the PV is absent the PV controller marks the
   claim Lost and raises a Warning `ClaimLost`; the Event explains it (the claim is Bound again once the PV exists).
`migrate-disk` runs this for every volume on the disk, then removes the disk's row from the DeviceNode of the node
it left (when that row is unhealthy or that node is not Ready) so nothing schedules onto a disk that is not there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

from csidriver.api import constants as c
from csidriver.api.objects import cordoned_disks, node_from_dict, volume_from_dict
from csidriver.kube.resources import Conflict, Kube

SAVED_PV = "local.openebs.io/migration-pv"
PARALLEL = 8  # volumes of one disk migrated at once by migrate-disk


class MigrationError(Exception):
    pass


def _set_node(spec: dict[str, Any], node: str) -> None:
    for term in spec.get("nodeAffinity", {}).get("required", {}).get("nodeSelectorTerms", []):
        for expr in term.get("matchExpressions", []):
            if expr.get("key") == c.TOPOLOGY_KEY:
                expr["values"] = [node]


def _retarget(pv: dict[str, Any], node: str) -> dict[str, Any]:
    meta = pv["metadata"]
    spec = json.loads(json.dumps(pv["spec"]))
    _set_node(spec, node)
    if spec.get("claimRef"):
        spec["claimRef"] = {
            k: spec["claimRef"][k] for k in ("apiVersion", "kind", "namespace", "name", "uid") if k in spec["claimRef"]
        }
    policy = spec.get("persistentVolumeReclaimPolicy", "Delete")
    spec["persistentVolumeReclaimPolicy"] = "Retain"
    return {
        "policy": policy,
        "body": {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {
                "name": meta["name"],
                "labels": meta.get("labels") or {},
                "annotations": meta.get("annotations") or {},
            },
            "spec": spec,
        },
    }


def _pv_node(pv: dict[str, Any]) -> str | None:
    for term in pv["spec"].get("nodeAffinity", {}).get("required", {}).get("nodeSelectorTerms", []):
        for expr in term.get("matchExpressions", []):
            if expr.get("key") == c.TOPOLOGY_KEY and expr.get("values"):
                return str(expr["values"][0])
    return None


async def _wait(what: str, check: Any, limit: float) -> Any:
    deadline = time.monotonic() + limit
    while True:
        got = await check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise MigrationError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _target_disks(kube: Kube, target: str) -> dict[str, str]:
    """Healthy disks the target's agent reports: GUID (upper case) -> pool."""
    dn = await kube.get_device_node(target)
    if dn is None:
        raise MigrationError(f"no agent reports on node {target} (no DeviceNode)")
    return {d.uuid.upper(): d.name for d in node_from_dict(dn).devices if d.healthy}


async def migrate(kube: Kube, name: str, target: str, dry_run: bool, limit: float = 60) -> list[str]:
    """Returns the steps done (or, with dry_run, the steps that would be done)."""
    raw = await kube.get_volume(name)
    if raw is None:
        raise MigrationError(f"no DeviceVolume {name}")
    vol = volume_from_dict(raw)
    disks = await _target_disks(kube, target)
    guid = vol.placement.disk_guid.upper()
    if guid and disks.get(guid) != vol.pool:
        raise MigrationError(f"the agent on {target} does not report disk {guid} of pool {vol.pool!r}: move it first")
    if vol.pool not in disks.values():
        raise MigrationError(f"the agent on {target} reports no healthy disk of pool {vol.pool!r}")
    steps: list[str] = []
    source = vol.owner_node
    if source != target:
        steps.append(f"hand DeviceVolume {name} from {source} to {target}")
        if not dry_run:
            await kube.patch_volume(
                name, {"metadata": {"labels": {c.NODE_LABEL: target}}, "spec": {"ownerNodeID": target}}
            )
    if not dry_run:
        await _wait_located(kube, name, target, source, limit)
    steps += await _move_pv(kube, name, target, raw, dry_run, limit)
    if steps and not dry_run:
        await _record_migrated(kube, name, source, target)
    return steps


async def _record_migrated(kube: Kube, name: str, source: str, target: str) -> None:
    pv = await kube.get_pv(name)
    claim = ((pv or {}).get("spec") or {}).get("claimRef")
    if not claim:
        return
    moved = f"from node {source} " if source != target else ""
    msg = (
        f"volume {name} moved {moved}to node {target} by kubectl device-localpv migrate: its PV was recreated with "
        "the new node affinity (the ClaimLost warning just before is expected: the claim lost its PV for that "
        "moment, no data was touched) and Pods using the claim were deleted so that they start on the new node"
    )
    target_obj = {
        "apiVersion": "v1",
        "metadata": {"name": claim["name"], "namespace": claim["namespace"], "uid": claim.get("uid")},
    }
    await kube.record_event(target_obj, "PersistentVolumeClaim", "Normal", "Migrated", msg)


async def migrate_disk(
    kube: Kube, guid: str, target: str, dry_run: bool, limit: float = 60
) -> tuple[list[str], list[str]]:
    """Every volume on the disk, then the old nodes' rows. Returns (steps, errors); rows stay while errors."""
    guid = guid.upper()
    if guid not in await _target_disks(kube, target):
        raise MigrationError(f"the agent on {target} does not report disk {guid} as healthy: move it first")
    volumes = sorted(
        v.name for v in map(volume_from_dict, await kube.list_volumes()) if v.placement.disk_guid.upper() == guid
    )
    gate = asyncio.Semaphore(PARALLEL)

    async def one(name: str) -> tuple[list[str], str | None]:
        async with gate:
            try:
                return [f"{name}: {step}" for step in await migrate(kube, name, target, dry_run, limit)], None
            except MigrationError as e:
                return [], f"{name}: {e}"

    steps: list[str] = []
    errors: list[str] = []
    for done, error in await asyncio.gather(*(one(name) for name in volumes)):
        steps += done
        errors += [error] if error else []
    if not volumes:
        steps.append(f"no volume is on disk {guid}")
    if not errors:
        steps += await _clear_old_rows(kube, guid, target, dry_run)
    return steps, errors


async def _clear_old_rows(kube: Kube, guid: str, target: str, dry_run: bool) -> list[str]:
    """The disk's row on nodes it left: removed when unhealthy there or when that node is not Ready (its agent
    cannot correct it); a healthy row on a Ready node (a disk both nodes see) is left alone."""
    steps = []
    for raw in await kube.list_device_nodes():
        node = node_from_dict(raw)
        row = next((d for d in node.devices if d.uuid.upper() == guid), None)
        if node.name == target:
            continue
        if row is None:
            # Already dropped by that node's agent (no volume of it is on the disk any more): only the cordon mark
            # the runbook set there is left to remove.
            if guid in cordoned_disks(raw.get("metadata") or {}):
                steps.append(f"remove the cordon mark of disk {guid} from DeviceNode {node.name}")
                if not dry_run:
                    await _drop_row(kube, node.name, guid)
            continue
        if row.healthy and _ready(await kube.get_node(node.name)):
            steps.append(f"left alone: Ready node {node.name} still reports disk {guid} healthy (a shared disk?)")
            continue
        why = "unhealthy there" if not row.healthy else f"node {node.name} is not Ready"
        steps.append(f"remove disk {guid} from DeviceNode {node.name} ({why})")
        if not dry_run:
            await _drop_row(kube, node.name, guid)
    return steps


def _ready(node: Mapping[str, Any] | None) -> bool:
    return any(
        cond.get("type") == "Ready" and cond.get("status") == "True"
        for cond in ((node or {}).get("status") or {}).get("conditions") or []
    )


async def _drop_row(kube: Kube, node: str, guid: str) -> None:
    for _ in range(5):
        raw = await kube.get_device_node(node)
        if raw is None:
            return
        body = json.loads(json.dumps(raw))
        body["devices"] = [d for d in raw.get("devices") or [] if str(d.get("uuid", "")).upper() != guid]
        annotations = body["metadata"].get("annotations") or {}
        cordoned = [g for g in annotations.get(c.CORDON_ANNOTATION, "").split(",") if g and g.upper() != guid]
        if cordoned:
            annotations[c.CORDON_ANNOTATION] = ",".join(cordoned)
        else:
            annotations.pop(c.CORDON_ANNOTATION, None)
        body["metadata"]["annotations"] = annotations
        try:
            await kube.replace_device_node(node, body)
            return
        except Conflict:
            continue
    raise MigrationError(f"DeviceNode {node} kept changing; run again")


async def _wait_located(kube: Kube, name: str, target: str, source: str, limit: float) -> None:
    prefix = f"node {target}:"

    async def verdict() -> str | None:
        obj = await kube.get_volume(name) or {}
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") in ("Located", "Ready") and str(cond.get("message", "")).startswith(prefix):
                return "found" if cond.get("status") == "True" else "missing"
        return None

    if await _wait(f"the agent on {target} to find the partition", verdict, limit) == "missing":
        if source != target:
            await kube.patch_volume(
                name, {"metadata": {"labels": {c.NODE_LABEL: source}}, "spec": {"ownerNodeID": source}}
            )
        raise MigrationError(f"the agent on {target} did not find the partition of {name}; hand-over undone")


async def _move_pv(kube: Kube, name: str, target: str, raw: dict[str, Any], dry_run: bool, limit: float) -> list[str]:
    pv = await kube.get_pv(name)
    saved = ((raw.get("metadata") or {}).get("annotations") or {}).get(SAVED_PV)
    if pv is not None and _pv_node(pv) == target and not saved:
        return []
    steps = []
    plan = json.loads(saved) if saved else (_retarget(pv, target) if pv is not None else None)
    if plan is None:
        return ["no PersistentVolume for this volume: nothing to rewrite"]
    # A plan saved by an interrupted run keeps the original reclaim policy and claim binding, but the node is the
    # one asked for now: a run interrupted on its way to another node must not send Pods there.
    _set_node(plan["body"]["spec"], target)
    if pv is not None and _pv_node(pv) != target:
        steps.append(f"recreate PV {name} with node affinity {target} (Retain while it is rewritten)")
        if not dry_run:
            await kube.patch_volume(name, {"metadata": {"annotations": {SAVED_PV: json.dumps(plan)}}})
            await kube.patch_pv(name, {"spec": {"persistentVolumeReclaimPolicy": "Retain"}})
            # Delete first: once it is being deleted no controller can add a finalizer back; then drop them.
            await kube.delete_pv(name)
            await kube.patch_pv(name, {"metadata": {"finalizers": None}})

            async def gone() -> bool:
                return await kube.get_pv(name) is None

            await _wait(f"PV {name} to be gone", gone, limit)
    if dry_run:
        return steps
    if await kube.get_pv(name) is None:
        await kube.create_pv(plan["body"])
    await kube.patch_pv(name, {"spec": {"persistentVolumeReclaimPolicy": plan["policy"]}})
    await kube.patch_volume(name, {"metadata": {"annotations": {SAVED_PV: None}}})
    claim = plan["body"]["spec"].get("claimRef")
    if claim:
        for pod in await kube.pods_using_claim(claim["namespace"], claim["name"]):
            steps.append(f"delete pod {claim['namespace']}/{pod} so that it is rescheduled")
            await kube.delete_pod(claim["namespace"], pod)
    return steps
