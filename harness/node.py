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

A second node (`ExtraNode`, started on demand) shares the host: its own containerd and kubelet run in a mount
namespace of their own in which /var/lib/kubelet (the path deploy/ names), the Pod log directories and /run/netns are
its own directories, so the DaemonSets of deploy/ work on it unchanged; its Pods share the bridge and /dev (a disk
"moves" between the nodes when its loop device changes name: `LoopDisks.swap`).
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

from harness.apiserver import ApiServer, spawn, start_kube_components, stop_all
from harness.disks import LoopDisks
from harness.tools import ROOT, Tools

NODE = "dlpv-node"
BRIDGE = "dlpv0"
BRIDGE_MAC = "02:64:6c:70:76:01"  # locally administered
GATEWAY = "10.200.0.1"  # the host on the pod bridge: kubelet's node IP
POD_CIDR = "10.200.0.0/24"
POD_IPS = ("10.200.0.16", "10.200.0.127")  # this node's Pods; .2-.15 are for other nodes' host addresses
SERVICE_CIDR = "10.201.0.0/24"
API_IP = "10.201.0.1"  # ClusterIP of the `kubernetes` Service (first address of SERVICE_CIDR)
KUBELET_DIR = Path("/var/lib/kubelet")  # deploy/ names this path; a node must use it
KUBELET_PORT = 10250
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"
CGROUP_FS = Path("/sys/fs/cgroup")
CNI_STATE = Path("/var/lib/cni")
# The second node: its kubelet's address on the pod bridge (also its node IP), its API port, its Pods' addresses.
NODE_B = "dlpv-node-b"
NODE_B_IP = "10.200.0.2"
NODE_B_KUBELET_PORT = 10251
NODE_B_POD_IPS = ("10.200.0.128", "10.200.0.254")
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


def mounts_under(prefix: str, mountinfo: str | None = None) -> list[str]:
    """Mount points at or below `prefix`, deepest first (as /proc/self/mountinfo, or `mountinfo`, lists them)."""
    found = []
    text = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
    for line in text.splitlines():
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
        # host-local's allocations (and the CNI result cache) of Pods whose sandboxes were never torn down (a node
        # killed): they would otherwise hold their addresses in the next test node's ranges.
        for network in ("dlpv", NODE_B):
            shutil.rmtree(CNI_STATE / "networks" / network, ignore_errors=True)
        for cached in (CNI_STATE / "results").glob("dlpv-*"):
            cached.unlink(missing_ok=True)

    @staticmethod
    def cni_config(directory: Path, network: str = "dlpv", ips: tuple[str, str] = POD_IPS) -> None:
        """One node's CNI configuration: every node's Pods join the bridge, each node allocating from its own part
        of the subnet (host-local keeps its allocations per network name)."""
        directory.mkdir(parents=True, exist_ok=True)
        first, last = ips
        conf = {
            "cniVersion": "0.4.0",
            "name": network,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": GATEWAY, "rangeStart": first, "rangeEnd": last}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }
            ],
        }
        (directory / f"10-{network}.conflist").write_text(json.dumps(conf, indent=2))


@dataclass
class Containerd:
    workdir: Path
    wrap: list[str] = field(default_factory=list)  # a command prefix (entering a mount namespace)
    runc_root: Path | None = None  # runc's state; default /run/containerd/runc, shared by every containerd
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
        runc_options = ""
        if self.runc_root is not None:
            table = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]'
            runc_options = f'\n      {table}\n        Root = "{self.runc_root}"'
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
      runtime_type = "io.containerd.runc.v2"{runc_options}
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_dir}"
"""
        )
        self.proc = spawn([*self.wrap, "containerd", "--config", str(config)], self.workdir / "containerd.log")
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
    name: str = NODE
    address: str = GATEWAY  # node IP, and where its API listens
    port: int = KUBELET_PORT
    extra_config: dict[str, object] = field(default_factory=dict)
    wrap: list[str] = field(default_factory=list)  # a command prefix (entering a mount namespace)
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
                    "address": self.address,
                    "port": self.port,
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
                    **self.extra_config,
                }
            )
        )
        self.proc = spawn(
            [
                *self.wrap,
                self.tools.kubelet,
                f"--config={config}",
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={self.name}",
                f"--node-ip={self.address}",
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
        url = f"https://{self.address}:{self.port}{path}"
        return urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()  # type: ignore[no-any-return]


@dataclass
class MountNamespace:
    """A mount namespace held open by a bind mount of it on a file (no process needed), entered with nsenter. Its
    processes see the host's filesystems except that some directories are replaced by others (bind mounts made in
    it), and nothing mounted in it reaches the host or the other way round: every mount in it is private but those
    bound shared (kubelet's root directory, so that the mounts a container makes there with Bidirectional
    propagation reach this namespace's kubelet and Pods, and no further)."""

    directory: Path

    @property
    def file(self) -> Path:
        return self.directory / "mnt"

    @property
    def enter(self) -> list[str]:
        return ["nsenter", f"--mount={self.file}", "--"]

    def create(self, binds: dict[Path, Path], hide: list[str], shared: tuple[Path, ...] = ()) -> None:
        """`binds` maps a path to the directory seen there (rshared if in `shared`); the host's mounts at or under
        `hide` are dropped from the namespace's copy (they would keep filesystems the host unmounts alive in it)."""
        self.directory.mkdir(parents=True)
        # unshare binds a namespace on a file only below a private mount (no propagation loop).
        run("mount", "--bind", str(self.directory), str(self.directory))
        run("mount", "--make-private", str(self.directory))
        self.file.touch()
        run("unshare", f"--mount={self.file}", "--propagation", "private", "true")
        for prefix in [*hide, *map(str, binds)]:
            for _ in range(5):
                points = self.mounts_under(prefix)
                if not points:
                    break
                run(*self.enter, "sh", "-c", 'for p; do umount --lazy "$p" || true; done', "-", *points)
            else:
                raise RuntimeError(f"mounts left under {prefix} in {self.file}: {points}")
        for target, source in binds.items():
            source.mkdir(parents=True, exist_ok=True)
            target.mkdir(parents=True, exist_ok=True)
            run(*self.enter, "mount", "--bind", str(source), str(target))
            if target in shared:
                run(*self.enter, "mount", "--make-rshared", str(target))

    def mounts_under(self, prefix: str) -> list[str]:
        return mounts_under(prefix, run(*self.enter, "cat", "/proc/self/mountinfo").stdout)

    def pids(self) -> list[str]:
        """Processes in the namespace."""
        try:
            inode = self.file.stat().st_ino  # the namespace's inode while it is bound there
        except OSError:
            return []
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            with contextlib.suppress(OSError):
                if (proc / "ns" / "mnt").stat().st_ino == inode:
                    found.append(proc.name)
        return found

    def destroy(self) -> None:
        """Unbinds the namespace: it goes (and every mount in it) with the last process in it."""
        for pid in self.pids():
            kill_with_children(pid)
        unmount_all(str(self.directory))


def make_cgroup(name: str) -> None:
    """A cgroup /`name` in every hierarchy: kubelet's cgroupRoot must exist, and with cgroup v1 a child of the
    cpuset root starts with no CPUs or memory nodes."""
    for hierarchy in CGROUP_FS.iterdir():
        if not os.path.ismount(hierarchy):
            continue
        (hierarchy / name).mkdir(exist_ok=True)
        for attr in ("cpuset.cpus", "cpuset.mems"):
            if (hierarchy / attr).exists():
                (hierarchy / name / attr).write_text((hierarchy / attr).read_text())


def remove_cgroup(name: str, timeout: float = 20) -> None:
    """Removes the cgroup /`name` and every cgroup under it (deepest first) once their processes are gone."""
    deadline = time.monotonic() + timeout
    for hierarchy in CGROUP_FS.iterdir():
        root = hierarchy / name
        while root.is_dir():
            for sub in sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts)):
                with contextlib.suppress(OSError):
                    sub.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()
            if root.is_dir():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cgroup {root} still in use: {(root / 'cgroup.procs').read_text()!r}")
                time.sleep(0.2)


MARKER = KUBELET_DIR / ".device-localpv-test-node"  # written by RealNode: this kubelet directory is ours


def clean_stale_node() -> None:
    """Removes what a test node killed without its clean-up left behind (its processes and its extra nodes', mounts
    and mount namespaces, cgroups, bridge, loop disks), only when its marker says the kubelet directory is ours."""
    if not MARKER.exists():
        return
    stale = json.loads(MARKER.read_text())
    workdir, disks = stale["workdir"], stale["disks"]
    for pid in run("pgrep", "-f", workdir, check=False).stdout.split():
        kill_with_children(pid)
    for namespace in Path(workdir).glob("nodes/*/ns"):
        with contextlib.suppress(OSError):
            MountNamespace(namespace).destroy()
    time.sleep(1)
    for netns in Path("/var/run/netns").glob("cni-*"):
        run("ip", "netns", "delete", netns.name, check=False)
    for prefix in (str(KUBELET_DIR), workdir):
        unmount_all(prefix)
        run("rm", "-rf", "--one-file-system", prefix, check=False)
    for cgroup in stale.get("cgroups", []):
        remove_cgroup(cgroup)
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
    extra: list[ExtraNode] = field(default_factory=list)  # other nodes started on this host, stopped first

    def start(self) -> RealNode:
        clean_stale_node()
        if mounts_under(str(KUBELET_DIR)) or KUBELET_DIR.exists():
            raise RuntimeError(f"{KUBELET_DIR} already exists on this host: another kubelet? Not touching it.")
        KUBELET_DIR.mkdir(parents=True)
        marker = {"workdir": str(self.workdir), "disks": str(self.disks.workdir), "cgroups": [NODE_B]}
        MARKER.write_text(json.dumps(marker))
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
        self.procs.append(self.api.install_snapshot_addon(self.workdir))

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> str:
        assert self.api is not None
        return self.api.kubectl(*args, check=check, input=input)

    def get(self, *what: str, namespace: str | None = "default") -> dict:  # type: ignore[type-arg]
        ns = ["-n", namespace] if namespace else []
        return json.loads(self.kubectl("get", *what, *ns, "-o", "json"))  # type: ignore[no-any-return]

    def apply(self, obj: dict[str, object]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def node_ready(self, name: str = NODE) -> bool:
        out = self.kubectl("get", "node", name, "-o", "json", check=False)
        if not out:
            return False
        conditions = json.loads(out)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for log in [*self.workdir.glob("*.log"), *self.workdir.glob("*/*.log")]:
            shutil.copy(log, dest / log.name)
        for node in self.extra:
            node.logs(dest / node.name)
        if self.api is None or not self.api.procs:
            return
        pods = self.kubectl("get", "pods", "-A", "-o", "wide", check=False)
        (dest / "pods.txt").write_text(pods)
        self.pod_logs(dest)

    def pod_logs(self, dest: Path, node: str | None = None) -> None:
        """The logs of every container of every Pod (on `node`), and of its previous instance if it restarted."""
        for ns, pod in self._pods(node):
            for container in self._containers(ns, pod):
                text = self.kubectl("logs", "-n", ns, pod, "-c", container, check=False)
                (dest / f"pod-{ns}-{pod}-{container}.log").write_text(text)
                previous = self.kubectl("logs", "--previous", "-n", ns, pod, "-c", container, check=False)
                if previous:
                    (dest / f"pod-{ns}-{pod}-{container}.previous.log").write_text(previous)

    def _pods(self, node: str | None = None) -> Iterator[tuple[str, str]]:
        on = ["--field-selector", f"spec.nodeName={node}"] if node else []
        out = self.kubectl("get", "pods", "-A", *on, "-o", "json", check=False)
        for item in json.loads(out or '{"items": []}')["items"]:
            yield item["metadata"]["namespace"], item["metadata"]["name"]

    def _containers(self, ns: str, pod: str) -> list[str]:
        out = self.kubectl("get", "pod", "-n", ns, pod, "-o", "jsonpath={.spec.containers[*].name}", check=False)
        return out.split()

    def stop(self) -> None:
        for node in list(self.extra):
            node.stop()
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


@dataclass
class ExtraNode:
    """Another node of a RealNode's cluster, on the same host: its own containerd (root, state, socket, runc state)
    and kubelet (API port, cgroupRoot, Pod addresses), both run in a `MountNamespace` of their own where
    /var/lib/kubelet (deploy/'s hostPath and kubelet's --root-dir), /var/log/pods, /var/log/containers and /run/netns
    are this node's directories. Everything else is the host's (/dev, /sys, /run/device-localpv, the pod bridge):
    the nodes differ by the disks their agents are told to consider."""

    real: RealNode
    name: str = NODE_B
    ip: str = NODE_B_IP
    port: int = NODE_B_KUBELET_PORT
    pod_ips: tuple[str, str] = NODE_B_POD_IPS
    namespace: MountNamespace | None = None
    containerd: Containerd | None = None
    kubelet: Kubelet | None = None

    @property
    def workdir(self) -> Path:
        return self.real.workdir / "nodes" / self.name  # under the marker's workdir: clean_stale_node finds it

    @property
    def kubelet_dir(self) -> Path:
        """Seen as /var/lib/kubelet by this node's kubelet and containers."""
        return self.workdir / "kubelet"

    def start(self) -> ExtraNode:
        """Starts containerd and kubelet (with the images of `real` imported) and waits until the Node is Ready."""
        assert self.real.api is not None
        if self.name in self.real.kubectl("get", "nodes", "-o", "name"):
            raise RuntimeError(f"node {self.name} already exists")
        self.real.extra.append(self)
        self.workdir.mkdir(parents=True)
        make_cgroup(self.name)
        run("ip", "addr", "add", f"{self.ip}/32", "dev", BRIDGE)
        self.namespace = MountNamespace(self.workdir / "ns")
        w = self.workdir
        binds = {
            KUBELET_DIR: self.kubelet_dir,
            Path("/var/log/pods"): w / "log" / "pods",
            Path("/var/log/containers"): w / "log" / "containers",
            Path("/run/netns"): w / "netns",
        }
        self.namespace.create(binds, hide=[str(self.real.workdir)], shared=(KUBELET_DIR,))
        cni = w / "cni"
        PodNetwork.cni_config(cni, network=self.name, ips=self.pod_ips)
        self.containerd = Containerd(w / "containerd", wrap=self.namespace.enter, runc_root=w / "runc")
        self.containerd.workdir.mkdir()
        self.containerd.start(cni)
        for archive in self.real.images:
            self.containerd.import_image(archive)
        self.kubelet = Kubelet(
            w,
            self.real.tools,
            self.real.api.identities["admin"].kubeconfig,
            self.containerd.socket,
            name=self.name,
            address=self.ip,
            port=self.port,
            extra_config={"cgroupRoot": f"/{self.name}", "healthzBindAddress": self.ip},
            wrap=self.namespace.enter,
        )
        self.kubelet.start()
        wait_for(f"node {self.name} Ready", lambda: self.real.node_ready(self.name), 120)
        return self

    def logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for log in [*self.workdir.glob("*.log"), *self.workdir.glob("*/*.log")]:
            shutil.copy(log, dest / log.name)
        if self.real.api is not None and self.real.api.procs:
            self.real.pod_logs(dest, self.name)

    def stop(self) -> None:
        """Stops kubelet, containerd and every container, drops the namespace (and the mounts made in it) and the
        cgroups, and removes the Node and its Pods from the API server (the node is gone for good)."""
        if self.kubelet is not None:
            self.kubelet.stop()
        if self.containerd is not None:
            self.containerd.stop()
        if self.namespace is not None:
            self.namespace.destroy()
        remove_cgroup(self.name)
        run("ip", "addr", "del", f"{self.ip}/32", "dev", BRIDGE, check=False)
        if self.real.api is not None and self.real.api.procs:
            self.real.kubectl("delete", "node", self.name, "--ignore-not-found", "--wait=false")
            on = f"spec.nodeName={self.name}"
            self.real.kubectl("delete", "pods", "-A", "--field-selector", on, "--force", "--grace-period=0")
        run("rm", "-rf", "--one-file-system", str(self.workdir), check=False)
        if self in self.real.extra:
            self.real.extra.remove(self)
