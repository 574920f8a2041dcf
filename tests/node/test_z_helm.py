"""The Helm chart on the real node (last in this directory: it replaces the kustomize install): the standard
`helm install -n openebs --create-namespace` brings the driver up with non-default values, a Pod gets a volume
from a chart-made StorageClass, and `helm uninstall` removes the workloads but keeps the volume records' CRDs."""

from __future__ import annotations

import json
import subprocess
import tempfile

from harness.node import NODE, wait_for
from harness.tools import ROOT
from harness.workloads import DRIVER, NAMESPACE, NodeCluster

CHART = ROOT / "deploy" / "helm" / "device-localpv"


def helm(node: NodeCluster, *args: str) -> str:
    assert node.real.api is not None
    kubeconfig = node.real.api.identities["admin"].kubeconfig
    done = subprocess.run(
        [node.real.tools.helm, "--kubeconfig", kubeconfig, *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_helm_install_on_the_real_node(node: NodeCluster) -> None:
    assert not node.kubectl("get", "devicevolume", "-A", "-o", "name").strip(), "volumes left by earlier tests"
    node.kubectl("delete", "-k", str(node.overlay), "--wait=true", "--timeout=180s")
    node.wait_gone("crd", "devicevolumes.local.openebs.io")
    node.wait_gone("namespace", NAMESPACE, timeout=180)
    wait_for("plugin unregistered from CSINode", lambda: node.csinode_driver() is None, 60)

    disks = [d.name for d in [*node.pool_disks, node.spare]]
    values = {
        "controller": {"replicas": 1},
        "leaderElection": {"leaseSeconds": 10},
        "ignoreDevicesRegex": "^(fd|sr|ram|zram|dm-|md)",
        "includeDevicesRegex": "^(" + "|".join(disks) + ")$",
        "storageClasses": [
            {
                "name": "helm-xfs",
                "pool": "ssd",
                "scheduler": "VolumeWeighted",
                "fsType": "xfs",
                "volumeBindingMode": "WaitForFirstConsumer",
                "reclaimPolicy": "Delete",
            }
        ],
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        json.dump(values, f)  # JSON is YAML
        f.flush()
        helm(node, "install", "device-localpv", str(CHART), "-n", NAMESPACE, "--create-namespace", "-f", f.name)
    try:
        node.wait_driver_ready()

        def available() -> object:
            status = node.real.get("deploy", "openebs-device-controller", namespace=NAMESPACE)["status"]
            return status.get("availableReplicas") == status.get("replicas") == 1

        wait_for("one controller replica available", available, 120)
        registered = node.csinode_driver()
        assert registered is not None and registered["nodeID"] == NODE
        sc = node.real.get("storageclass", "helm-xfs", namespace=None)
        assert sc["provisioner"] == DRIVER and sc["parameters"]["scheduler"] == "VolumeWeighted"

        node.pvc("helm-data", "helm-xfs", "320Mi")
        out = node.run_pod(
            "helm-app", "helm-data", "echo via-helm > /data/f; sync; cat /data/f; grep ' /data ' /proc/mounts"
        )
        assert out.startswith("via-helm") and " xfs rw," in out, out
        pv = node.pv_of("helm-data")
        node.delete("pvc", "helm-data")
        node.wait_gone("devicevolume", pv, namespace=NAMESPACE)
    finally:
        helm(node, "uninstall", "device-localpv", "-n", NAMESPACE, "--wait", "--timeout=180s")
    wait_for("driver pods gone", lambda: not node.kubectl("get", "pods", "-n", NAMESPACE, "-o", "name").strip(), 120)
    # CRDs from the chart's crds/ stay (helm never deletes them), and so does the namespace helm created.
    assert node.kubectl("get", "crd", "devicevolumes.local.openebs.io", "-o", "name").strip()
    assert node.kubectl("get", "namespace", NAMESPACE, "-o", "name").strip()
