#!/usr/bin/env bash
# Generate the gRPC stubs from protos fetched at pinned versions through the Go module proxy:
#   csidriver/csi/                  CSI spec (csi.proto, CSI_SPEC_VERSION)
#   csidriver/pluginregistration/   kubelet's plugin-registration API (k8s.io/kubelet at KUBERNETES_VERSION)
# PROTO_DIR may point at a directory holding both files (csi.proto, pluginregistration.proto): the container build
# passes them in as a build context. Generated files are never edited or committed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n ${PROTO_DIR:-} ]]; then
  csi=$PROTO_DIR/csi.proto; reg=$PROTO_DIR/pluginregistration.proto
else
  csi=$("$root/hack/tools.sh" csi-proto); reg=$("$root/hack/tools.sh" kubelet-proto)
fi
python=${PYTHON:-$root/.venv/bin/python}
[[ -x $python ]] || python=python3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

gen() {  # gen <proto file> <package dir> <file name in the package>
  mkdir -p "$work/$2"
  cp "$1" "$work/$2/$3"
  "$python" -m grpc_tools.protoc -I "$work" --python_out="$work" --grpc_python_out="$work" --pyi_out="$work" \
    "$work/$2/$3"
  local out="$root/$2"
  rm -rf "$out"; mkdir -p "$out"
  cp "$work/$2"/*.py "$work/$2"/*.pyi "$out/"
  echo "\"\"\"Generated stubs of $3 (hack/gen-proto.sh). Do not edit.\"\"\"" > "$out/__init__.py"
}
gen "$csi" csidriver/csi csi.proto
gen "$reg" csidriver/pluginregistration api.proto
