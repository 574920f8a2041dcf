"""deploy/ on a real kubelet: the workloads become Ready, kubelet registers the plugin, logs are readable."""

from __future__ import annotations

import json

from harness.node import NODE, wait_for
from harness.workloads import NAMESPACE, TOPOLOGY_KEY, NodeCluster


def test_workloads_ready_and_plugin_registered(node: NodeCluster) -> None:
    def available() -> object:
        return node.real.get("deploy", "openebs-device-controller", namespace=NAMESPACE)["status"].get(
            "availableReplicas"
        )

    assert wait_for("two controller replicas available", lambda: available() == 2, 60)
    ds = node.real.get("ds", "openebs-device-node", namespace=NAMESPACE)
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 1

    registered = node.csinode_driver()
    assert registered is not None, "kubelet did not register the plugin in CSINode"
    assert registered["nodeID"] == NODE
    assert TOPOLOGY_KEY in registered["topologyKeys"]

    # One leader Lease, written by the leading Pod's csi-provisioner and followed by its driver; beside it only
    # the Leases of csi-resizer and csi-snapshotter and one heartbeat Lease per agent.
    def holder() -> object:
        leases = json.loads(node.kubectl("get", "lease", "-n", NAMESPACE, "-o", "json"))["items"]
        names = {item["metadata"]["name"] for item in leases}
        assert names <= {
            "device-csi-openebs-io",
            "external-resizer-device-csi-openebs-io",
            "external-snapshotter-leader-device-csi-openebs-io",
            f"device-localpv-agent.{NODE}",
        }
        leader = [item for item in leases if item["metadata"]["name"] == "device-csi-openebs-io"]
        return leader and leader[0]["spec"].get("holderIdentity")

    assert wait_for("a controller Pod leads", holder, 60) in node.controller_pods()


def test_container_logs_are_readable(node: NodeCluster) -> None:
    agent = node.agent_pod()
    # kubelet updates CSINode before it notifies the plugin: the log line may follow by a moment.
    registered = "kubelet registered the plugin device.csi.openebs.io"

    def logged() -> str | None:
        text = node.logs(agent, NAMESPACE, "device-driver")
        return text if registered in text else None

    log = wait_for("registration logged", logged, 30)
    assert f"agent for node {NODE} serving on" in str(log)
    for pod in node.controller_pods():
        assert "controller serving on" in node.logs(pod, NAMESPACE, "device-driver")
        assert node.logs(pod, NAMESPACE, "csi-provisioner").strip()


def test_liveness_probe_answers_through_the_driver_socket(node: NodeCluster) -> None:
    """kubelet probes /healthz; a healthy driver is never restarted by it."""
    for pod in [node.agent_pod(), *node.controller_pods()]:
        status = node.real.get("pod", pod, namespace=NAMESPACE)["status"]
        driver = next(c for c in status["containerStatuses"] if c["name"] == "device-driver")
        assert driver["restartCount"] == 0, f"{pod}: {driver}"
        assert driver["ready"]


def test_leadership_belongs_to_a_pod_and_moves_with_it(node: NodeCluster) -> None:
    """The driver and csi-provisioner of one Pod lead together on one Lease: deleting the leading Pod hands both
    roles to the other Pod, and claims are provisioned right after."""
    lease = node.real.get("lease", "device-csi-openebs-io", namespace=NAMESPACE)
    leader = lease["spec"]["holderIdentity"]
    assert leader in node.controller_pods()
    node.kubectl("delete", "pod", "-n", NAMESPACE, leader, "--wait=true", "--timeout=60s")

    def new_holder() -> str | None:
        spec = node.real.get("lease", lease["metadata"]["name"], namespace=NAMESPACE)["spec"]
        holder = spec.get("holderIdentity")
        return holder if holder and holder != leader else None

    wait_for("another Pod leads", new_holder, 60)
    node.pvc("after-failover", "openebs-device-ssd-immediate", "16Mi")
    try:
        node.pv_of("after-failover")
    finally:
        node.delete("pvc", "after-failover")
    node.wait_driver_ready()
