#!/usr/bin/env bash
# Set everything up (hack/setup.sh), check lint, types and layers, then run the whole test suite against real
# parts: etcd + kube-apiserver, loop-device disks, the driver's processes, csi-sanity.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
hack/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache >/dev/null
exec .venv/bin/pytest -ra "$@"
