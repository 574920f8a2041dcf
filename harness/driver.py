"""The driver's controller and agents as real processes, with the RBAC identities of deploy/."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.apiserver import NAMESPACE, ApiServer, spawn
from harness.tools import ROOT


def wait_probe(
    name: str,
    proc: subprocess.Popen[bytes] | None,
    socket: str,
    log: Path,
    timeout: float,
    need_ready: bool = True,
) -> None:
    """Until the CSI Identity service on `socket` answers Probe (with ready=true when `need_ready`); raises with
    the log's tail when the process exits or the time is up."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}:\n{log.read_text()[-4000:]}")
        if os.path.exists(socket):
            try:
                with grpc.insecure_channel(f"unix://{socket}") as ch:
                    r = csi_pb2_grpc.IdentityStub(ch).Probe(csi_pb2.ProbeRequest(), timeout=2)
                    if r.ready.value or not need_ready:
                        return
            except grpc.RpcError as e:
                last = str(e.details())
        time.sleep(0.1)
    raise RuntimeError(f"{name} not ready after {timeout}s ({last}):\n{log.read_text()[-4000:]}")


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    socket: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        self.proc = spawn(self.argv, self.log, env=self.env, cwd=ROOT)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        wait_probe(self.name, self.proc, self.socket, self.log, timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stop(self) -> None:
        self.kill(signal.SIGTERM)


@dataclass
class Driver:
    api: ApiServer
    workdir: Path
    processes: dict[str, Process] = field(default_factory=dict)

    def _env(self, identity: str, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        env.update(
            KUBECONFIG=self.api.identities[identity].kubeconfig,
            DEVICE_DRIVER_NAMESPACE=NAMESPACE,
            PYTHONPATH=str(ROOT),
            LOG_LEVEL="INFO",
        )
        env.update(extra)
        return env

    def controller(self, name: str = "controller", **extra: str) -> Process:
        sock = str(self.workdir / f"{name}.sock")
        p = Process(
            name,
            [sys.executable, "-m", "csidriver", "controller"],
            self._env("controller", {"CSI_ENDPOINT": f"unix://{sock}", "POD_NAME": name, **extra}),
            self.workdir / f"{name}.log",
            sock,
        )
        self.processes[name] = p
        return p.start()

    def agent(self, node: str, devices: list[str], **extra: str) -> Process:
        sock = str(self.workdir / f"agent-{node}.sock")
        names = "|".join(re.escape(os.path.basename(d)) for d in devices) or "^$"
        p = Process(
            f"agent-{node}",
            [sys.executable, "-m", "csidriver", "agent"],
            self._env(
                "agent",
                {
                    "CSI_ENDPOINT": f"unix://{sock}",
                    "OPENEBS_NODE_ID": node,
                    "DEVICE_INCLUDE_REGEX": f"^({names})$",
                    "LOCK_DIR": str(self.workdir / "locks"),
                    "RESYNC_SECONDS": "300",
                    # Publish targets of the tests, csi-sanity and the benches live in this work directory.
                    "PUBLISH_ROOTS": str(self.workdir),
                    **extra,
                },
            ),
            self.workdir / f"agent-{node}.log",
            sock,
        )
        self.processes[p.name] = p
        return p.start()

    def stop(self) -> None:
        for p in self.processes.values():
            p.stop()
