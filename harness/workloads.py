"""What a user does on the real node: install the driver, make StorageClasses, PVCs and Pods, read their logs."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.disks import LoopDisk
from harness.node import NODE, NODE_B, ExtraNode, RealNode, wait_for
from harness.objects import storage_class_body
from harness.tools import ROOT, Tools

DRIVER = "device.csi.openebs.io"
NAMESPACE = "openebs"
TOPOLOGY_KEY = "openebs.io/nodename"
IMAGE = "docker.io/openebs/device-localpv:0.1.0"  # has sh, coreutils and util-linux: the test workload
MOUNT = "/data"
DEVICE = "/dev/xvda"
AGENT = "openebs-device-node"  # deploy/'s DaemonSet
IGNORE_REGEX = "^(fd|sr|ram|zram|dm-|md)"  # deploy/'s default without loop


def agent_daemonset(node: str) -> str:
    """The DaemonSet whose agent runs on `node`: deploy/'s for the first node, a copy of it for each other node."""
    return AGENT if node == NODE else f"{AGENT}-{node.removeprefix(NODE + '-')}"  # dlpv-node-b: ...-node-b


def write_overlay(directory: Path, disk_names: list[str], others: Mapping[str, list[str]] | None = None) -> Path:
    """deploy/ unchanged but for the agent's disk filter: the test disks are loop devices, which deploy/ ignores by
    default, and only this node's loop devices may be considered (other tests' disks live on the same host).

    All nodes share the host's /dev, so each node needs its own filter: with `others` (node -> its disk names),
    deploy/'s DaemonSet runs on the first node only, and each other node gets a copy of it (same Pod template, its
    own name and filter) that runs on that node only, and has no Pod while the node does not exist."""
    directory.mkdir(parents=True, exist_ok=True)
    include = "^(" + "|".join(disk_names) + ")$"
    rel = Path("../../deploy")
    assert (directory / rel).resolve() == (ROOT / "deploy").resolve()
    copies = []
    for node, names in (others or {}).items():
        copies.append(f"agent-{node}.yaml")
        (directory / copies[-1]).write_text(json.dumps(_agent_copy(node, names), indent=2))  # JSON is YAML
    pin = f"""
            nodeSelector:
              kubernetes.io/hostname: {NODE}"""
    (directory / "kustomization.yaml").write_text(
        f"""apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {rel}
{"".join(f"  - {c}{chr(10)}" for c in copies)}patches:
  - patch: |-
      apiVersion: apps/v1
      kind: DaemonSet
      metadata:
        name: openebs-device-node
        namespace: openebs
      spec:
        template:
          spec:{pin if others else ""}
            containers:
              - name: device-driver
                env:
                  - name: IGNORE_BLOCK_DEVICES_REGEX
                    value: "{IGNORE_REGEX}"
                  - name: DEVICE_INCLUDE_REGEX
                    value: "{include}"
"""
    )
    return directory


def _agent_copy(node: str, disk_names: list[str]) -> dict[str, Any]:
    """deploy/'s agent DaemonSet for `node` only, with its disk filter. Its Pods keep the agent's labels (anything
    that looks for agent Pods finds them) plus one that keeps them out of the other DaemonSets' selectors' care."""
    (ds,) = [d for d in yaml.safe_load_all((ROOT / "deploy" / "agent.yaml").read_text()) if d]
    assert ds["kind"] == "DaemonSet" and ds["metadata"]["name"] == AGENT, ds["metadata"]
    ds["metadata"]["name"] = agent_daemonset(node)
    own = {"device-localpv.test/node": node}
    ds["spec"]["selector"]["matchLabels"].update(own)
    template = ds["spec"]["template"]
    template["metadata"]["labels"].update(own)
    template["spec"]["nodeSelector"]["kubernetes.io/hostname"] = node
    (container,) = [c for c in template["spec"]["containers"] if c["name"] == "device-driver"]
    env = {"IGNORE_BLOCK_DEVICES_REGEX": IGNORE_REGEX, "DEVICE_INCLUDE_REGEX": "^(" + "|".join(disk_names) + ")$"}
    container["env"] = [e for e in container["env"] if e["name"] not in env]
    container["env"] += [{"name": k, "value": v} for k, v in env.items()]
    return ds  # type: ignore[no-any-return]


@dataclass
class NodeCluster:
    real: RealNode
    pool_disks: list[LoopDisk]
    spare: LoopDisk
    overlay: Path
    # The loop device names in each node's disk filter (the overlay's), and each disk image's first device name.
    filters: dict[str, list[str]] = field(default_factory=dict)
    homes: dict[Path, str] = field(default_factory=dict)
    node_b_disks: list[LoopDisk] = field(default_factory=list)  # pool disks plugged into node B from the start
    node_b: ExtraNode | None = None  # while `add_node_b` has it running

    # --- the driver -------------------------------------------------------------------------------------------
    def install(self) -> None:
        self.kubectl("apply", "-k", str(self.overlay))
        self.wait_driver_ready()

    def wait_driver_ready(self, timeout: float = 180) -> None:
        self.kubectl("-n", NAMESPACE, "rollout", "status", "deploy/openebs-device-controller", f"--timeout={timeout}s")
        self.wait_agent_ready(NODE, timeout)
        if self.node_b is not None:
            self.wait_agent_ready(NODE_B, timeout, disks=1)

    def wait_agent_ready(self, node: str, timeout: float = 180, disks: int = 2) -> None:
        """The node's agent DaemonSet rolled out, its plugin registered and its DeviceNode listing `disks` disks."""
        ds = agent_daemonset(node)
        self.kubectl("-n", NAMESPACE, "rollout", "status", f"ds/{ds}", f"--timeout={timeout}s")
        wait_for(f"CSINode {node} lists the driver", lambda: self.csinode_driver(node), timeout)
        wait_for(f"DeviceNode {node} reports pool disks", lambda: len(self.device_node_disks(node)) >= disks, timeout)

    def csinode_driver(self, node: str = NODE) -> dict[str, Any] | None:
        out = self.kubectl("get", "csinode", node, "-o", "json", check=False)
        if not out:
            return None
        for d in json.loads(out)["spec"].get("drivers") or []:
            if d["name"] == DRIVER:
                return d  # type: ignore[no-any-return]
        return None

    def device_node(self, node: str = NODE) -> dict[str, Any]:
        return self.real.get("devicenode", node, namespace=NAMESPACE)

    def device_node_disks(self, node: str = NODE) -> list[dict[str, Any]]:
        out = self.kubectl("get", "devicenode", node, "-n", NAMESPACE, "-o", "json", check=False)
        return list(json.loads(out).get("devices") or []) if out else []

    def free_bytes(self, pool: str = "ssd", node: str = NODE) -> int:
        from csidriver.api.quantity import parse_quantity

        return sum(parse_quantity(str(d["free"])) for d in self.device_node_disks(node) if d["name"] == pool)

    def agent_pod(self, node: str = NODE) -> str:
        return self._pod_named("app.kubernetes.io/component=node", node)

    def controller_pods(self) -> list[str]:
        out = self.kubectl("get", "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=controller", "-o", "name")
        return [line.split("/", 1)[1] for line in out.split()]

    def _pod_named(self, selector: str, node: str | None = None) -> str:
        def one() -> str | None:
            pods = self.real.get("pods", "-l", selector, namespace=NAMESPACE)["items"]
            pods = [p for p in pods if node is None or p["spec"].get("nodeName") == node]
            live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
            ready = [p for p in live if _ready(p)]
            return ready[0]["metadata"]["name"] if len(live) == 1 and ready else None

        return str(wait_for(f"one Ready pod {selector}" + (f" on {node}" if node else ""), one, 180))

    # --- a second node, and disks moved between nodes -----------------------------------------------------------
    def add_node_b(self) -> ExtraNode:
        """Starts node B on this host and waits for its agent (the overlay's second DaemonSet) to be Ready with
        node B's disk. `remove_node_b` undoes it, also after a failure here."""
        assert self.node_b is None, "node B is already up"
        self.node_b = ExtraNode(self.real)
        self.node_b.start()
        self.wait_agent_ready(NODE_B, disks=len(self.node_b_disks))
        return self.node_b

    def remove_node_b(self) -> None:
        """Stops node B for good (its Node object and Pods deleted, and its DeviceNode: no agent is left to keep
        it), then plugs every moved disk back into the node it started on."""
        if self.node_b is not None:
            self.node_b.stop()
            self.node_b = None
        self.kubectl("delete", "devicenode", NODE_B, "-n", NAMESPACE, "--ignore-not-found", check=False)
        self.restore_disks()

    def node_of(self, disk: LoopDisk) -> str:
        """The node whose disk filter names the disk's loop device: where the disk is plugged in."""
        return next(node for node, names in self.filters.items() if disk.name in names)

    def move_disk(self, disk: LoopDisk, to: str) -> None:
        """Unplugs the disk from its node and plugs it into node `to`, as an operator moves a disk between hosts:
        its image leaves the loop device that its node's filter names for one that `to`'s filter names (taking
        the place of a placeholder, which takes the disk's old name), bytes and partition table unchanged. The
        disk must not be in use (no partition mounted)."""
        if self.node_of(disk) == to:
            return
        free = [d for d in self.real.disks.disks if d.placeholder and d.name in self.filters[to]]
        if not free:
            raise RuntimeError(f"no free loop device name left in {to}'s disk filter")
        home = self.homes.get(disk.image, "")
        self.real.disks.swap(disk, min(free, key=lambda d: d.device != home))  # its first name if free

    def restore_disks(self) -> None:
        """Plugs every disk back into the node it started on."""
        for disk in self.real.disks.disks:
            home = self.homes.get(disk.image)
            if home is not None and not disk.placeholder and disk.device != home:
                self.move_disk(disk, next(n for n, names in self.filters.items() if os.path.basename(home) in names))

    # --- user objects -----------------------------------------------------------------------------------------
    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        return self.real.kubectl(*args, check=check, input=input)

    def apply(self, obj: dict[str, Any]) -> None:
        self.real.apply(obj)

    def storage_class(self, name: str, pool: str, fstype: str, binding: str, nodes: list[str] | None = None) -> None:
        """`nodes`: the StorageClass's allowedTopologies (volumes are made on those nodes only)."""
        params = {"devname": pool}
        if fstype != "block":
            params["csi.storage.k8s.io/fstype"] = fstype
        self.apply(storage_class_body(name, params, binding, nodes))

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

    def pod(
        self, name: str, claim: str, script: str, block: bool = False, read_only: bool = False, node: str | None = None
    ) -> None:
        """A Pod running `script` under sh with the claim at /data (filesystem) or /dev/xvda (block), on `node` if
        given (a nodeSelector: the scheduler still decides, and waits for the volume's node)."""
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
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
            "volumes": [{"name": "vol", "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}}],
        }
        if node is not None:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        self.apply(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"}, "spec": spec}
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
    The caller stops `cluster.real`; when this raises, the node's logs are saved to `logs` and it is stopped.

    The loop devices of node B (started later, if at all, by `add_node_b`) are reserved here too, so that the
    overlay's filters are fixed: node B's pool disk, and placeholders (two on node B, one on this node) that make
    room for disks moved between the nodes."""
    real = RealNode(tools, images)
    try:
        real.start()
        disks = [real.disks.pool(pool, disk_mib), real.disks.pool(pool, disk_mib)]
        spare = real.disks.blank(256)  # becomes a pool disk while the agent runs
        node_b_disks = [real.disks.pool(pool, disk_mib)]
        filters = {
            NODE: [d.name for d in [*disks, spare, real.disks.placeholder()]],
            NODE_B: [d.name for d in [*node_b_disks, real.disks.placeholder(), real.disks.placeholder()]],
        }
        overlay = write_overlay(ROOT / "build" / "node-overlay", filters[NODE], {NODE_B: filters[NODE_B]})
        homes = {d.image: d.device for d in real.disks.disks if not d.placeholder}
        cluster = NodeCluster(real, disks, spare, overlay, filters, homes, node_b_disks)
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
