"""The disk-move runbook of docs/operations.md on real kubelets: a Deployment's volume lives on a disk of node A;
the operator follows the runbook to move the disk to node B, and the Deployment's new Pod runs on node B and reads
the data it wrote on node A."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from harness import runbook
from harness.disks import disk_guid
from harness.node import NODE, NODE_B, wait_for
from harness.workloads import IMAGE, MOUNT, NAMESPACE, NodeCluster

APP = "mover"
CLAIM = "mover-data"
SCRIPT = (
    f"set -e; if [ -f {MOUNT}/f ]; then echo found: $(cat {MOUNT}/f) on $NODE; "
    f"else echo written on $NODE > {MOUNT}/f; sync; echo wrote on $NODE; fi; sleep 3600"
)


def deployment(replicas: int) -> dict[str, Any]:
    container = {
        "name": "app",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", SCRIPT],
        "env": [{"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "volumeMounts": [{"name": "vol", "mountPath": MOUNT}],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": APP, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                    "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": CLAIM}}],
                },
            },
        },
    }


def running_pod(node: NodeCluster) -> dict[str, Any] | None:
    pods = node.real.get("pods", "-l", f"app={APP}")["items"]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    if len(live) == 1 and live[0]["status"].get("phase") == "Running":
        return live[0]  # type: ignore[no-any-return]
    return None


def first_line(node: NodeCluster, pod: dict[str, Any]) -> str:
    def line() -> str | None:
        out = node.logs(pod["metadata"]["name"])
        return out.splitlines()[0] if out.strip() else None

    return str(wait_for("the Pod's first line", line, 60))


def reasons(node: NodeCluster) -> list[str]:
    return runbook.reasons(node.kubectl(*runbook.claim_events(CLAIM)))


def test_the_documented_disk_move_on_real_kubelets(two_nodes: NodeCluster) -> None:
    node = two_nodes
    steps = runbook.read("move-disk")
    assert node.real.api is not None
    kubeconfig = node.real.api.identities["admin"].kubeconfig
    # The volume is made on node A (so the Pod starts there); afterwards its PV alone decides where Pods go.
    node.storage_class("mover", "ssd", "ext4", "Immediate", nodes=[NODE])
    node.pvc(CLAIM, "mover", "64Mi")
    node.apply(deployment(1))
    moved = None
    try:
        pod = wait_for("the Deployment's Pod running", lambda: running_pod(node), 120)
        assert isinstance(pod, dict) and pod["spec"]["nodeName"] == NODE
        assert first_line(node, pod) == f"wrote on {NODE}"
        pv = node.pv_of(CLAIM)
        path = node.real.get("devicevolume", pv, namespace=NAMESPACE)["status"]["diskPath"]
        moved = next(d for d in node.pool_disks if d.device == path)
        guid = disk_guid(moved.device)

        def plugin(*args: str) -> str:
            argv = [sys.executable, "-m", "csidriver.plugin.cli", "--kubeconfig", kubeconfig, *args]
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        def stop_workloads() -> None:
            node.kubectl("scale", "deployment", APP, "--replicas=0")
            wait_for("the Pod gone", lambda: not node.real.get("pods", "-l", f"app={APP}")["items"], 120)

        def move() -> None:
            assert moved is not None
            node.move_disk(moved, NODE_B)

            def reported() -> bool:
                return guid in {str(d["uuid"]).upper() for d in node.device_node_disks(NODE_B)}

            wait_for("node B reports the disk", reported, 60)

        def on_node_b(outputs: list[str]) -> None:
            rows = [line.split() for line in outputs[0].splitlines() if guid in line]
            assert [NODE_B, "Healthy"] in [[r[0], r[6]] for r in rows], outputs[0]

        def migrated(outputs: list[str]) -> None:
            assert f"would {pv}: hand DeviceVolume {pv} from {NODE} to {NODE_B}" in outputs[0], outputs[0]
            assert f"done: {pv}: recreate PV {pv} with node affinity {NODE_B}" in outputs[1], outputs[1]

        def start_workloads() -> None:
            node.kubectl("scale", "deployment", APP, "--replicas=1")

        def served_on_b(outputs: list[str]) -> None:
            pod = wait_for("the new Pod running", lambda: running_pod(node), 120)
            assert isinstance(pod, dict), pod
            assert pod["spec"]["nodeName"] == NODE_B, pod["spec"].get("nodeName")
            assert first_line(node, pod) == f"found: written on {NODE} on {NODE_B}"
            assert any(line.startswith(pv) and NODE_B in line for line in outputs[0].splitlines()), outputs[0]

        def nothing_of_it_released(outputs: list[str]) -> None:
            assert pv not in outputs[0], outputs[0]

        expect = {
            1: runbook.Expect("cordon"),
            2: runbook.Expect("stop", before=stop_workloads),
            3: runbook.Expect("move", before=move, after=on_node_b),
            4: runbook.Expect("hand every volume", after=migrated),
            5: runbook.Expect("start", before=start_workloads, after=served_on_b),
            # Node A stays (it is the session's node): only the dry run, forced.
            6: runbook.Expect("gone for good", after=nothing_of_it_released, extra=["--dry-run", "--force"]),
        }
        runbook.follow(steps, expect, {"OLD_NODE": NODE, "NEW_NODE": NODE_B, "DISK_GUID": guid}, plugin)

        assert guid not in {str(d["uuid"]).upper() for d in node.device_node_disks(NODE)}
        seen = reasons(node)
        assert "DiskFailed" not in seen, seen
        # Both agents notice the swap within their 5 s check, in either order, so the disk Events may come in either
        # order (and DiskMoved from both sides); what must hold: a move Event before the PV is rewritten, and the
        # Migrated explanation after the ClaimLost it explains.
        lost = seen.index("ClaimLost")
        assert {"DiskDetached", "DiskMoved"} & set(seen[:lost]), seen
        assert "Migrated" in seen[lost:], seen
    finally:
        node.kubectl("delete", "deployment", APP, "--ignore-not-found", "--wait=true")
        wait_for("the Pods gone", lambda: not node.real.get("pods", "-l", f"app={APP}")["items"], 120)
        pv_name = node.pv_of(CLAIM) if node.kubectl("get", "pvc", CLAIM, "--ignore-not-found", "-o", "name") else None
        node.delete("pvc", CLAIM)
        if pv_name:
            node.wait_gone("devicevolume", pv_name, namespace=NAMESPACE)
        node.kubectl("delete", "storageclass", "mover", "--ignore-not-found")
        uncordon = node.kubectl("get", "devicenode", NODE, "-n", NAMESPACE, "-o", "json")
        if "cordoned-disks" in uncordon:
            node.kubectl(
                "annotate", "devicenode", NODE, "-n", NAMESPACE, "local.openebs.io/cordoned-disks-", "--overwrite"
            )
        if moved is not None:
            node.restore_disks()
            wait_for(
                "node A reports its disks again",
                lambda: len(node.device_node_disks(NODE)) >= len(node.pool_disks),
                60,
            )
