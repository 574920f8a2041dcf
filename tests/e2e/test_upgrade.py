"""Upgrade from the original driver (v0.9.0) to this one, the rolling-upgrade window in both orders, and rollback:
both drivers as real processes on one API server (our CRDs applied first, as docs/upgrade.md says) and one pool
disk. This module's tests run in order and build on each other's objects, as an upgrade does.

A fresh API server of its own: the original's components act on every object of their namespace."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from csidriver.csi import csi_pb2, csi_pb2_grpc
from harness.apiserver import ApiServer, keep_logs, start_kube_components, stop_all
from harness.csi import MIB, code_of, create, delete, mount_cap, publish, unpublish
from harness.disks import LoopDisk, LoopDisks, Partition, partitions
from harness.driver import Driver, Process
from harness.original import TOPOLOGY_KEY, Original, OriginalProcess, original_crds, unique_pool
from harness.tools import ARTIFACTS, Tools

NODE = "up-node"
CLAIMS = "default"


@dataclass
class Upgrade:
    api: ApiServer
    original: Original
    ours: Driver
    disk: LoopDisk
    pool: str
    mounts: Path  # shared with the host, so the original's mounts (made in its mount namespace) are seen here
    volumes: dict[str, Any] = field(default_factory=dict)  # role -> CSI volume, carried from test to test
    running: dict[str, OriginalProcess | Process] = field(default_factory=dict)

    # --- which components run ----------------------------------------------------------------------------------
    def run(self, *components: str) -> None:
        """Exactly these of original-controller, original-agent, our-controller, our-agent run afterwards."""
        for name in [n for n in self.running if n not in components]:
            stopping = self.running.pop(name)
            if isinstance(stopping, OriginalProcess):
                stopping.kill()
            else:
                stopping.stop()
        for name in components:
            if name in self.running:
                continue
            proc: OriginalProcess | Process
            if name == "original-controller":
                proc = self.original.controller()
            elif name == "original-agent":
                proc = self.original.agent(NODE, [self.disk.device])
            elif name == "our-controller":
                proc = self.ours.controller("our-controller", LEASE_SECONDS="4")
            else:
                proc = self.ours.agent(NODE, [self.disk.device])
            proc.wait_ready()
            self.running[name] = proc

    def channel(self, component: str) -> grpc.Channel:
        return grpc.insecure_channel(f"unix://{self.running[component].socket}")

    # --- what csi-provisioner and kubelet would call ------------------------------------------------------------
    def create(self, controller: str, size: int = 16 * MIB, timeout: float = 60) -> Any:
        name = f"pvc-{uuid.uuid4()}"
        claim = f"claim-{name[4:12]}"
        # The original's leak protection reads and updates the PVC named in the parameters.
        body = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": CLAIMS},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": str(size)}}},
        }
        self.api.kubectl("apply", "-f", "-", input=json.dumps(body))
        params = {
            "devname": self.pool,
            "csi.storage.k8s.io/pvc/name": claim,
            "csi.storage.k8s.io/pvc/namespace": CLAIMS,
            "csi.storage.k8s.io/pv/name": name,
        }
        req = csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=size),
            volume_capabilities=[mount_cap()],
            parameters=params,
            accessibility_requirements=csi_pb2.TopologyRequirement(
                preferred=[csi_pb2.Topology(segments={TOPOLOGY_KEY: NODE})]
            ),
        )
        with self.channel(controller) as ch:
            try:
                return csi_pb2_grpc.ControllerStub(ch).CreateVolume(req, timeout=timeout).volume
            except grpc.RpcError as e:
                return (e.code(), name)

    def retry_create(self, controller: str, name: str, size: int = 16 * MIB) -> Any:
        with self.channel(controller) as ch:
            return create(ch, name, size, params={"devname": self.pool}, preferred=[{TOPOLOGY_KEY: NODE}])

    def delete(self, controller: str, volume_id: str) -> None:
        with self.channel(controller) as ch:
            delete(ch, volume_id)

    def write(self, agent: str, vol: Any, text: str) -> None:
        self._io(agent, vol, lambda target: (target / "data").write_text(text))

    def read(self, agent: str, vol: Any) -> str:
        out: list[str] = []
        self._io(agent, vol, lambda target: out.append((target / "data").read_text()))
        return out[0]

    def mountable(self, agent: str, vol: Any) -> None:
        self._io(agent, vol, lambda target: None)

    def _io(self, agent: str, vol: Any, act: Callable[[Path], object]) -> None:
        target = self.mounts / f"t-{uuid.uuid4().hex[:8]}"
        with self.channel(agent) as ch:
            publish(ch, vol, str(target), mount_cap("ext4"))
            try:
                assert os.path.ismount(target), f"{agent} published nothing visible at {target}"
                act(target)
            finally:
                unpublish(ch, vol.volume_id, str(target))

    def plugin(self, *args: str) -> tuple[int, str]:
        argv = [sys.executable, "-m", "csidriver.plugin.cli", "--kubeconfig", self.api.identities["admin"].kubeconfig]
        done = subprocess.run([*argv, *args], capture_output=True, text=True, check=False)
        return done.returncode, done.stdout + done.stderr

    # --- what is on the API server and the disk -----------------------------------------------------------------
    def object(self, name: str) -> dict[str, Any] | None:
        out = self.api.kubectl("get", "devicevolume", name, "-n", "openebs", "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def state(self, name: str) -> str | None:
        obj = self.object(name)
        return None if obj is None else str((obj.get("status") or {}).get("state", "Pending"))

    def table(self) -> dict[str, Partition]:
        """Partitions of the disk by GPT name (the volume name without `pvc-`, or the pool's meta partition)."""
        parts = partitions(self.disk.device)
        names = [str(p.get("name", "")) for p in parts]
        assert len(names) == len(set(names)), f"a partition name appears twice: {names}"
        return {n: p for n, p in zip(names, parts, strict=True)}


def _deleted(up: Upgrade, volume_id: str) -> Callable[[], bool]:
    """True once the DeviceVolume of `volume_id` is gone."""
    return lambda: up.object(volume_id) is None


def _until(
    what: str, check: Callable[[], object], timeout: float = 60, show: Callable[[], object] = lambda: ""
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {show()}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def up(go_tools: Tools) -> Iterator[Upgrade]:
    if not os.access(go_tools.original, os.X_OK):
        pytest.fail(f"{go_tools.original} is missing: run hack/tools.sh original (or all)")
    api = ApiServer(go_tools).start()
    disks = LoopDisks()
    workdir = Path(tempfile.mkdtemp(prefix="dlpv-upgrade-"))
    mounts = workdir / "mounts"
    mounts.mkdir()
    subprocess.run(["mount", "--bind", str(mounts), str(mounts)], check=True)
    subprocess.run(["mount", "--make-shared", str(mounts)], check=True)
    original = Original(api, go_tools.original)
    ours = Driver(api, workdir)
    up = None
    # The garbage collector: the original deletes volumes with foreground propagation.
    kube = start_kube_components(go_tools, api.identities["admin"].kubeconfig, workdir, "garbage-collector-controller")
    try:
        # The new CRDs and RBAC first (docs/upgrade.md), then the original's RBAC for its components.
        api.install_driver_objects()
        api.add_node(NODE, labels={TOPOLOGY_KEY: NODE})
        pool = unique_pool("up")
        original.install()
        up = Upgrade(api, original, ours, disks.pool(pool, 512), pool, mounts)
        yield up
    finally:
        if up is not None:
            up.run()
        original.keep_logs(ARTIFACTS / "upgrade")
        original.cleanup()
        ours.stop()
        for log in workdir.glob("*.log"):
            (ARTIFACTS / "upgrade").mkdir(parents=True, exist_ok=True)
            (ARTIFACTS / "upgrade" / log.name).write_bytes(log.read_bytes())
        subprocess.run(["umount", "--recursive", str(mounts)], check=False)
        stop_all(kube)
        api.stop()
        keep_logs(api, ARTIFACTS / "upgrade")
        disks.cleanup()


def test_0_upgrade_check_names_what_would_break(up: Upgrade) -> None:
    """What worked with the original and does not here: a StorageClass whose devname is a pattern, and a volume
    whose devname only matched its pool as a pattern. Both are blockers; removing them clears the check."""
    up.run("original-agent")  # it writes the DeviceNode
    _until(
        "the original's DeviceNode",
        lambda: "deviceno" in up.api.kubectl("get", "devicenode", "-n", "openebs", "-o", "name"),
    )
    sc = {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": "pattern-pool"},
        "provisioner": "device.csi.openebs.io",
        "parameters": {"devname": up.pool[:4] + ".*"},
    }
    up.api.kubectl("apply", "-f", "-", input=json.dumps(sc))
    prefix = f"pvc-{uuid.uuid4()}"
    body = {
        "apiVersion": "local.openebs.io/v1alpha1",
        "kind": "DeviceVolume",
        "metadata": {"name": prefix, "namespace": "openebs", "labels": {"kubernetes.io/nodename": NODE}},
        "spec": {"ownerNodeID": NODE, "capacity": str(16 * MIB), "devname": up.pool[:-3]},
        "status": {"state": "Ready"},
    }
    up.api.kubectl("create", "-f", "-", input=json.dumps(body))
    code, out = up.plugin("upgrade-check")
    assert code == 1, out
    assert f"StorageClass pattern-pool: devname '{up.pool[:4]}.*' is not a plain pool name" in out, out
    assert f"volume {prefix}: no pool of node {NODE} is named exactly '{up.pool[:-3]}'" in out, out
    assert "2 blocker(s)" in out, out
    up.api.kubectl("delete", "storageclass", "pattern-pool")
    up.api.kubectl("delete", "devicevolume", "-n", "openebs", prefix)
    code, out = up.plugin("upgrade-check")
    assert code == 0 and "blockers: none" in out and "no DeviceVolume: nothing to adopt" in out, out


def test_a_upgrade_adopts_volumes_in_every_state(up: Upgrade) -> None:
    """Under the original: a Ready volume with data, a Failed one (no room), a Pending one its agent never carved
    (the agent was down) and one being deleted. Then the original is replaced by ours."""
    up.run("original-controller", "original-agent")
    ready = up.create("original-controller")
    up.write("original-agent", ready, "written by the original")
    doomed = up.create("original-controller")
    code, failed = up.create("original-controller", size=4096 * MIB)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and up.object(failed) is None  # it deletes what failed
    # Failed, as its agent leaves a volume when its controller died before deleting it.
    stranded = f"pvc-{uuid.uuid4()}"
    body = {
        "apiVersion": "local.openebs.io/v1alpha1",
        "kind": "DeviceVolume",
        "metadata": {"name": stranded, "namespace": "openebs", "labels": {"kubernetes.io/nodename": NODE}},
        "spec": {"ownerNodeID": NODE, "capacity": str(4096 * MIB), "devname": up.pool},
        "status": {"state": "Failed", "error": {"code": "InsufficientCapacity", "message": "no room"}},
    }
    up.api.kubectl("create", "-f", "-", input=json.dumps(body))
    up.run("original-controller")  # its agent is down from here on
    code, pending = up.create("original-controller", timeout=4)
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and up.state(pending) == "Pending"
    assert "kubernetes.io/nodename" not in (up.object(pending) or {})["metadata"].get("labels", {})
    with up.channel("original-controller") as ch:
        code_of(
            lambda: csi_pb2_grpc.ControllerStub(ch).DeleteVolume(
                csi_pb2.DeleteVolumeRequest(volume_id=doomed.volume_id), timeout=4
            )
        )
    assert (up.object(doomed.volume_id) or {})["metadata"].get("deletionTimestamp")
    before = up.table()
    code, out = up.plugin("upgrade-check")
    assert code == 0, out
    assert "4 DeviceVolume(s): 1 Deleting, 1 Failed, 1 Pending, 1 Ready" in out, out
    assert "1 without the kubernetes.io/nodename label" in out, out

    up.run("our-controller", "our-agent")
    # Ready: adopted as it is, the same partition (start, size, GUID) and its bytes.
    _until("the Pending volume carved", lambda: up.state(pending) == "Ready")
    _until(
        "the volume being deleted gone",
        lambda: up.object(doomed.volume_id) is None,
        show=lambda: up.object(doomed.volume_id),
    )
    after = up.table()
    name = ready.volume_id[4:]
    assert after[name] == before[name]
    assert up.read("our-agent", ready) == "written by the original"
    assert up.state(ready.volume_id) == "Ready"
    # Pending: carved exactly once, and the provisioner's retry returns it.
    assert pending[4:] in after and pending[4:] not in before
    assert up.retry_create("our-controller", pending).volume_id == pending
    # Being deleted: its partition is gone too.
    assert doomed.volume_id[4:] in before and doomed.volume_id[4:] not in after
    # Failed: the provisioner's retry reports it and removes the object (the next retry starts afresh).
    assert up.state(stranded) == "Failed"
    with up.channel("our-controller") as ch:
        code, msg = code_of(lambda: create(ch, stranded, 4096 * MIB, params={"devname": up.pool}))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "no room" in msg, msg
    _until("the failed volume cleaned", lambda: up.object(stranded) is None)
    assert failed[4:] not in after and stranded[4:] not in after
    assert set(after) == {up.pool, name, pending[4:]}
    up.volumes.update(ready=ready, pending=up.retry_create("our-controller", pending))


def test_b_new_controller_with_original_agents(up: Upgrade) -> None:
    """The Deployment rolled first: our controller, the original's agent. Create, publish, delete all work."""
    up.run("our-controller", "original-agent")
    vol = up.create("our-controller")
    assert hasattr(vol, "volume_id"), vol
    assert up.state(vol.volume_id) == "Ready"
    up.write("original-agent", vol, "made by ours, carved by the original")
    assert up.read("original-agent", up.volumes["ready"]) == "written by the original"
    up.delete("our-controller", vol.volume_id)
    assert up.object(vol.volume_id) is None and vol.volume_id[4:] not in up.table()


def test_c_original_controller_with_new_agents(up: Upgrade) -> None:
    """The DaemonSet rolled first: the original's controller, our agent."""
    up.run("original-controller", "our-agent")
    vol = up.create("original-controller")
    assert hasattr(vol, "volume_id"), vol
    assert up.state(vol.volume_id) == "Ready"
    up.write("our-agent", vol, "made by the original, carved by ours")
    assert up.read("our-agent", vol) == "made by the original, carved by ours"
    up.delete("original-controller", vol.volume_id)
    _until("deleted", lambda: up.object(vol.volume_id) is None)
    assert vol.volume_id[4:] not in up.table()


def test_d_rollback_to_the_original(up: Upgrade) -> None:
    """After running ours for a while, the original again: it serves every volume ours created, and deletes them."""
    up.run("our-controller", "our-agent")
    mine = up.create("our-controller")
    up.write("our-agent", mine, "made and written by ours")
    # The original's own CRDs again (docs/upgrade.md): allowed, since objects are stored as v1alpha1.
    for crd in original_crds():
        up.api.kubectl("apply", "-f", str(crd))
    # Right after a CRD changes, the API server answers 429 while it re-initialises that resource's storage.
    _until("upgrade-check answers", lambda: "TooManyRequests" not in up.plugin("upgrade-check")[1], 30)
    code, out = up.plugin("upgrade-check")
    assert code == 1 and "does not serve v1alpha2" in out, out
    up.run("original-controller", "original-agent")
    assert up.read("original-agent", mine) == "made and written by ours"
    up.mountable("original-agent", up.volumes["pending"])
    for vol in (mine, up.volumes["pending"], up.volumes["ready"]):
        up.delete("original-controller", vol.volume_id)
        _until(f"{vol.volume_id} deleted", _deleted(up, vol.volume_id))
    assert set(up.table()) == {up.pool}
