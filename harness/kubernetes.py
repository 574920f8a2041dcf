"""A multi-node test cluster on one machine: the API server plus kube-controller-manager, kube-scheduler, the
snapshot CRDs and snapshot-controller, and the external csi-provisioner, csi-resizer and csi-snapshotter (all real),
our controller, and one agent per simulated node with its own loop disks, its own socket, its own Node and CSINode
objects."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from harness.apiserver import NAMESPACE, ApiServer, free_port, spawn, start_kube_components, stop_all
from harness.disks import LoopDisk, LoopDisks
from harness.driver import Driver, Process
from harness.tools import ROOT, Tools

DRIVER = "device.csi.openebs.io"
TOPOLOGY_KEY = "openebs.io/nodename"
KCM_CONTROLLERS = ",".join(
    [
        "persistentvolume-binder-controller",
        "persistentvolume-expander-controller",
        "persistentvolume-protection-controller",
        "persistentvolumeclaim-protection-controller",
        "garbage-collector-controller",
    ]
)


def _tool_env(key: str) -> str:
    out = subprocess.run([str(ROOT / "hack" / "tools.sh"), "env"], check=True, capture_output=True, text=True).stdout
    return next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith(f"{key}="))


def resizer_binary() -> str:
    """csi-resizer as `hack/tools.sh csi-resizer` builds it."""
    return _tool_env("CSI_RESIZER_BIN")


@dataclass
class SimNode:
    name: str
    disks: list[LoopDisk]
    agent: Process


@dataclass
class KubeCluster:
    api: ApiServer
    tools: Tools
    workdir: Path
    disks: LoopDisks = field(default_factory=LoopDisks)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    nodes: dict[str, SimNode] = field(default_factory=dict)
    driver: Driver | None = None
    metrics_port: int = 0

    def start_kube_components(self, *kcm_args: str) -> None:
        """`kcm_args` go to kube-controller-manager (e.g. its client's --kube-api-qps; the default, 20, is what
        paces a burst of claims through the PV controller)."""
        admin = self.api.identities["admin"].kubeconfig
        self.procs += start_kube_components(
            self.tools, admin, self.workdir, KCM_CONTROLLERS, "--concurrent-gc-syncs=5", *kcm_args
        )
        # Volume snapshots: the cluster's add-on (CRDs and snapshot-controller), as a cluster operator installs it.
        self.procs.append(self.api.install_snapshot_addon(self.workdir))

    def start_driver(self, capacity_poll: str = "1s") -> None:
        self.driver = Driver(self.api, self.workdir)
        self.metrics_port = free_port()
        ctl = self.driver.controller(METRICS_ADDRESS=f"127.0.0.1:{self.metrics_port}")
        ctl.wait_ready()
        env = {"NAMESPACE": NAMESPACE, "PATH": "/usr/bin:/bin"}
        self.procs.append(
            spawn(
                [
                    self.tools.csi_provisioner,
                    f"--kubeconfig={self.api.identities['controller'].kubeconfig}",
                    f"--csi-address={ctl.socket}",
                    "--strict-topology",
                    "--extra-create-metadata",
                    "--default-fstype=ext4",
                    "--enable-capacity",
                    "--capacity-ownerref-level=-1",
                    f"--capacity-poll-interval={capacity_poll}",
                    "--leader-election=false",
                    "--timeout=30s",
                    "--retry-interval-start=500ms",
                    "--retry-interval-max=5s",
                    "--worker-threads=100",
                    "--kube-api-qps=100",
                    "--kube-api-burst=200",
                    "--v=2",
                ],
                self.workdir / "csi-provisioner.log",
                env=env,
            )
        )
        # VolumeSnapshotContents become CreateSnapshot/DeleteSnapshot.
        self.procs.append(
            spawn(
                [
                    str(Path(self.tools.snapshotter) / "csi-snapshotter"),
                    f"--kubeconfig={self.api.identities['controller'].kubeconfig}",
                    f"--csi-address={ctl.socket}",
                    "--leader-election=false",
                    "--timeout=60s",
                    "--extra-create-metadata",
                    "--retry-interval-start=500ms",
                    "--retry-interval-max=5s",
                    "--v=2",
                ],
                self.workdir / "csi-snapshotter.log",
                env=env,
            )
        )
        # Grown claims become ControllerExpandVolume; the resulting FileSystemResizePending is for a kubelet.
        self.procs.append(
            spawn(
                [
                    resizer_binary(),
                    f"--kubeconfig={self.api.identities['controller'].kubeconfig}",
                    f"--csi-address={ctl.socket}",
                    "--leader-election=false",
                    "--timeout=30s",
                    "--handle-volume-inuse-error=false",
                    "--retry-interval-start=500ms",
                    "--retry-interval-max=5s",
                    "--v=2",
                ],
                self.workdir / "csi-resizer.log",
                env=env,
            )
        )

    def add_node(self, name: str, disks: list[tuple[str, int]]) -> SimNode:
        """A Ready Node with capacity for pods, its CSINode, pool disks `(pool, MiB)`, and its agent."""
        made = [self.disks.pool(pool, size) for pool, size in disks]
        labels = {"kubernetes.io/hostname": name, TOPOLOGY_KEY: name}
        self.api.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}),
        )
        status = {
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "simulated"}],
                "capacity": {"cpu": "8", "memory": "16Gi", "pods": "250"},
                "allocatable": {"cpu": "8", "memory": "16Gi", "pods": "250"},
            }
        }
        self.api.kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
        self.api.kubectl("taint", "nodes", name, "node.kubernetes.io/not-ready:NoSchedule-", check=False)
        self.api.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {
                    "apiVersion": "storage.k8s.io/v1",
                    "kind": "CSINode",
                    "metadata": {"name": name},
                    "spec": {"drivers": [{"name": DRIVER, "nodeID": name, "topologyKeys": [TOPOLOGY_KEY]}]},
                }
            ),
        )
        assert self.driver is not None
        agent = self.driver.agent(name, [d.device for d in made])
        agent.wait_ready()
        node = SimNode(name, made, agent)
        self.nodes[name] = node
        return node

    def set_disks(self, name: str, disks: list[LoopDisk]) -> None:
        """Moves disks between simulated nodes: restarts the node's agent seeing exactly `disks`."""
        assert self.driver is not None
        node = self.nodes[name]
        node.agent.stop()
        node.agent = self.driver.agent(name, [d.device for d in disks])
        node.agent.wait_ready()
        node.disks = list(disks)

    def apply(self, obj: dict[str, object]) -> None:
        self.api.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def get(self, *what: str, namespace: str | None = "default") -> dict:  # type: ignore[type-arg]
        ns = ["-n", namespace] if namespace else []
        return json.loads(self.api.kubectl("get", *what, *ns, "-o", "json"))  # type: ignore[no-any-return]

    def rpc_counts(self) -> dict[tuple[str, str], float]:
        """The controller's CSI call counters by (method, code)."""
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("device_localpv_rpc_total{"):
                labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1 : line.index("}")].split(","))
                key = (labels["method"].strip('"'), labels["code"].strip('"'))
                out[key] = float(line.rsplit(" ", 1)[1])
        return out

    def stop(self) -> None:
        if self.driver is not None:
            self.driver.stop()
        stop_all(self.procs)
        self.disks.cleanup()
