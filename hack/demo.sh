#!/usr/bin/env bash
# Set everything up (hack/setup.sh), then run the demo: local API server + controller + agent on loop disks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
hack/setup.sh
PYTHONPATH=$root exec .venv/bin/python hack/demo.py
