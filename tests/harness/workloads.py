"""What a user does on the real node: install the driver, make StorageClasses, PVCs and Pods, read their logs."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.disks import LoopDisk
from tests.harness.node import NODE, RealNode, wait_for
from tests.harness.tools import ROOT, Tools

DRIVER = "device.csi.openebs.io"
NAMESPACE = "openebs"
TOPOLOGY_KEY = "openebs.io/nodename"
IMAGE = "docker.io/openebs/device-localpv:0.1.0"  # has sh, coreutils and util-linux: the test workload
MOUNT = "/data"
DEVICE = "/dev/xvda"


def write_overlay(directory: Path, disk_names: list[str]) -> Path:
    """deploy/ unchanged but for the agent's disk filter: the test disks are loop devices, which deploy/ ignores by
    default, and only this node's loop devices may be considered (other tests' disks live on the same host)."""
    directory.mkdir(parents=True, exist_ok=True)
    include = "^(" + "|".join(disk_names) + ")$"
    rel = Path("../../deploy")
    assert (directory / rel).resolve() == (ROOT / "deploy").resolve()
    (directory / "kustomization.yaml").write_text(
        f"""apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {rel}
patches:
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: openebs-device-node
        namespace: openebs
      spec:
        template:
          spec:
            containers:
              - name: device-driver
                env:
                  - name: IGNORE_BLOCK_DEVICES_REGEX
                    value: "^(fd|sr|ram|zram|dm-|md)"
                  - name: DEVICE_INCLUDE_REGEX
                    value: "{include}"
"""
    )
    return directory


@dataclass
class NodeCluster:
    real: RealNode
    pool_disks: list[LoopDisk]
    spare: LoopDisk
    overlay: Path

    # --- the driver -------------------------------------------------------------------------------------------
    def install(self) -> None:
        self.kubectl("apply", "-k", str(self.overlay))
        self.wait_driver_ready()

    def wait_driver_ready(self, timeout: float = 180) -> None:
        self.kubectl("-n", NAMESPACE, "rollout", "status", "deploy/openebs-device-controller", f"--timeout={timeout}s")
        self.kubectl("-n", NAMESPACE, "rollout", "status", "ds/openebs-device-node", f"--timeout={timeout}s")
        wait_for("CSINode lists the driver", self.csinode_driver, timeout)
        wait_for("DeviceNode reports the pool disks", lambda: len(self.device_node_disks()) >= 2, timeout)

    def csinode_driver(self) -> dict[str, Any] | None:
        out = self.kubectl("get", "csinode", NODE, "-o", "json", check=False)
        if not out:
            return None
        for d in json.loads(out)["spec"].get("drivers") or []:
            if d["name"] == DRIVER:
                return d  # type: ignore[no-any-return]
        return None

    def device_node(self) -> dict[str, Any]:
        return self.real.get("devicenode", NODE, namespace=NAMESPACE)

    def device_node_disks(self) -> list[dict[str, Any]]:
        out = self.kubectl("get", "devicenode", NODE, "-n", NAMESPACE, "-o", "json", check=False)
        return list(json.loads(out).get("devices") or []) if out else []

    def free_bytes(self, pool: str = "ssd") -> int:
        from csidriver.api.quantity import parse_quantity

        return sum(parse_quantity(str(d["free"])) for d in self.device_node_disks() if d["name"] == pool)

    def agent_pod(self) -> str:
        return self._pod_named("app.kubernetes.io/component=node")

    def controller_pods(self) -> list[str]:
        out = self.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=controller", "-o", "name")
        return [line.split("/", 1)[1] for line in out.split()]

    def _pod_named(self, selector: str) -> str:
        def one() -> str | None:
            pods = self.real.get("pods", "-l", selector, namespace=NAMESPACE)["items"]
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in live if _ready(p)]
            return ready[0]["metadata"]["name"] if len(live) == 1 and ready else None

        return str(wait_for(f"one Ready pod {selector}", one, 180))

    # --- user objects -----------------------------------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.real.kubectl(*args, check=check, input=input)

    def apply(self, obj: dict[str, Any]) -> None:
        self.real.apply(obj)

    def storage_class(self, name: str, pool: str, fstype: str, binding: str) -> None:
        params = {"devname": pool}
        if fstype != "block":
            params["csi.storage.k8s.io/fstype"] = fstype
        self.apply(
            {
                "apiVersion": "storage.k8s.io/v1",
                "kind": "StorageClass",
                "metadata": {"name": name},
                "provisioner": DRIVER,
                "parameters": params,
                "reclaimPolicy": "Delete",
                "volumeBindingMode": binding,
            }
        )

    def pvc(self, name: str, storage_class: str, size: str, block: bool = False) -> None:
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "storageClassName": storage_class,
                    "volumeMode": "Block" if block else "Filesystem",
                    "resources": {"requests": {"storage": size}},
                },
            }
        )

    def pod(self, name: str, claim: str, script: str, block: bool = False, read_only: bool = False) -> None:
        """A Pod running `script` under sh with the claim at /data (filesystem) or /dev/xvda (block)."""
        container: dict[str, Any] = {
            "name": "app",
            "image": IMAGE,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", script],
        }
        if block:
            container["volumeDevices"] = [{"name": "vol", "devicePath": DEVICE}]
        else:
            container["volumeMounts"] = [{"name": "vol", "mountPath": MOUNT}]
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": name, "namespace": "default"},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 1,
                    "containers": [container],
                    "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
                },
            }
        )

    def wait_pod(self, name: str, phases: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            pod = self.real.get("pod", name)
            if pod["status"].get("phase") in phases:
                return pod
            if pod["status"].get("phase") == "Failed" and "Failed" not in phases:
                raise AssertionError(f"pod {name} failed: {self.logs(name)}")
            return None

        try:
            return wait_for(f"pod {name} in {phases}", reached, timeout)  # type: ignore[return-value]
        except TimeoutError as e:
            events = self.kubectl("get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}")
            raise AssertionError(f"{e}\n{events}") from None

    def run_pod(self, name: str, claim: str, script: str, **kw: Any) -> str:
        """Runs a Pod to completion; returns its log. The Pod is deleted afterwards."""
        self.pod(name, claim, script, **kw)
        pod = self.wait_pod(name, ("Succeeded", "Failed"))
        out = self.logs(name)
        self.delete("pod", name)
        assert pod["status"]["phase"] == "Succeeded", f"pod {name} failed:\n{out}"
        return out

    def logs(self, name: str, namespace: str = "default", container: str | None = None) -> str:
        args = ["logs", "-n", namespace, name] + (["-c", container] if container else [])
        return self.kubectl(*args, check=False)

    def delete(self, kind: str, name: str, namespace: str = "default", timeout: float = 120) -> None:
        self.kubectl("delete", kind, name, "-n", namespace, "--ignore-not-found", f"--timeout={int(timeout)}s")

    def pv_of(self, claim: str) -> str:
        return str(wait_for(f"{claim} bound", lambda: self.real.get("pvc", claim)["spec"].get("volumeName"), 120))

    def wait_gone(self, kind: str, name: str, namespace: str | None = None, timeout: float = 120) -> None:
        ns = ["-n", namespace] if namespace else []

        def gone() -> bool:
            return not self.kubectl("get", kind, name, *ns, "--ignore-not-found", "-o", "name", check=False).strip()

        wait_for(f"{kind} {name} gone", gone, timeout)


def bring_up(tools: Tools, images: list[str], logs: Path, pool: str = "ssd", disk_mib: int = 1024) -> NodeCluster:
    """A started RealNode with two pool disks and a spare blank disk, and the driver installed from deploy/.
    The caller stops `cluster.real`; when this raises, the node's logs are saved to `logs` and it is stopped."""
    real = RealNode(tools, images)
    try:
        real.start()
        disks = [real.disks.pool(pool, disk_mib), real.disks.pool(pool, disk_mib)]
        spare = real.disks.blank(256)  # becomes a pool disk while the agent runs
        overlay = write_overlay(ROOT / "build" / "node-overlay", [d.name for d in [*disks, spare]])
        cluster = NodeCluster(real, disks, spare, overlay)
        cluster.install()
        return cluster
    except BaseException:
        try:
            real.logs(logs)
        finally:
            real.stop()
        raise


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def now() -> float:
    return time.monotonic()
