"""A real etcd + kube-apiserver on loopback, with token identities for the admin and each driver component."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from harness.tools import ROOT, Tools

NAMESPACE = "openebs"
CONTROLLER_SA = "openebs-device-controller-sa"
AGENT_SA = "openebs-device-node-sa"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(
    argv: list[str], log: Path, env: Mapping[str, str] | None = None, cwd: str | Path | None = None
) -> subprocess.Popen[bytes]:
    """Start a process whose output goes to `log` (appended); the parent keeps no file open."""
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd)


def stop_all(procs: list[subprocess.Popen[bytes]], grace: float = 15) -> None:
    """SIGTERM every process (last started first), then SIGKILL whatever has not exited within `grace` seconds."""
    for p in reversed(procs):
        p.terminate()
    for p in reversed(procs):
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs.clear()


def start_kube_components(
    tools: Tools, kubeconfig: str, workdir: Path, controllers: str, *kcm_args: str
) -> list[subprocess.Popen[bytes]]:
    """kube-controller-manager (only `controllers`) and kube-scheduler on loopback, logs in `workdir`."""
    common = [f"--kubeconfig={kubeconfig}", "--leader-elect=false", "--bind-address=127.0.0.1"]
    kcm = [tools.kube_controller_manager, *common, f"--controllers={controllers}", *kcm_args]
    scheduler = [tools.kube_scheduler, *common]
    return [
        spawn([*kcm, f"--secure-port={free_port()}"], workdir / "kube-controller-manager.log"),
        spawn([*scheduler, f"--secure-port={free_port()}"], workdir / "kube-scheduler.log"),
    ]


def _wait(what: str, check: object, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} not ready after {timeout}s:\n{log.read_text()[-4000:]}")


@dataclass
class Identity:
    user: str
    token: str
    groups: tuple[str, ...]
    kubeconfig: str = ""


@dataclass
class ApiServer:
    tools: Tools
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dlpv-api-")))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    identities: dict[str, Identity] = field(default_factory=dict)
    url: str = ""
    audit_log: Path | None = None
    # Where Pods must reach it (a real node): bind and advertise an address on the host, on a fixed port, with the
    # ServiceAccount admission plugin on (it gives Pods their projected token volume).
    bind: str = "127.0.0.1"
    port: int = 0
    service_cidr: str = "10.0.0.0/24"
    pods: bool = False
    _api_args: list[str] = field(default_factory=list)

    @property
    def ca_file(self) -> Path:
        """The self-signed serving certificate kube-apiserver writes into its cert dir (the bundle holds its CA)."""
        return self.workdir / "certs" / "apiserver.crt"

    def start(self, audit: bool = False) -> ApiServer:
        w = self.workdir
        etcd_port, peer_port, api_port = free_port(), free_port(), self.port or free_port()
        etcd_log = w / "etcd.log"
        self.procs.append(
            spawn(
                [
                    self.tools.etcd,
                    "--data-dir",
                    str(w / "etcd"),
                    "--name",
                    "test",
                    "--listen-client-urls",
                    f"http://127.0.0.1:{etcd_port}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{etcd_port}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer_port}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer_port}",
                    "--initial-cluster",
                    f"test=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync",
                    "--log-level",
                    "warn",
                ],
                etcd_log,
            )
        )
        _wait(
            "etcd",
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{etcd_port}/health", timeout=1).status == 200,
            30,
            self.procs[-1],
            etcd_log,
        )
        key = w / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
        self._identities()
        args = [
            self.tools.kube_apiserver,
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={w / 'certs'}",
            f"--secure-port={api_port}",
            f"--bind-address={self.bind}",
            f"--service-cluster-ip-range={self.service_cidr}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={key}",
            f"--service-account-signing-key-file={key}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--allow-privileged=true",
        ]
        if self.pods:
            args += [f"--advertise-address={self.bind}", "--kubelet-preferred-address-types=InternalIP"]
        else:
            args += ["--disable-admission-plugins=ServiceAccount"]
        if audit:
            self.audit_log = w / "audit.log"
            policy = w / "audit-policy.yaml"
            policy.write_text(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\n"
                "rules:\n- level: Metadata\n  omitStages: [RequestReceived]\n"
            )
            args += [f"--audit-policy-file={policy}", f"--audit-log-path={self.audit_log}", "--audit-log-mode=blocking"]
        api_log = w / "kube-apiserver.log"
        self._api_args = args
        self.procs.append(spawn(args, api_log))
        self.url = f"https://{self.bind}:{api_port}"
        self._wait_apiserver()
        for ident in self.identities.values():
            ident.kubeconfig = self._kubeconfig(ident)
        return self

    def _identities(self) -> None:
        sa = f"system:serviceaccount:{NAMESPACE}:"
        sa_groups = ("system:serviceaccounts", f"system:serviceaccounts:{NAMESPACE}", "system:authenticated")
        self.identities = {
            "admin": Identity("admin", secrets.token_hex(16), ("system:masters",)),
            "controller": Identity(sa + CONTROLLER_SA, secrets.token_hex(16), sa_groups),
            "agent": Identity(sa + AGENT_SA, secrets.token_hex(16), sa_groups),
        }
        lines = [f'{i.token},{i.user},{i.user},"{",".join(i.groups)}"' for i in self.identities.values()]
        (self.workdir / "tokens.csv").write_text("\n".join(lines) + "\n")

    def _kubeconfig(self, ident: Identity) -> str:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": ident.user, "user": {"token": ident.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": ident.user}}],
            "current-context": "test",
        }
        path = self.workdir / f"kubeconfig-{ident.user.rsplit(':', 1)[-1]}"
        path.write_text(json.dumps(cfg))
        return str(path)

    def kubectl(self, *args: str, identity: str = "admin", check: bool = True, input: str | None = None) -> str:
        done = subprocess.run(
            [self.tools.kubectl, "--kubeconfig", self.identities[identity].kubeconfig, *args],
            capture_output=True,
            text=True,
            input=input,
            check=False,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {done.stderr}")
        return done.stdout

    def install_snapshot_addon(self, workdir: Path) -> subprocess.Popen[bytes]:
        """What a cluster operator installs once for volume snapshots, for every driver: the snapshot CRDs (volume
        and volume group) and the snapshot-controller (a process here, logging to `workdir`). Returns its process."""
        snap = Path(self.tools.snapshotter)
        for crd in sorted((snap / "crd").glob("*.yaml")):
            self.kubectl("apply", "--server-side", "-f", str(crd))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "crd/volumesnapshots.snapshot.storage.k8s.io",
            "crd/volumesnapshotcontents.snapshot.storage.k8s.io",
            "crd/volumesnapshotclasses.snapshot.storage.k8s.io",
            "crd/volumegroupsnapshots.groupsnapshot.storage.k8s.io",
            "--timeout=30s",
        )
        argv = [
            str(snap / "snapshot-controller"),
            f"--kubeconfig={self.identities['admin'].kubeconfig}",
            "--leader-election=false",
            "--retry-interval-start=500ms",
            "--retry-interval-max=5s",
            "--v=2",
        ]
        return spawn(argv, workdir / "snapshot-controller.log")

    def install_driver_objects(self) -> None:
        """CRDs, namespace, RBAC and CSIDriver from the repository, applied as they would be on a cluster."""
        self.kubectl("apply", "-f", str(ROOT / "deploy" / "namespace.yaml"))
        for crd in ("devicevolume.yaml", "devicenode.yaml", "devicesnapshot.yaml"):
            self.kubectl("apply", "-f", str(ROOT / "crds" / crd))
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "crd/devicevolumes.local.openebs.io",
            "crd/devicenodes.local.openebs.io",
            "crd/devicesnapshots.local.openebs.io",
            "--timeout=30s",
        )
        self.kubectl("apply", "-f", str(ROOT / "deploy" / "rbac.yaml"))
        self.kubectl("apply", "-f", str(ROOT / "deploy" / "csidriver.yaml"))

    def add_node(self, name: str, labels: dict[str, str] | None = None) -> None:
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(node))

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port and storage (etcd keeps running)."""
        proc = self.procs.pop()
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.procs.append(spawn(self._api_args, self.workdir / "kube-apiserver.log"))
        self._wait_apiserver()

    def _wait_apiserver(self) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        admin = self.identities["admin"].token

        def ready() -> bool:
            req = urllib.request.Request(f"{self.url}/readyz", headers={"Authorization": f"Bearer {admin}"})
            return bool(urllib.request.urlopen(req, context=ctx, timeout=2).status == 200)

        _wait("kube-apiserver", ready, 90, self.procs[-1], self.workdir / "kube-apiserver.log")

    def pause(self) -> None:
        """Freeze kube-apiserver (SIGSTOP): clients see it as unreachable."""
        self.procs[-1].send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.procs[-1].send_signal(signal.SIGCONT)

    def stop(self) -> None:
        stop_all(self.procs, 10)
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)

    def __enter__(self) -> ApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def keep_logs(api: ApiServer, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("kube-apiserver.log", "etcd.log"):
        src = api.workdir / name
        if src.exists():
            shutil.copy(src, dest / name)
    os.sync()
