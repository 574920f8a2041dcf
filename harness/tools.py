"""Locations of the Go-built tools (hack/tools.sh builds them once into a versioned cache)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"  # logs the tests and benches keep


@dataclass(frozen=True)
class Tools:
    etcd: str
    kube_apiserver: str
    kubectl: str
    csi_sanity: str
    kube_controller_manager: str
    kube_scheduler: str
    csi_provisioner: str
    kubelet: str
    helm: str
    # The original Go driver (openebs/device-localpv, ORIGINAL_VERSION): a test component, built by
    # `hack/tools.sh original` (not part of `all`), so tests using it must check that it exists.
    original: str
    # csi-snapshotter, snapshot-controller and crd/ (the snapshot CRDs), as `hack/tools.sh csi-snapshotter` builds them.
    snapshotter: str = ""


def tools() -> Tools:
    out = subprocess.run([str(ROOT / "hack" / "tools.sh"), "env"], check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    kube = env["KUBE_BIN_DIR"]
    return Tools(
        etcd=env["ETCD_BIN"],
        kube_apiserver=os.path.join(kube, "kube-apiserver"),
        kubectl=os.path.join(kube, "kubectl"),
        csi_sanity=env["CSI_SANITY_BIN"],
        kube_controller_manager=os.path.join(kube, "kube-controller-manager"),
        kube_scheduler=os.path.join(kube, "kube-scheduler"),
        csi_provisioner=env["CSI_PROVISIONER_BIN"],
        kubelet=os.path.join(kube, "kubelet"),
        helm=env["HELM_BIN"],
        original=env["ORIGINAL_BIN"],
        snapshotter=env["SNAPSHOTTER_DIR"],
    )
