"""The disk-move runbook of docs/operations.md, run step by step on the multi-node cluster: node-2's disk, holding
two volumes with data, moves to node-1 while node-2's agent runs."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable

from harness import runbook
from harness.disks import run
from harness.kubernetes import KubeCluster
from harness.objects import MIB, create_pvcs, delete_pvcs, pvc_body, storage_class, wait_bound
from tests.k8s.test_migrate import _io, _node_sees, plugin
from tests.k8s.test_wffc import pod_body


def _until(what: str, check: Callable[[], object], limit: float = 40) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def reasons(kube: KubeCluster, claim: str) -> list[str]:
    """Event reasons on a claim, oldest first."""
    return runbook.reasons(kube.api.kubectl(*runbook.claim_events(claim)))


def _detached(kube: KubeCluster, claim: str) -> Callable[[], bool]:
    """True once `claim` has a DiskDetached Event."""
    return lambda: "DiskDetached" in reasons(kube, claim)


def rows(kube: KubeCluster, node: str) -> dict[str, bool]:
    return {d["uuid"]: d["healthy"] for d in kube.get("devicenode", node, namespace="openebs").get("devices") or []}


def test_the_documented_disk_move(kube: KubeCluster) -> None:
    steps = runbook.read("move-disk")
    storage_class(kube, "rb", nodes=["node-2"])
    claims = [f"rb-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    create_pvcs(kube, [pvc_body(claim, "rb", 16 * MIB) for claim in claims])
    pvs = {claim: pvc["spec"]["volumeName"] for claim, pvc in wait_bound(kube, claims).items()}
    for claim, pv in pvs.items():
        _io(kube, "node-2", pv, write=f"data of {claim}")
    pod = f"rbp-{uuid.uuid4().hex[:8]}"
    create_pvcs(kube, [pod_body(pod, claims[0])])
    disk = kube.nodes["node-2"].disks[0]
    guid = kube.get("devicevolume", pvs[claims[0]], namespace="openebs")["status"]["diskGUID"].upper()
    assert all(
        kube.get("devicevolume", pv, namespace="openebs")["status"]["diskGUID"].upper() == guid for pv in pvs.values()
    )
    node1_disks = list(kube.nodes["node-1"].disks)

    def stop_workloads() -> None:
        kube.api.kubectl("delete", "pod", "-n", "default", pod, "--grace-period=0", "--force")

    def listed(outputs: list[str]) -> None:
        for pv in pvs.values():
            assert pv in outputs[0] and guid in outputs[0], outputs[0]

    def move_disk() -> None:
        # Pulled out of node-2 while its agent runs: the cordoned disk is reported gone, as planned.
        subprocess.run(["losetup", "--detach", disk.device], check=True)
        _until("node-2 reports the disk gone", lambda: rows(kube, "node-2").get(guid) is False)
        for claim in claims:
            _until(f"DiskDetached on {claim}", _detached(kube, claim))
        # Its old device name stays taken (node-2's agent watches that name): the disk shows up on node-1 only.
        kube.disks.blank(1)
        disk.device = run("losetup", "--find", "--show", "--partscan", str(disk.image)).strip()
        kube.set_disks("node-1", [*node1_disks, disk])
        _node_sees(kube, "node-1", guid)

    def reported(outputs: list[str]) -> None:
        rows = [line.split() for line in outputs[0].splitlines() if guid in line]
        assert ["node-1", "Healthy"] in [[r[0], r[6]] for r in rows], outputs[0]

    def migrated(outputs: list[str]) -> None:
        dry, done = outputs
        for pv in pvs.values():
            assert f"would {pv}: hand DeviceVolume {pv} from node-2 to node-1" in dry, dry
            assert f"done: {pv}: recreate PV {pv} with node affinity node-1" in done, done
        assert f"would remove disk {guid} from DeviceNode node-2 (unhealthy there)" in dry, dry
        # Removed by migrate-disk, or already by node-2's own agent once no volume of its node was on the disk
        # (it rescans within 5 s of a volume leaving): either way node-2 no longer lists it.
        assert f"done: remove disk {guid} from DeviceNode node-2" in done or guid not in rows(kube, "node-2"), done
        # A refresh of node-2's agent that began before its volumes left its watch may write the row back once; its
        # next scan (within 5 s of the volumes leaving) drops it for good.
        _until("node-2 no longer lists the disk", lambda: guid not in rows(kube, "node-2"))

    def served(outputs: list[str]) -> None:
        for claim, pv in pvs.items():
            assert any(line.startswith(pv) and "node-1" in line for line in outputs[0].splitlines()), outputs[0]
            assert _io(kube, "node-1", pv) == f"data of {claim}"

    def nothing_of_the_disk_released(outputs: list[str]) -> None:
        for pv in pvs.values():
            assert pv not in outputs[0], outputs[0]

    values = {"OLD_NODE": "node-2", "NEW_NODE": "node-1", "DISK_GUID": guid}
    expect = {
        1: runbook.Expect("cordon"),
        2: runbook.Expect("stop", before=stop_workloads, after=listed),
        3: runbook.Expect("move", before=move_disk, after=reported),
        4: runbook.Expect("hand every volume", after=migrated),
        5: runbook.Expect("start", after=served),
        # node-2 stays for the other tests: only the dry run, forced (node-2 still reports Ready).
        6: runbook.Expect("gone for good", after=nothing_of_the_disk_released, extra=["--dry-run", "--force"]),
    }

    def cli(*argv: str) -> str:
        return plugin(kube, *argv)

    try:
        runbook.follow(steps, expect, values, cli)
        assert guid not in rows(kube, "node-2"), "the old node still lists the moved disk"
        cordon = (kube.get("devicenode", "node-2", namespace="openebs")["metadata"].get("annotations") or {}).get(
            "local.openebs.io/cordoned-disks", ""
        )
        assert guid not in cordon.upper()
        for claim in claims:
            seen = reasons(kube, claim)
            assert "DiskFailed" not in seen, seen
            order = [r for r in seen if r in ("DiskDetached", "DiskMoved", "ClaimLost", "Migrated")]
            assert order == ["DiskDetached", "DiskMoved", "ClaimLost", "Migrated"], seen
    finally:
        kube.api.kubectl("delete", "pod", "-n", "default", pod, "--grace-period=0", "--force", "--ignore-not-found")
        kube.set_disks("node-1", node1_disks)
        kube.set_disks("node-2", [disk])
        _node_sees(kube, "node-2", guid)
        plugin(kube, "migrate-disk", guid, "--to", "node-2")
        delete_pvcs(kube, claims)
