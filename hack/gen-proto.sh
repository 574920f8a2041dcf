#!/usr/bin/env bash
# Generate the CSI gRPC stubs into csidriver/csi/ from csi.proto at the pinned spec version.
# The proto is fetched through the Go module proxy (hack/tools.sh csi-proto) unless CSI_PROTO points at a copy
# (the container build passes it in as a build context). Generated files are never edited or committed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
proto=${CSI_PROTO:-$("$root/hack/tools.sh" csi-proto)}
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || python=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/csidriver/csi"
cp "$proto" "$work/csidriver/csi/csi.proto"
"$python" -m grpc_tools.protoc -I "$work" --python_out="$work" --grpc_python_out="$work" --pyi_out="$work" \
  "$work/csidriver/csi/csi.proto"
out="$root/csidriver/csi"
rm -rf "$out"; mkdir -p "$out"
cp "$work"/csidriver/csi/*.py "$work"/csidriver/csi/*.pyi "$out/"
echo '"""Generated CSI stubs (hack/gen-proto.sh). Do not edit."""' > "$out/__init__.py"
