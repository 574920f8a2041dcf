#!/usr/bin/env bash
# Build (once) the Go-built tools the tests and the demo need, into a versioned cache outside the repo.
# Usage: hack/tools.sh [all|etcd|kube|kubelet|helm|csi-sanity|csi-provisioner|csi-resizer|csi-snapshotter|original|csi-proto|kubelet-proto|env|dir]
# Prints nothing but progress on stderr; the cache dir is printed on stdout by `hack/tools.sh dir`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=local
cache_root=${DEVICE_LOCALPV_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/device-localpv-tools}

bin_dir() { echo "$cache_root/$1-$2"; }
log() { echo "[tools] $*" >&2; }

scratch() { local d; d=$(mktemp -d); (cd "$d" && go mod init local/tools >/dev/null 2>&1); echo "$d"; }

build_etcd() {
  local out; out=$(bin_dir etcd "$ETCD_VERSION")
  [[ -x $out/etcd ]] && return 0
  log "building etcd $ETCD_VERSION"
  local d; d=$(scratch)
  (cd "$d" && go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2 \
     && go build -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3 >&2)
  mv "$out.tmp" "$out"; rm -rf "$d"
}

# kube binaries need every k8s.io staging module replaced by its published version (derived, never typed).
build_kube() {
  local out; out=$(bin_dir kubernetes "$KUBERNETES_VERSION")
  local want=("$@") missing=()
  for c in "${want[@]}"; do [[ -x $out/$c ]] || missing+=("$c"); done
  ((${#missing[@]})) || return 0
  log "building ${missing[*]} $KUBERNETES_VERSION"
  local d; d=$(scratch)
  local gomod staging minor
  minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2)
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  staging=$(go mod edit -json "$gomod" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"]["Path"].startswith("./staging/"):
        print(r["Old"]["Path"])')
  (
    cd "$d"
    local stage_ver="v0.${minor}.$(echo "$KUBERNETES_VERSION" | cut -d. -f3)"
    for m in $staging; do go mod edit -replace "$m=$m@$stage_ver"; done
    go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
    go mod tidy >/dev/null 2>&1 || true
    local pkgs=()
    # each at the pinned version: a package path without one is resolved to the newest release the proxy serves
    for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c@$KUBERNETES_VERSION"); done
    go get "${pkgs[@]}" >&2
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION"
    ld+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
    ld+=" -X k8s.io/client-go/pkg/version.gitVersion=$KUBERNETES_VERSION"
    mkdir -p "$out"
    for c in "${missing[@]}"; do
      go build -ldflags "$ld" -o "$out/$c.tmp" "k8s.io/kubernetes/cmd/$c" >&2
      mv "$out/$c.tmp" "$out/$c"
    done
  )
  rm -rf "$d"
}

build_csi_sanity() {
  local out; out=$(bin_dir csi-test "$CSI_TEST_VERSION")
  [[ -x $out/csi-sanity ]] && return 0
  log "building csi-sanity $CSI_TEST_VERSION"
  GOBIN="$out.tmp" go install "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity@$CSI_TEST_VERSION" >&2
  mv "$out.tmp" "$out"
}

# Copies the versioned replace directives of go.mod file $1 into the module of the current directory (modules whose
# go.mod replaces dependencies cannot be built with `go install mod@ver`).
copy_replaces() {
  go mod edit -json "$1" | python3 -c '
import json, sys
for r in json.load(sys.stdin).get("Replace") or []:
    if r["New"].get("Version"):
        print("%s=%s@%s" % (r["Old"]["Path"], r["New"]["Path"], r["New"]["Version"]))' |
    while read -r rep; do go mod edit -replace "$rep"; done
}

# build_sidecar <module> <command> <version> <cache name>: one kubernetes-csi sidecar, stripped and stamped with its
# version. Its go.mod may carry replace directives: copy them (versioned ones only) into a scratch module.
build_sidecar() {
  local mod=$1 cmd=$2 ver=$3 out; out=$(bin_dir "$4" "$ver-stripped")
  [[ -x $out/$cmd ]] && return 0
  log "building $cmd $ver"
  local d; d=$(scratch)
  local gomod; gomod=$(go mod download -json "$mod@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  (
    cd "$d"
    copy_replaces "$gomod"
    go get "$mod/cmd/$cmd@$ver" >&2
    go build -ldflags "-s -w -X main.version=$ver" -o "$out.tmp/$cmd" "$mod/cmd/$cmd" >&2
  )
  mv "$out.tmp" "$out"; rm -rf "$d"
}

build_provisioner() {
  build_sidecar github.com/kubernetes-csi/external-provisioner/v6 csi-provisioner "$EXTERNAL_PROVISIONER_VERSION" \
    external-provisioner
}

build_resizer() {
  build_sidecar github.com/kubernetes-csi/external-resizer/v2 csi-resizer "$EXTERNAL_RESIZER_VERSION" external-resizer
}

# The CSI snapshot sidecar and the cluster's snapshot controller, from one module in one scratch module (one Go
# build cache), plus the snapshot CRDs of the same release (config/crd of its client module, which the main module
# replaces with its own ./client, a path the module proxy does not serve: the client at the same version is used).
build_snapshotter() {
  local mod=github.com/kubernetes-csi/external-snapshotter/v8 ver=$EXTERNAL_SNAPSHOTTER_VERSION out
  out=$(bin_dir external-snapshotter "$ver-stripped")
  [[ -x $out/csi-snapshotter && -x $out/snapshot-controller && -e $out/crd/groupsnapshot.storage.k8s.io_volumegroupsnapshots.yaml ]] && return 0
  log "building csi-snapshotter and snapshot-controller $ver"
  local d; d=$(scratch)
  local gomod; gomod=$(go mod download -json "$mod@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local client; client=$(go mod download -json "${mod%/v8}/client/v8@$ver" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$out.tmp"
  (
    cd "$d"
    copy_replaces "$gomod"
    go get "${mod%/v8}/client/v8@$ver" "$mod/cmd/csi-snapshotter@$ver" "$mod/cmd/snapshot-controller@$ver" >&2
    for cmd in csi-snapshotter snapshot-controller; do
      go build -ldflags "-s -w -X main.version=$ver" -o "$out.tmp/$cmd" "$mod/cmd/$cmd" >&2
    done
  )
  mkdir -p "$out.tmp/crd"
  cp "$client"/config/crd/*snapshot.storage.k8s.io_*.yaml "$out.tmp/crd/"  # volume and volume group snapshots
  chmod u+w "$out.tmp/crd"/*.yaml
  mv "$out.tmp" "$out"; rm -rf "$d"
}

# The original Go driver (openebs/device-localpv), a test component only. Its go.mod has replace directives, so
# `go install mod@ver` refuses it: copy them into a scratch module and build ./cmd there, stamped like its own build.
build_original() {
  local out; out=$(bin_dir device-localpv-original "$ORIGINAL_VERSION")
  [[ -x $out/device-driver ]] && return 0
  log "building the original device-localpv $ORIGINAL_VERSION"
  local mod=github.com/openebs/device-localpv
  local d; d=$(scratch)
  local gomod; gomod=$(go mod download -json "$mod@$ORIGINAL_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  (
    cd "$d"
    copy_replaces "$gomod"
    go get "$mod/cmd@$ORIGINAL_VERSION" >&2
    local v=$mod/pkg/version
    go build -ldflags "-s -w -X $v.Version=$ORIGINAL_VERSION -X $v.VersionMeta=released -X $v.GitCommit=$ORIGINAL_VERSION" \
      -o "$out.tmp/device-driver" "$mod/cmd" >&2
  )
  mv "$out.tmp" "$out"; rm -rf "$d"
}

build_helm() {
  local out; out=$(bin_dir helm "$HELM_VERSION")
  [[ -x $out/helm ]] && return 0
  log "building helm $HELM_VERSION"
  GOBIN="$out.tmp" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  mv "$out.tmp" "$out"
}

# Path of the kubelet plugin-registration API proto (k8s.io/kubelet at the Kubernetes version we build).
kubelet_proto() {
  local minor patch
  minor=$(echo "$KUBERNETES_VERSION" | cut -d. -f2); patch=$(echo "$KUBERNETES_VERSION" | cut -d. -f3)
  go mod download -json "k8s.io/kubelet@v0.${minor}.${patch}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"] + "/pkg/apis/pluginregistration/v1/api.proto")'
}

# Path of csi.proto at the pinned spec version (downloaded through the Go module proxy, not vendored).
csi_proto() {
  go mod download -json "github.com/container-storage-interface/spec@$CSI_SPEC_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"] + "/csi.proto")'
}

cmd=${1:-all}
case $cmd in
  dir) echo "$cache_root" ;;
  env)
    echo "ETCD_BIN=$(bin_dir etcd "$ETCD_VERSION")/etcd"
    echo "KUBE_BIN_DIR=$(bin_dir kubernetes "$KUBERNETES_VERSION")"
    echo "CSI_SANITY_BIN=$(bin_dir csi-test "$CSI_TEST_VERSION")/csi-sanity"
    echo "CSI_PROVISIONER_BIN=$(bin_dir external-provisioner "$EXTERNAL_PROVISIONER_VERSION-stripped")/csi-provisioner"
    echo "CSI_RESIZER_BIN=$(bin_dir external-resizer "$EXTERNAL_RESIZER_VERSION-stripped")/csi-resizer"
    echo "SNAPSHOTTER_DIR=$(bin_dir external-snapshotter "$EXTERNAL_SNAPSHOTTER_VERSION-stripped")"
    echo "CSI_SNAPSHOTTER_BIN=$(bin_dir external-snapshotter "$EXTERNAL_SNAPSHOTTER_VERSION-stripped")/csi-snapshotter"
    echo "HELM_BIN=$(bin_dir helm "$HELM_VERSION")/helm"
    echo "ORIGINAL_BIN=$(bin_dir device-localpv-original "$ORIGINAL_VERSION")/device-driver" ;;
  csi-proto) csi_proto ;;
  kubelet-proto) kubelet_proto ;;
  kubelet) build_kube kubelet ;;
  helm) build_helm ;;
  etcd) build_etcd ;;
  kube) build_kube kube-apiserver kubectl kube-controller-manager kube-scheduler ;;
  csi-sanity) build_csi_sanity ;;
  csi-provisioner) build_provisioner ;;
  csi-resizer) build_resizer ;;
  csi-snapshotter) build_snapshotter ;;
  original) build_original ;;
  all)
    start=$(date +%s)
    build_etcd; build_csi_sanity; build_kube kube-apiserver kubectl kube-controller-manager kube-scheduler kubelet
    build_provisioner; build_resizer; build_snapshotter; build_helm; build_original
    log "tools ready in $(( $(date +%s) - start ))s under $cache_root" ;;
  *) echo "unknown tool: $cmd" >&2; exit 2 ;;
esac
