"""`kubectl device-localpv`: listing, cordoning, initialising disks, releasing a lost node."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from harness.csi import MIB, POOL, capacity, create, delete
from harness.disks import partitions
from harness.objects import until
from tests.conftest import NODE, Cluster


def plugin(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "csidriver.plugin.cli",
        "--kubeconfig",
        cluster.api.identities["admin"].kubeconfig,
        *args,
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def test_lists_nodes_and_volumes(cluster: Cluster) -> None:
    nodes = json.loads(plugin(cluster, "nodes", "-o", "json").stdout)
    ours = [n for n in nodes if n["node"] == NODE and n["pool"] == POOL]
    assert sorted(n["path"] for n in ours) == sorted(d.device for d in cluster.pool_disks)
    assert all(n["health"] == "Healthy" and n["freeEntries"] > 0 for n in ours)
    name = f"pvc-{uuid.uuid4()}"
    create(cluster.controller_channel, name, 2 * MIB)
    try:
        vols = {v["name"]: v for v in json.loads(plugin(cluster, "volumes", "-o", "json").stdout)}
        assert vols[name]["state"] == "Ready" and vols[name]["node"] == NODE and vols[name]["size"] == 2 * MIB
        assert vols[name]["partition"].startswith(tuple(d.device for d in cluster.pool_disks))
        table = plugin(cluster, "volumes", "-o", "wide").stdout
        assert name in table and "PARTITION" in table.splitlines()[0]
    finally:
        delete(cluster.controller_channel, name)


def test_cordoned_disk_is_skipped(cluster: Cluster) -> None:
    nodes = json.loads(plugin(cluster, "nodes", "-o", "json").stdout)
    first = next(n for n in nodes if n["path"] == cluster.pool_disks[0].device)
    dry = plugin(cluster, "cordon-disk", NODE, first["disk"], "--dry-run").stdout
    assert "would cordon" in dry
    before = capacity(cluster.controller_channel, NODE)
    plugin(cluster, "cordon-disk", NODE, first["disk"])
    names = [f"pvc-{uuid.uuid4()}" for _ in range(3)]
    try:
        # The controller's watch delivered the annotation once the cordoned disk's space leaves the node's capacity
        # (the agent watches the same DeviceNode).
        until("the cordon reached the controller", lambda: capacity(cluster.controller_channel, NODE) < before, 30)
        for n in names:
            create(cluster.controller_channel, n, MIB)
        vols = {v["name"]: v for v in json.loads(plugin(cluster, "volumes", "-o", "json").stdout)}
        assert {vols[n]["disk"] for n in names} == {cluster.pool_disks[1].device}
        assert any(n["cordoned"] for n in json.loads(plugin(cluster, "nodes", "-o", "json").stdout))
    finally:
        plugin(cluster, "uncordon-disk", NODE, first["disk"])
        for n in names:
            delete(cluster.controller_channel, n)
    bad = plugin(cluster, "cordon-disk", NODE, "00000000-0000-0000-0000-000000000000", check=False)
    assert bad.returncode == 1 and "reports no disk" in bad.stderr


def test_init_disk(cluster: Cluster) -> None:
    blank = cluster.disks.blank(80)
    sha = blank.sha256()
    out = plugin(cluster, "init-disk", blank.device, "--pool", "fresh", "--dry-run").stdout
    assert "partition 1 named 'fresh'" in out and blank.sha256() == sha
    plugin(cluster, "init-disk", blank.device, "--pool", "fresh")
    parts = partitions(blank.device)
    assert [p.get("name") for p in parts] == ["fresh"]
    # Not blank any more: refused without --force, untouched.
    sha = blank.sha256()
    refused = plugin(cluster, "init-disk", blank.device, "--pool", "other", check=False)
    assert refused.returncode == 1 and "not blank" in refused.stderr and blank.sha256() == sha
    refused = plugin(cluster, "init-disk", cluster.foreign.device, "--pool", "x", check=False)
    assert refused.returncode == 1 and "ext4" in refused.stderr
    hostile = plugin(cluster, "init-disk", blank.device, "--pool", 'a"; rm -rf /', "--force", check=False)
    assert hostile.returncode == 1 and blank.sha256() == sha
    for missing in ("/dev/no-such-disk", str(cluster.workdir / "nothing-here")):
        refused = plugin(cluster, "init-disk", missing, "--pool", "x", check=False)
        assert refused.returncode == 1 and "does not exist" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr, refused.stderr
    # A mounted disk is refused even with --force.
    target = cluster.workdir / "mounted-foreign"
    target.mkdir()
    subprocess.run(["mount", "-o", "ro", cluster.foreign.device, str(target)], check=True)
    try:
        refused = plugin(cluster, "init-disk", cluster.foreign.device, "--pool", "x", "--force", check=False)
        assert refused.returncode == 1 and "mounted" in refused.stderr
    finally:
        subprocess.run(["umount", str(target)], check=True)


def test_release_lost_node(cluster: Cluster) -> None:
    gone = "node-gone"
    cluster.api.add_node(gone)
    disk = cluster.disks.pool(POOL, 64)
    agent = cluster.driver.agent(gone, [disk.device])
    agent.wait_ready()
    until("the new node's pool reached the controller", lambda: capacity(cluster.controller_channel, gone) > 0, 30)
    name = f"pvc-{uuid.uuid4()}"
    create(cluster.controller_channel, name, MIB, requisite=[{"openebs.io/nodename": gone}])
    agent.kill()  # the node dies for good
    dry = plugin(cluster, "release-node", gone, "--reason", "hardware lost", "--dry-run").stdout
    assert f"would release {name}" in dry
    assert name in cluster.api.kubectl("get", "devicevolumes", "-n", "openebs")
    plugin(cluster, "release-node", gone, "--reason", "hardware lost")
    assert cluster.api.kubectl("get", "devicevolume", "-n", "openebs", name, check=False) == ""
    delete(cluster.controller_channel, name)  # what the provisioner then does for the PV: succeeds at once
    events = cluster.api.kubectl("get", "events", "-n", "openebs", "--field-selector", "reason=Released")
    assert "hardware lost" in events
    cluster.api.kubectl("delete", "node", gone)
