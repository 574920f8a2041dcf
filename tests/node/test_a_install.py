"""deploy/ on a real kubelet: the workloads become Ready, kubelet registers the plugin, logs are readable."""

from __future__ import annotations

import json

from tests.harness.node import NODE
from tests.harness.workloads import NAMESPACE, TOPOLOGY_KEY, NodeCluster


def test_workloads_ready_and_plugin_registered(node: NodeCluster) -> None:
    ctl = node.real.get("deploy", "openebs-device-controller", namespace=NAMESPACE)
    assert ctl["status"].get("availableReplicas") == 2
    ds = node.real.get("ds", "openebs-device-node", namespace=NAMESPACE)
    assert ds["status"]["numberReady"] == ds["status"]["desiredNumberScheduled"] == 1

    registered = node.csinode_driver()
    assert registered is not None, "kubelet did not register the plugin in CSINode"
    assert registered["nodeID"] == NODE
    assert TOPOLOGY_KEY in registered["topologyKeys"]

    # One controller holds the Lease; both replicas' containers are running.
    lease = json.loads(node.kubectl("get", "lease", "-n", NAMESPACE, "-o", "json"))["items"]
    holders = {item["spec"].get("holderIdentity") for item in lease}
    assert set(node.controller_pods()) & holders, f"no controller pod holds a Lease: {holders}"


def test_container_logs_are_readable(node: NodeCluster) -> None:
    agent = node.agent_pod()
    log = node.logs(agent, NAMESPACE, "device-driver")
    assert f"agent for node {NODE} serving on" in log
    assert "kubelet registered the plugin device.csi.openebs.io" in log
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
