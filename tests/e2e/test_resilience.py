"""Crash-safety and the data path's independence from the API server."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from typing import Any

import grpc

from harness.csi import MIB, POOL, create, delete, mount_cap, publish, unpublish
from harness.disks import partitions
from tests.conftest import NODE, Cluster


def our_partitions(cluster: Cluster) -> dict[str, str]:
    """GPT name -> device node for every non-meta partition on the pool disks."""
    out = {}
    for d in cluster.pool_disks:
        for p in partitions(d.device)[1:]:
            out[str(p.get("name", ""))] = str(p["node"])
    return out


def volumes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    items = json.loads(cluster.api.kubectl("get", "devicevolumes", "-n", "openebs", "-o", "json"))["items"]
    return {i["metadata"]["name"]: i for i in items}


def blank(device: str) -> bool:
    """No signature of any kind (wipefs lists filesystem, RAID, LVM and table signatures)."""
    out = subprocess.run(["wipefs", "--noheadings", device], capture_output=True, text=True, check=True).stdout
    return out.strip() == ""


def _create_retrying(cluster: Cluster, name: str, results: dict[str, object]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            results[name] = create(cluster.controller_channel, name, 4 * MIB)
            return
        except grpc.RpcError as e:
            if e.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED):
                results[name] = e
                return
            time.sleep(0.2)
    results[name] = TimeoutError(name)


def test_agent_killed_during_creates_and_deletes(cluster: Cluster) -> None:
    before = our_partitions(cluster)
    names = [f"pvc-{uuid.uuid4()}" for _ in range(24)]
    results: dict[str, object] = {}
    threads = [threading.Thread(target=_create_retrying, args=(cluster, n, results)) for n in names]
    for t in threads:
        t.start()
    time.sleep(0.4)
    agent = cluster.driver.processes[f"agent-{NODE}"]
    agent.kill()
    time.sleep(0.5)
    agent.start().wait_ready()
    for t in threads:
        t.join(150)
    failed = {n: r for n, r in results.items() if isinstance(r, BaseException)}
    assert not failed, failed
    parts = our_partitions(cluster)
    for n in names:
        pname = n.removeprefix("pvc-")
        assert list(parts).count(pname) == 1
        vol = volumes(cluster)[n]
        assert vol["status"]["state"] == "Ready"
        assert vol["status"]["devicePath"] == parts[pname]
    assert len(parts) == len(before) + len(names)  # nothing else appeared

    # Now kill it in the middle of deleting them all.
    threads = [threading.Thread(target=delete, args=(cluster.controller_channel, n)) for n in names]
    for t in threads:
        t.start()
    time.sleep(0.3)
    agent.kill()
    time.sleep(0.5)
    agent.start().wait_ready()
    for t in threads:
        t.join(120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(n in volumes(cluster) for n in names):
        time.sleep(0.2)
    for n in names:  # retried by the provisioner in real life; repeat here until all are gone
        delete(cluster.controller_channel, n)
    assert our_partitions(cluster) == before
    assert not any(n in volumes(cluster) for n in names)


def test_partition_left_by_crash_before_wipe_is_wiped(cluster: Cluster) -> None:
    """A crash between carving and wiping leaves a partition with old data: it must be wiped, then used."""
    name = f"pvc-{uuid.uuid4()}"
    pname = name.removeprefix("pvc-")
    disk = cluster.pool_disks[1].device
    end = max(int(p["start"]) + int(p["size"]) for p in partitions(disk))
    start = (-(-end * 512 // MIB) + 1) * MIB // 512
    subprocess.run(
        ["sfdisk", "--append", "--no-reread", "--no-tell-kernel", disk],
        input=f'start={start}, size={4 * MIB // 512}, name="{pname}"\n',
        text=True,
        check=True,
        capture_output=True,
    )
    number = len(partitions(disk))
    subprocess.run(["partx", "--add", "--nr", str(number), disk], check=True)
    node = f"{disk}p{number}"
    subprocess.run(["mkfs.ext4", "-q", "-F", node], check=True)
    assert not blank(node)
    # The DeviceVolume as CreateVolume had written it before the crash.
    body = {
        "apiVersion": "local.openebs.io/v1alpha1",
        "kind": "DeviceVolume",
        "metadata": {
            "name": name,
            "namespace": "openebs",
            "labels": {"kubernetes.io/nodename": NODE},
            "finalizers": ["device.openebs.io/finalizer"],
        },
        "spec": {"ownerNodeID": NODE, "capacity": str(4 * MIB), "devname": POOL},
    }
    cluster.api.kubectl("create", "-f", "-", input=json.dumps(body))
    vol = create(cluster.controller_channel, name, 4 * MIB)  # the retried CreateVolume finds and awaits it
    assert vol.volume_id == name
    assert blank(node)
    assert list(our_partitions(cluster)).count(pname) == 1
    delete(cluster.controller_channel, name)
    assert pname not in our_partitions(cluster)


def test_publish_and_unpublish_while_api_server_is_down(cluster: Cluster) -> None:
    vol = create(cluster.controller_channel, f"pvc-{uuid.uuid4()}", 8 * MIB)
    target = str(cluster.workdir / "offline")
    cluster.api.pause()
    try:
        publish(cluster.node_channel, vol, target, mount_cap())
        with open(os.path.join(target, "f"), "w") as f:
            f.write("written while the API server was down")
        unpublish(cluster.node_channel, vol.volume_id, target)
        assert not os.path.exists(target)
    finally:
        cluster.api.resume()
    delete(cluster.controller_channel, vol.volume_id)


def test_controller_restart_keeps_serving(cluster: Cluster) -> None:
    name = f"pvc-{uuid.uuid4()}"
    a = create(cluster.controller_channel, name, 2 * MIB)
    cluster.restart("controller")
    b = create(cluster.controller_channel, name, 2 * MIB)
    assert a.volume_id == b.volume_id
    delete(cluster.controller_channel, name)


def _generation(cluster: Cluster) -> int:
    dn = json.loads(cluster.api.kubectl("get", "devicenode", "-n", "openebs", NODE, "-o", "json"))
    return int((dn["metadata"].get("annotations") or {}).get("local.openebs.io/inventory-generation", "0"))


def test_a_stamp_left_unwritten_by_a_killed_agent_is_written_by_the_next(cluster: Cluster) -> None:
    """A Ready volume's DeviceNode write comes within INVENTORY_WRITE_SECONDS; an agent killed before it leaves the
    stamp on the volume, and the next process writes a DeviceNode that reaches it (the controller counts the volume
    itself until then, so it is never counted zero times)."""
    name = f"pvc-{uuid.uuid4()}"
    create(cluster.controller_channel, name, 4 * MIB)
    agent = cluster.driver.processes[f"agent-{NODE}"]
    agent.kill()  # well within the 5 s write delay
    stamp = volumes(cluster)[name]["status"]["inventoryGeneration"]
    try:
        assert _generation(cluster) < stamp, "the DeviceNode was written before Ready: nothing to test"
        agent.start().wait_ready()
        deadline = time.monotonic() + 30
        while _generation(cluster) < stamp:
            assert time.monotonic() < deadline, f"DeviceNode generation {_generation(cluster)} never reached {stamp}"
            time.sleep(0.2)
    finally:
        if agent.proc is None or agent.proc.poll() is not None:
            agent.start().wait_ready()
        delete(cluster.controller_channel, name)
