"""One real node for every test in this directory: the driver installed from deploy/ into Pods on a real kubelet.

Cost on a warm cache (images and Go tools built): about 40 s to bring the node up and the driver Ready. The modules
that need a second node take `two_nodes` instead: node B beside it for that module only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.images import build_images
from harness.node import NODE_B
from harness.tools import ARTIFACTS, Tools
from harness.workloads import NodeCluster, bring_up


@pytest.fixture(scope="session")
def node(go_tools: Tools) -> Iterator[NodeCluster]:
    for path in (go_tools.kubelet, go_tools.kube_controller_manager, go_tools.kube_scheduler):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: run hack/tools.sh all")
    cluster = bring_up(go_tools, build_images(), ARTIFACTS / "node")
    try:
        yield cluster
    finally:
        try:
            cluster.real.logs(ARTIFACTS / "node")
        finally:
            cluster.real.stop()


@pytest.fixture(scope="module")
def two_nodes(node: NodeCluster) -> Iterator[NodeCluster]:
    """The session's cluster with a second node, `dlpv-node-b` (NODE_B), for the tests of one module: its own
    containerd and kubelet on this host, its agent Ready with its own pool disk (`node.node_b_disks`). Disks move
    between the nodes with `node.move_disk(disk, NODE_B)`; at the end of the module node B is removed (its Node
    object too) and every moved disk is plugged back where it started. Its logs go to artifacts/node/dlpv-node-b.

    Cost on a warm cache: about 18 s to start node B (containerd, image imports, kubelet, the agent Pod Ready and
    its disk reported), about 3 s to remove it."""
    try:
        node.add_node_b()
        yield node
    finally:
        try:
            if node.node_b is not None:
                node.node_b.logs(ARTIFACTS / "node" / NODE_B)
        finally:
            node.remove_node_b()
