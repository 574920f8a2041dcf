"""A real Kubernetes node on this machine: containerd + runc + a real kubelet, pod networking through Debian's CNI
plugins, beside etcd, kube-apiserver, kube-controller-manager and kube-scheduler. The driver is installed from
deploy/ (kustomize) or the Helm chart and runs in Pods from images built by hack/image.sh.

What differs from a production node, and why (everything else is the real component with its defaults):
- cgroup v1 with the cgroupfs driver and no systemd: `cgroupDriver: cgroupfs`, `failCgroupV1: false`.
- The VM lacks CAP_SYS_RESOURCE, so runc cannot set negative OOM scores: containerd's CRI
  `restrict_oom_score_adj = true`.
- No kube-proxy and no DNS: the only Service Pods use is `kubernetes` (the API server). Its ClusterIP is a second
  address of the pod bridge on the host and kube-apiserver listens there on 443, so Pods reach it by that IP exactly
  as they would through kube-proxy.
- kubelet's own API (logs, metrics) listens on the pod bridge's host address and allows anonymous access: the
  test node has no certificate authority for kubelet clients.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.apiserver import ApiServer, spawn, start_kube_components, stop_all
from tests.harness.disks import LoopDisks
from tests.harness.tools import ROOT, Tools

NODE = "dlpv-node"
BRIDGE = "dlpv0"
BRIDGE_MAC = "02:64:6c:70:76:01"  # locally administered
GATEWAY = "10.200.0.1"  # the host on the pod bridge: kubelet's node IP
POD_CIDR = "10.200.0.0/24"
SERVICE_CIDR = "10.201.0.0/24"
API_IP = "10.201.0.1"  # ClusterIP of the `kubernetes` Service (first address of SERVICE_CIDR)
KUBELET_DIR = Path("/var/lib/kubelet")  # deploy/ names this path; a node must use it
KUBELET_PORT = 10250
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
KCM_CONTROLLERS = ",".join(
    [
        "serviceaccount-controller",
        "root-ca-certificate-publisher-controller",
        "namespace-controller",
        "garbage-collector-controller",
        "deployment-controller",
        "replicaset-controller",
        "daemonset-controller",
        "node-lifecycle-controller",
        "pod-garbage-collector-controller",
        "persistentvolume-binder-controller",
        "persistentvolume-protection-controller",
        "persistentvolumeclaim-protection-controller",
    ]
)


def run(*argv: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done


def wait_for(what: str, check: Callable[[], object], timeout: float, interval: float = 0.5) -> object:
    """Polls `check` until it returns something truthy; the last error or value is in the failure message."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            got = check()
            if got:
                return got
            last = got
        except Exception as e:
            last = e
        time.sleep(interval)
    raise TimeoutError(f"{what}: not done after {timeout}s (last: {last!r})")


def kill_with_children(pid: str) -> None:
    """SIGKILL a process and its direct children (a containerd shim and the container it runs)."""
    for victim in [*run("pgrep", "-P", pid, check=False).stdout.split(), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(victim), signal.SIGKILL)


def mounts_under(prefix: str) -> list[str]:
    """Mount points at or below `prefix`, deepest first (as /proc/self/mountinfo lists them)."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix.rstrip("/") + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: (-p.count("/"), p))


def unmount_all(prefix: str) -> None:
    for _ in range(5):
        points = mounts_under(prefix)
        if not points:
            return
        for point in points:
            run("umount", "--lazy", point, check=False)
    leftover = mounts_under(prefix)
    if leftover:
        raise RuntimeError(f"mounts left under {prefix}: {leftover}")


@dataclass
class PodNetwork:
    """The host side: a bridge whose addresses are the Pods' gateway and the API server's Service IP."""

    def up(self) -> None:
        self.down()
        run("ip", "link", "add", BRIDGE, "type", "bridge")
        # A fixed address: otherwise the bridge takes the lowest address of its ports, so it changes as Pods come
        # and go, and Pods keep sending to the gateway's old address until their ARP entries expire (seconds of
        # lost traffic to the API server under a burst of Pods).
        run("ip", "link", "set", BRIDGE, "address", BRIDGE_MAC)
        run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        # A second host address on the bridge (this kernel has no dummy links): local to the host, so a Pod's
        # packets to it, sent through its gateway, are delivered to the API server.
        run("ip", "addr", "add", f"{API_IP}/32", "dev", BRIDGE)

    def down(self) -> None:
        run("ip", "link", "del", BRIDGE, check=False)

    @staticmethod
    def cni_config(directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        conf = {
            "cniVersion": "0.4.0",
            "name": "dlpv",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }
        (directory / "10-dlpv.conflist").write_text(json.dumps(conf, indent=2))


@dataclass
class Containerd:
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.workdir / "containerd.sock"

    @property
    def root(self) -> Path:
        return self.workdir / "root"

    @property
    def state(self) -> Path:
        return self.workdir / "state"

    def start(self, cni_dir: Path) -> None:
        config = self.workdir / "config.toml"
        config.write_text(
            f"""version = 2
root = "{self.root}"
state = "{self.state}"
[grpc]
  address = "{self.socket}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # The VM lacks CAP_SYS_RESOURCE: negative OOM score adjustments are refused.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_dir}"
"""
        )
        self.proc = spawn(["containerd", "--config", str(config)], self.workdir / "containerd.log")
        wait_for("containerd socket", lambda: self.ctr("version").returncode == 0, 30)

    def ctr(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run("ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args, check=False)

    def import_image(self, archive: str) -> None:
        done = self.ctr("images", "import", "--no-unpack", archive)
        if done.returncode != 0:
            raise RuntimeError(f"ctr images import {archive}: {done.stderr}")

    def stop(self) -> None:
        # Containers first (their shims outlive containerd), then containerd itself.
        for line in run("pgrep", "-af", "containerd-shim", check=False).stdout.splitlines():
            pid, _, cmd = line.partition(" ")
            if str(self.socket) in cmd:
                kill_with_children(pid)
        if self.proc is not None:
            stop_all([self.proc])
        unmount_all(str(self.state))
        unmount_all(str(self.root))


@dataclass
class Kubelet:
    workdir: Path
    tools: Tools
    kubeconfig: str
    runtime_socket: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.workdir / "kubelet-config.yaml"
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    # No systemd here, and the VM's cgroups are v1 (hybrid).
                    "cgroupDriver": "cgroupfs",
                    "failCgroupV1": False,
                    "failSwapOn": False,
                    "address": GATEWAY,
                    "port": KUBELET_PORT,
                    "readOnlyPort": 0,
                    "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
                    "authorization": {"mode": "AlwaysAllow"},
                    "containerRuntimeEndpoint": f"unix://{self.runtime_socket}",
                    "resolvConf": "/etc/resolv.conf",
                    "serializeImagePulls": False,
                    "makeIPTablesUtilChains": False,
                    "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
                    "imageGCHighThresholdPercent": 100,
                    "imageGCLowThresholdPercent": 99,
                    "syncFrequency": "10s",
                    "volumeStatsAggPeriod": "5s",
                    "nodeStatusUpdateFrequency": "5s",
                }
            )
        )
        self.proc = spawn(
            [
                self.tools.kubelet,
                f"--config={config}",
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={NODE}",
                f"--node-ip={GATEWAY}",
                f"--root-dir={KUBELET_DIR}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                "--v=2",
            ],
            self.workdir / "kubelet.log",
        )

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_all([self.proc], 20)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def get(self, path: str) -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        url = f"https://{GATEWAY}:{KUBELET_PORT}{path}"
        return urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()  # type: ignore[no-any-return]


MARKER = KUBELET_DIR / ".device-localpv-test-node"  # written by RealNode: this kubelet directory is ours


def clean_stale_node() -> None:
    """Removes what a test node killed without its clean-up left behind (its processes, mounts, bridge, loop disks),
    only when its marker says the kubelet directory is ours."""
    if not MARKER.exists():
        return
    stale = json.loads(MARKER.read_text())
    workdir, disks = stale["workdir"], stale["disks"]
    for pid in run("pgrep", "-f", workdir, check=False).stdout.split():
        kill_with_children(pid)
    time.sleep(1)
    for netns in Path("/var/run/netns").glob("cni-*"):
        run("ip", "netns", "delete", netns.name, check=False)
    for prefix in (str(KUBELET_DIR), workdir):
        unmount_all(prefix)
        run("rm", "-rf", "--one-file-system", prefix, check=False)
    for line in run("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE", check=False).stdout.splitlines():
        name, _, backing = line.strip().partition(" ")
        if backing.strip().startswith(disks + "/"):
            run("losetup", "--detach", name, check=False)
    PodNetwork().down()


@dataclass
class RealNode:
    """The cluster: API server (reachable from Pods), controllers, scheduler, containerd and kubelet."""

    tools: Tools
    images: list[str]
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dlpvn-")))
    api: ApiServer | None = None
    network: PodNetwork = field(default_factory=PodNetwork)
    containerd: Containerd | None = None
    kubelet: Kubelet | None = None
    disks: LoopDisks = field(default_factory=LoopDisks)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self) -> RealNode:
        clean_stale_node()
        if mounts_under(str(KUBELET_DIR)) or KUBELET_DIR.exists():
            raise RuntimeError(f"{KUBELET_DIR} already exists on this host: another kubelet? Not touching it.")
        KUBELET_DIR.mkdir(parents=True)
        MARKER.write_text(json.dumps({"workdir": str(self.workdir), "disks": str(self.disks.workdir)}))
        self.network.up()
        self.api = ApiServer(
            self.tools, bind=API_IP, port=443, service_cidr=SERVICE_CIDR, pods=True, workdir=self.workdir / "api"
        )
        self.api.workdir.mkdir()
        self.api.start()
        self._kube_components()
        cni = self.workdir / "cni"
        PodNetwork.cni_config(cni)
        self.containerd = Containerd(self.workdir / "containerd")
        self.containerd.workdir.mkdir()
        self.containerd.start(cni)
        for archive in self.images:
            self.containerd.import_image(archive)
        self.kubelet = Kubelet(
            self.workdir, self.tools, self.api.identities["admin"].kubeconfig, self.containerd.socket
        )
        self.kubelet.start()
        wait_for("node Ready", self.node_ready, 120)
        wait_for("default ServiceAccount", lambda: self.kubectl("get", "sa", "default", check=False), 60)
        return self

    def _kube_components(self) -> None:
        assert self.api is not None
        admin = self.api.identities["admin"].kubeconfig
        # A single test node: evict nothing when it briefly misses a heartbeat (kubelet restarts).
        extra = (f"--root-ca-file={self.api.ca_file}", "--node-monitor-grace-period=60s")
        self.procs += start_kube_components(self.tools, admin, self.workdir, KCM_CONTROLLERS, *extra)

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        assert self.api is not None
        return self.api.kubectl(*args, check=check, input=input)

    def get(self, *what: str, namespace: str | None = "default") -> dict:  # type: ignore[type-arg]
        ns = ["-n", namespace] if namespace else []
        return json.loads(self.kubectl("get", *what, *ns, "-o", "json"))  # type: ignore[no-any-return]

    def apply(self, obj: dict[str, object]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def node_ready(self) -> bool:
        out = self.kubectl("get", "node", NODE, "-o", "json", check=False)
        if not out:
            return False
        conditions = json.loads(out)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for log in [*self.workdir.glob("*.log"), *self.workdir.glob("*/*.log")]:
            shutil.copy(log, dest / log.name)
        if self.api is None or not self.api.procs:
            return
        pods = self.kubectl("get", "pods", "-A", "-o", "wide", check=False)
        (dest / "pods.txt").write_text(pods)
        for ns, pod in self._pods():
            for container in self._containers(ns, pod):
                text = self.kubectl("logs", "-n", ns, pod, "-c", container, check=False)
                (dest / f"pod-{ns}-{pod}-{container}.log").write_text(text)
                previous = self.kubectl("logs", "--previous", "-n", ns, pod, "-c", container, check=False)
                if previous:
                    (dest / f"pod-{ns}-{pod}-{container}.previous.log").write_text(previous)

    def _pods(self) -> Iterator[tuple[str, str]]:
        out = self.kubectl("get", "pods", "-A", "-o", "json", check=False)
        for item in json.loads(out or '{"items": []}')["items"]:
            yield item["metadata"]["namespace"], item["metadata"]["name"]

    def _containers(self, ns: str, pod: str) -> list[str]:
        out = self.kubectl("get", "pod", "-n", ns, pod, "-o", "jsonpath={.spec.containers[*].name}", check=False)
        return out.split()

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
        if self.containerd is not None:
            self.containerd.stop()
        stop_all(self.procs)
        if self.api is not None:
            self.api.stop()
        for netns in Path("/var/run/netns").glob("cni-*"):
            run("ip", "netns", "delete", netns.name, check=False)
        unmount_all(str(KUBELET_DIR))
        if KUBELET_DIR.exists():
            run("rm", "-rf", "--one-file-system", str(KUBELET_DIR))
        self.network.down()
        self.disks.cleanup()
        shutil.rmtree(ROOT / "build" / "node-overlay", ignore_errors=True)
        unmount_all(str(self.workdir))
        run("rm", "-rf", "--one-file-system", str(self.workdir), check=False)
