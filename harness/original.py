"""The original driver (openebs/device-localpv v0.9.0, the Go driver this project succeeds) as real processes.

Built from the Go module proxy by `hack/tools.sh original`; nothing of it is in this repository. Used by tests that
upgrade from it, run it next to our components, or roll back to it.

How it is run, and why:
- Its clients take only in-cluster configuration (the node's volume manager knows no other), so every process runs
  in a private mount namespace (`unshare --mount`) in which a per-process directory holding a ServiceAccount token,
  the API server's CA and the namespace is bind-mounted at /var/run/secrets/kubernetes.io/serviceaccount;
  KUBERNETES_SERVICE_HOST/PORT point at the test API server. Before the bind, the mount holding that directory is
  made a slave in the new namespace, so the bind never propagates back to the host even where the host's mounts
  are shared; every other mount keeps the host's propagation. So a volume the agent publishes reaches the host (and
  a kubelet) only under a host mount that is shared, as with a container's bidirectional host path (checked: under
  a `mount --bind d d && mount --make-shared d` the host sees it; under this machine's private / it does not). The
  mount point directory is created on the host when missing (an empty directory is the only trace).
- Its ServiceAccounts, ClusterRoles and ClusterRoleBindings are those of its own operator YAML
  (deploy/yamls/device-driver.yaml at v0.9.0), restated below: the ServiceAccounts live in kube-system there, which
  also keeps them apart from ours (same names, in `openebs`), so neither side borrows the other's permissions.
- It ignores SIGTERM (it only closes its informers' stop channel), so it is stopped with SIGKILL; the mount
  namespace goes away with it.
- CreateVolume needs a real PVC named in the parameters csi.storage.k8s.io/pvc/name|namespace (its leak protection
  reads it and adds a finalizer and an annotation), accessibility requirements whose segments match the labels of a
  Node object (its scheduler lists Nodes; label openebs.io/nodename=<node> as its NodeGetInfo reports), and a Node
  object named after the agent's node id (the agent reads it at start and exits without it).

What the original's agent touches on the host: it runs `lsblk -b` and takes every block device of type disk or
loop; on each it runs `parted <dev> unit b print [free] --script -m` and `fdisk -l` (both read-only) every 60 s
and on each volume event. It writes only to a disk whose partition #1 name matches the volume's pool as an
UNANCHORED regular expression, or that has a GPT label but no partition #1 at all (an empty GPT disk is a
candidate for every pool): there it runs `parted mkpart`, `parted rm` and `wipefs --force -a` on the partition it
made. Tests therefore (1) pass `--ignore-block-devices-regex` matching every device name except the test's own
loop devices (`ignore_all_but`), so no other disk of the machine is even read, and (2) use pool names unique to the
test (`unique_pool`). Volumes go to the first disk with enough free space in its smallest fitting gap. Its
NodePublish/NodeStage mount and format under the target paths it is given.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from harness.apiserver import ApiServer, spawn
from harness.driver import wait_probe
from harness.tools import ROOT

# Where the original's own manifests put its ServiceAccounts, and their names there.
SA_NAMESPACE = "kube-system"
CONTROLLER_SA = "openebs-device-controller-sa"
AGENT_SA = "openebs-device-node-sa"
# DEVICE_DRIVER_NAMESPACE of its manifests: where its DeviceVolumes and DeviceNodes live.
DRIVER_NAMESPACE = "openebs"
DRIVER_NAME = "device.csi.openebs.io"
TOPOLOGY_KEY = "openebs.io/nodename"
SECRETS_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# Kept below the API server's limit for token requests; longer than any test run.
TOKEN_DURATION = "48h"


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, list[str]]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


# ClusterRole openebs-device-provisioner-role of the original's deploy/yamls/device-driver.yaml (v0.9.0).
CONTROLLER_RULES = [
    _rule([""], ["secrets"], ["get", "list"]),
    _rule([""], ["namespaces"], ["*"]),
    _rule([""], ["persistentvolumes", "services"], ["get", "list", "watch", "create", "delete", "update", "patch"]),
    _rule([""], ["persistentvolumeclaims"], ["get", "list", "watch", "update"]),
    _rule([""], ["persistentvolumeclaims/status"], ["update", "patch"]),
    _rule(["storage.k8s.io"], ["storageclasses", "csinodes"], ["get", "list", "watch"]),
    _rule(["storage.k8s.io"], ["csistoragecapacities"], ["*"]),
    _rule([""], ["events"], ["list", "watch", "create", "update", "patch"]),
    _rule(["coordination.k8s.io"], ["leases"], ["get", "watch", "list", "delete", "update", "create"]),
    _rule([""], ["nodes"], ["get", "list", "watch"]),
    _rule([""], ["pods"], ["get", "list", "watch", "update", "patch"]),
    _rule(["*"], ["devicevolumes", "devicenodes"], ["*"]),
]
# ClusterRole openebs-device-driver-registrar-role of the same file.
AGENT_RULES = [
    _rule([""], ["events"], ["get", "list", "watch", "create", "update", "patch"]),
    _rule([""], ["persistentvolumes", "nodes", "services"], ["get", "list"]),
    _rule(["*"], ["devicevolumes", "devicenodes"], ["get", "list", "watch", "create", "update", "patch"]),
]
ROLES = {
    CONTROLLER_SA: ("openebs-device-provisioner-role", "openebs-device-provisioner-binding", CONTROLLER_RULES),
    AGENT_SA: ("openebs-device-driver-registrar-role", "openebs-device-driver-registrar-binding", AGENT_RULES),
}

# Runs in the new mount namespace: $1 the per-process secrets directory, then the command.
_WRAPPER = f"""set -e
target={SECRETS_DIR}
parent=$(findmnt -n -o TARGET -T "$target")
mount --make-slave "$parent"
mount --bind "$1" "$target"
shift
exec "$@"
"""


def original_crds() -> list[Path]:
    """The original's own CRD manifests (v0.9.0, from the Go module cache that `hack/tools.sh original` filled):
    what a user applies again on a rollback."""
    env = (ROOT / "hack" / "versions.env").read_text()
    version = next(
        line.split("=", 1)[1].split()[0] for line in env.splitlines() if line.startswith("ORIGINAL_VERSION=")
    )
    done = subprocess.run(
        ["go", "mod", "download", "-json", f"github.com/openebs/device-localpv@{version}"],
        capture_output=True,
        text=True,
        check=True,
    )
    root = Path(json.loads(done.stdout)["Dir"]) / "deploy" / "yamls"
    return [root / "devicevolume-crd.yaml", root / "devicenode-crd.yaml"]


def unique_pool(prefix: str = "orig") -> str:
    """A pool name no other disk of the machine carries, even as a substring (the original matches unanchored)."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def ignore_all_but(names: list[str]) -> str:
    """A Go (RE2) regular expression matching every device name except exactly `names`, for the original's
    --ignore-block-devices-regex (a deny filter, unanchored, without look-ahead): a name outside the set either
    stops at a prefix of a member that is not itself a member, or leaves the set's prefix tree on some character."""
    if not names:
        return "^"
    trie: dict[str, Any] = {}
    for name in names:
        node = trie
        for ch in name:
            node = node.setdefault(ch, {})
        node[""] = {}
    alternatives: list[str] = []

    def walk(prefix: str, node: dict[str, Any]) -> None:
        quoted = "".join(ch if ch.isalnum() else "\\" + ch for ch in prefix)
        if "" not in node:
            alternatives.append(quoted + "$")
        children = sorted(ch for ch in node if ch)
        if children:
            chars = "".join(ch if ch.isalnum() else "\\" + ch for ch in children)
            alternatives.append(f"{quoted}[^{chars}]")
        else:
            alternatives.append(quoted + ".")
        for ch in children:
            walk(prefix + ch, node[ch])

    walk("", trie)
    return "^(?:" + "|".join(alternatives) + ")"


@dataclass
class OriginalProcess:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    socket: str
    secrets: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OriginalProcess:
        Path(self.socket).unlink(missing_ok=True)
        self.proc = spawn(self.argv, self.log, env=self.env)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Until its Identity service answers Probe (it leaves `ready` unset; the controller serves only after its
        informers synced)."""
        wait_probe(self.name, self.proc, self.socket, self.log, timeout, need_ready=False)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.socket}")

    def rss_kib(self) -> int:
        """Resident memory of the driver process (the wrapper execs into it, so it is the spawned pid)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")

    def kill(self) -> None:
        """SIGKILL (it ignores SIGTERM); its mount namespace, with the secrets bind, ends with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(15)


@dataclass
class Original:
    """The original's controller and node agents against `api` (whose CRDs and `openebs` namespace must be
    installed, e.g. by `ApiServer.install_driver_objects`). `install()` first, then `controller()` / `agent()`."""

    api: ApiServer
    binary: str
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dlpv-original-")))
    processes: dict[str, OriginalProcess] = field(default_factory=dict)

    def install(self) -> None:
        """Its ServiceAccounts and RBAC (idempotent)."""
        objects: list[dict[str, Any]] = []
        for sa, (role, binding, rules) in ROLES.items():
            objects += [
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": SA_NAMESPACE}},
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "metadata": {"name": role},
                    "rules": rules,
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": binding},
                    "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": SA_NAMESPACE}],
                    "roleRef": {"kind": "ClusterRole", "name": role, "apiGroup": "rbac.authorization.k8s.io"},
                },
            ]
        self.api.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))

    def _secrets(self, name: str, sa: str) -> Path:
        d = self.workdir / f"{name}-serviceaccount"
        d.mkdir(parents=True, exist_ok=True)
        token = self.api.kubectl("create", "token", sa, "-n", SA_NAMESPACE, f"--duration={TOKEN_DURATION}").strip()
        (d / "token").write_text(token)
        shutil.copy(self.api.ca_file, d / "ca.crt")
        (d / "namespace").write_text(SA_NAMESPACE)
        return d

    def _process(self, name: str, sa: str, args: list[str], env: dict[str, str]) -> OriginalProcess:
        os.makedirs(SECRETS_DIR, exist_ok=True)
        secrets = self._secrets(name, sa)
        sock = str(self.workdir / f"{name}.sock")
        url = urlsplit(self.api.url)
        full_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        full_env.update(
            KUBERNETES_SERVICE_HOST=url.hostname or "127.0.0.1",
            KUBERNETES_SERVICE_PORT=str(url.port or 443),
            DEVICE_DRIVER_NAMESPACE=DRIVER_NAMESPACE,
            OPENEBS_IO_ENABLE_ANALYTICS="false",
            **env,
        )
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "unchanged",
            "--",
            "sh",
            "-c",
            _WRAPPER,
            "original-wrapper",
            str(secrets),
            self.binary,
            f"--endpoint=unix://{sock}",
            *args,
        ]
        p = OriginalProcess(name, argv, full_env, self.workdir / f"{name}.log", sock, secrets)
        self.processes[name] = p
        return p.start()

    def controller(self, name: str = "original-controller") -> OriginalProcess:
        return self._process(name, CONTROLLER_SA, ["--plugin=controller"], {"OPENEBS_CONTROLLER_DRIVER": "controller"})

    def agent(self, node: str, devices: list[str], name: str = "") -> OriginalProcess:
        """The node agent for `node` (a Node object of that name must exist), seeing only the block devices
        `devices` (paths or names): every other device of the machine is ignored by its own filter."""
        names = [os.path.basename(d) for d in devices]
        return self._process(
            name or f"original-agent-{node}",
            AGENT_SA,
            [f"--nodeid={node}", "--plugin=agent", f"--ignore-block-devices-regex={ignore_all_but(names)}"],
            {"OPENEBS_NODE_ID": node, "OPENEBS_NODE_DRIVER": "agent"},
        )

    def stop(self) -> None:
        for p in self.processes.values():
            p.kill()

    def keep_logs(self, dest: Path) -> None:
        dest.mkdir(parents=True, exist_ok=True)
        for p in self.processes.values():
            if p.log.exists():
                shutil.copy(p.log, dest / p.log.name)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
