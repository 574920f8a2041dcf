#!/usr/bin/env bash
# Set everything up (hack/setup.sh), then run the demo.
#   hack/demo.sh         the user's path on a real node: images built, driver installed from deploy/ into Pods on a
#                        real kubelet (containerd + runc), an application Pod gets a volume through a PVC.
#   hack/demo.sh --csi   the quick CSI-level demo: API server + controller + agent processes on loop disks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
hack/setup.sh
if [[ ${1:-} == --csi ]]; then
  PYTHONPATH=$root exec .venv/bin/python hack/demo.py
fi
PYTHONPATH=$root exec .venv/bin/python hack/demo_node.py
