#!/usr/bin/env bash
# Build, with podman and without any container registry, every image the deploy/ manifests use, save each one
# as a docker-archive tarball in a cache outside the repo, and print the tarballs' paths.
#
#   hack/image.sh                 build what is missing; stdout: one archive path per line (5 lines)
#   hack/image.sh --print-sizes   build nothing; stdout: image, size and build time of the current archives
#   hack/image.sh --rebuild       cold build: new base rootfs, no podman layer cache, archives replaced
#
# Images (names fully qualified, the way containerd's CRI looks them up):
#   docker.io/openebs/device-localpv:<project version>   the repo's Dockerfile, on a base made from Debian packages
#   registry.k8s.io/sig-storage/csi-provisioner:<EXTERNAL_PROVISIONER_VERSION>
#   registry.k8s.io/sig-storage/csi-resizer:<EXTERNAL_RESIZER_VERSION>
#   registry.k8s.io/sig-storage/csi-snapshotter:<EXTERNAL_SNAPSHOTTER_VERSION>
#                                                         FROM scratch + the static binary built by hack/tools.sh
#   registry.k8s.io/pause:<PAUSE_VERSION>                 FROM scratch + hack/pause/pause.c compiled static
#
# Load them into containerd with `ctr -n k8s.io images import <archive>`. Details: docs/images.md.
#
# Cache: $(hack/tools.sh dir)/images/<image>-<hash of its inputs>.tar, with a .meta file (size, build time). An
# archive is reused as long as its inputs hash the same, so a second run builds nothing. Environment:
#   DEVICE_LOCALPV_APT_SOURCES    file with apt sources for the base (default: the host's Debian entries)
#   DEVICE_LOCALPV_MAX_DRIVER_MB  size limit of the driver image, podman's uncompressed size (default 250)
set -euo pipefail
shopt -s nullglob

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# shellcheck source=versions.env
source hack/versions.env

PAUSE_VERSION=3.10
SUITE=bookworm
# The local base: the Python the driver runs on (python3-venv for the Dockerfile's virtualenvs), the CA store, and
# the host tools the agent runs (the same list as the runtime stage of the Dockerfile).
BASE_PACKAGES=python3,python3-venv,ca-certificates,parted,util-linux,fdisk,e2fsprogs,xfsprogs,btrfs-progs,udev
# Files dpkg does not unpack into the base.
BASE_DPKG_OPTS=(
  # documentation (license files kept), manuals, translations, shell completions
  'path-exclude=/usr/share/doc/*'
  'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/man/*'
  'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/locale/*'
  'path-exclude=/usr/share/lintian/*'
  'path-exclude=/usr/share/bash-completion/*'
  'path-exclude=/usr/share/zsh/*'
  # udev's hardware database (~22 MB with its compiled form): only a udevd handling events reads it, and none runs in
  # the container; the agent reads the host's udev database (/run/udev) through libudev. bookworm's udev uses /lib.
  'path-exclude=/lib/udev/hwdb.d/*'
  'path-exclude=/usr/lib/udev/hwdb.d/*'
  # ICU (~36 MB): in this package set only xfs_scrub links it (the reason xfsprogs depends on libicu72), a program
  # the driver never runs; mkfs.xfs, xfs_growfs, xfs_repair, xfs_admin do not. check_libs below fails the base if
  # anything else is left with an unresolved library.
  'path-exclude=/usr/lib/x86_64-linux-gnu/libicu*'
)
BASE_BROKEN_OK=/usr/sbin/xfs_scrub  # the only program allowed an unresolved library (see ICU above)
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
BASE_REPO=localhost/device-localpv-base

project_version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
  pyproject.toml)
DRIVER_IMAGE=docker.io/openebs/device-localpv:$project_version
PROVISIONER_IMAGE=registry.k8s.io/sig-storage/csi-provisioner:$EXTERNAL_PROVISIONER_VERSION
RESIZER_IMAGE=registry.k8s.io/sig-storage/csi-resizer:$EXTERNAL_RESIZER_VERSION
SNAPSHOTTER_IMAGE=registry.k8s.io/sig-storage/csi-snapshotter:$EXTERNAL_SNAPSHOTTER_VERSION
PAUSE_IMAGE=registry.k8s.io/pause:$PAUSE_VERSION
max_driver_mb=${DEVICE_LOCALPV_MAX_DRIVER_MB:-250}

log() { echo "[image] $*" >&2; }
die() { log "error: $*"; exit 1; }

mode=build
case ${1:-} in
  "") ;;
  --print-sizes) mode=sizes ;;
  --rebuild) mode=rebuild ;;
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
  *) die "unknown argument: $1 (try --help)" ;;
esac

cache=$(hack/tools.sh dir)/images
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Rootful podman asks runc for limits of 1048576 open files and processes; raising a hard limit that far needs
# CAP_SYS_RESOURCE, and where this shell lacks it (some VM sandboxes) runc fails with "error setting rlimit". Then
# builds and runs ask for limits this shell already has.
podman_limits=()
if (( (0x$(awk '/^CapEff:/ {print $2}' /proc/self/status) >> 24 & 1) == 0 )); then
  lim_nofile=$(ulimit -Hn); [[ $lim_nofile == unlimited || $lim_nofile -gt 65536 ]] && lim_nofile=65536
  lim_nproc=$(ulimit -Hu); [[ $lim_nproc == unlimited || $lim_nproc -gt 4096 ]] && lim_nproc=4096
  podman_limits=(--ulimit "nofile=$lim_nofile:$lim_nofile" --ulimit "nproc=$lim_nproc:$lim_nproc")
fi
build_flags=(--pull=never "${podman_limits[@]}")
[[ $mode != rebuild ]] || build_flags+=(--no-cache)

# ---------------------------------------------------------------------------------------------------------------
# Inputs and cache keys (16 hex digits of a SHA-256)
# ---------------------------------------------------------------------------------------------------------------
sha() { sha256sum | cut -c1-16; }
hash_files() { sha256sum -- "$@" | sha; }  # names and contents, in the order given

# The packages' source files without generated stubs and bytecode (the .dockerignore filter), in a stable order.
driver_sources() {
  find csidriver scheduler -type f \
    ! -path 'csidriver/csi/*' ! -path 'csidriver/pluginregistration/*' \
    ! -path '*/__pycache__/*' ! -name '*.pyc' | LC_ALL=C sort
}

driver_key() {
  local files=(Dockerfile .dockerignore pyproject.toml constraints.txt hack/gen-proto.sh hack/image.sh hack/versions.env)
  mapfile -t -O "${#files[@]}" files < <(driver_sources)
  hash_files "${files[@]}"
}

apt_sources() {
  if [[ -n ${DEVICE_LOCALPV_APT_SOURCES:-} ]]; then
    cat "$DEVICE_LOCALPV_APT_SOURCES"
  else  # the host's Debian entries only: debian.sources (deb822) and/or one-line entries of sources.list
    [[ ! -f /etc/apt/sources.list.d/debian.sources ]] || cat /etc/apt/sources.list.d/debian.sources
    [[ ! -f /etc/apt/sources.list ]] || grep -E '^deb .*debian' /etc/apt/sources.list || true
  fi
}

base_key() {
  { echo "$SUITE $BASE_PACKAGES merged-usr $BASE_BROKEN_OK"; printf '%s\n' "${BASE_DPKG_OPTS[@]}"; apt_sources
    sha256sum <"$HOST_CA_BUNDLE"; } | sha
}

tool_bin() { hack/tools.sh env | sed -n "s/^$1=//p"; }  # tool_bin <variable of hack/tools.sh env>

# The Containerfile of a one-binary image: the file at the root, run as the entrypoint.
scratch_containerfile() {  # scratch_containerfile <file name>
  printf 'FROM scratch\nCOPY %s /%s\nENTRYPOINT ["/%s"]\n' "$1" "$1" "$1"
}

sidecar_key() {  # sidecar_key <image> <binary>
  { echo "$1"; sha256sum <"$2"; scratch_containerfile "$(basename "$2")"; } | sha
}

PAUSE_CFLAGS=(-static -Os -s -Wall -Wextra -Werror "-DPAUSE_VERSION=\"$PAUSE_VERSION\"")
pause_key() {
  { echo "$PAUSE_IMAGE ${PAUSE_CFLAGS[*]}"; gcc --version | head -1; sha256sum <hack/pause/pause.c
    scratch_containerfile pause; } | sha
}

# ---------------------------------------------------------------------------------------------------------------
# Cache bookkeeping
# ---------------------------------------------------------------------------------------------------------------
archive_path() { echo "$cache/$1-$2.tar"; }  # archive_path <file stem> <key>
meta() { sed -n "s/^$2=//p" "$1.meta" 2>/dev/null; }  # meta <archive> <field>

image_id() { podman image inspect --format '{{.Id}}' "$1" 2>/dev/null || true; }

# save_archive <image> <archive> <start time> <id of the image the tag named before>
save_archive() {
  local image=$1 archive=$2 start=$3 previous=$4 size
  size=$(podman image inspect --format '{{.Size}}' "$image")
  log "saving $image -> $archive"
  rm -f "$archive.tmp"
  podman save --format docker-archive -o "$archive.tmp" "$image" >&2
  printf 'image=%s\nsize=%s\nseconds=%s\nbuilt=%s\n' "$image" "$size" $(($(date +%s) - start)) \
    "$(date -u +%FT%TZ)" >"$archive.meta"
  mv "$archive.tmp" "$archive"
  # Superseded: archives of the same image with other input hashes, and the podman image the tag left behind.
  local stem=${archive%-*} old
  for old in "$stem"-*.tar; do
    [[ $old == "$archive" || ${old#"$stem"-} == *-* ]] || rm -f "$old" "$old.meta"
  done
  if [[ -n $previous && $previous != "$(image_id "$image")" ]]; then
    podman rmi "$previous" >/dev/null 2>&1 || true
  fi
}

declare -A built_now=()

# ---------------------------------------------------------------------------------------------------------------
# Local base: Debian packages -> rootfs tarball (mmdebstrap, cached) -> podman image (podman import)
# ---------------------------------------------------------------------------------------------------------------
# A mmdebstrap hook (plain sh, run on the host): fail if a program or library of the new rootfs has an unresolved
# shared library, unless the program is one of the arguments after the rootfs.
write_check_libs() {  # write_check_libs <file>
  cat >"$1" <<'EOF'
set -eu
rootfs=$1; shift
broken=$(chroot "$rootfs" sh -c '
  for f in /usr/bin/* /usr/sbin/* /usr/lib/x86_64-linux-gnu/*.so* /usr/lib/python3*/lib-dynload/*.so; do
    [ -f "$f" ] && [ ! -L "$f" ] || continue
    if ldd "$f" 2>/dev/null | grep -q "not found"; then echo "$f"; fi
  done')
for ok in "$@"; do broken=$(echo "$broken" | grep -vxF "$ok" || true); done
if [ -n "$broken" ]; then echo "unresolved shared libraries in:" $broken >&2; exit 1; fi
EOF
}

ensure_base() {  # prints the reference of the base image, making it first if needed
  local key tar ref start
  key=$(base_key)
  ref=$BASE_REPO:$key
  tar=$cache/base-$SUITE-$key.tar
  if [[ $mode == rebuild ]] || ! podman image exists "$ref"; then
    start=$(date +%s)
    if [[ $mode == rebuild || ! -s $tar ]]; then
      log "making the $SUITE base rootfs with mmdebstrap ($BASE_PACKAGES)"
      write_check_libs "$work/check-libs.sh"
      apt_sources >"$work/apt-sources"  # no extension: mmdebstrap tells deb822 from one-line by itself
      local opts=() o
      for o in "${BASE_DPKG_OPTS[@]}"; do opts+=("--dpkgopt=$o"); done
      # - merged-usr hook: /usr merged by mmdebstrap itself plus usr-is-merged, instead of the usrmerge package and
      #   the perl it drags in (~55 MB).
      # - This host trusts a custom CA for TLS (PyPI included) and the Dockerfile's builder stage downloads from
      #   PyPI, so the base gets the host's CA bundle in place of its own (Debian's python and pip read that file).
      mmdebstrap --variant=minbase --include="$BASE_PACKAGES" "${opts[@]}" \
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
        --aptopt='Acquire::Languages "none"' \
        --customize-hook="cat '$HOST_CA_BUNDLE' >\"\$1/etc/ssl/certs/ca-certificates.crt\"" \
        --customize-hook="sh '$work/check-libs.sh' \"\$1\" $BASE_BROKEN_OK" \
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/cache/debconf/*-old "$1"/var/log/*.log "$1"/var/log/apt/*' \
        "$SUITE" "${tar%.tar}.partial.tar" "$work/apt-sources" >&2  # the .tar extension picks the output format
      mv "${tar%.tar}.partial.tar" "$tar"
      local old
      for old in "$cache"/base-"$SUITE"-*.tar; do [[ $old == "$tar" ]] || rm -f "$old"; done
    fi
    log "importing $tar as $ref"
    podman import \
      --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV=LANG=C.UTF-8' \
      --change 'CMD=["/bin/bash"]' \
      "$tar" "$ref" >/dev/null
    podman tag "$ref" "$BASE_REPO:$SUITE"
    local tag
    for tag in $(podman images --format '{{.Repository}}:{{.Tag}}' "$BASE_REPO"); do
      [[ $tag == "$ref" || $tag == "$BASE_REPO:$SUITE" ]] || podman untag "$tag" "$tag" >/dev/null 2>&1 || true
    done
    log "base ready in $(($(date +%s) - start))s"
  fi
  echo "$ref"
}

# ---------------------------------------------------------------------------------------------------------------
# The four images
# ---------------------------------------------------------------------------------------------------------------
build_driver() {  # build_driver <archive>
  local archive=$1 start previous base protos size
  start=$(date +%s)
  previous=$(image_id "$DRIVER_IMAGE")
  base=$(ensure_base)
  # Named build context "protos": both API definitions at the pinned versions, fetched on the host by hack/tools.sh.
  protos=$work/protos
  mkdir -p "$protos"
  cp "$(hack/tools.sh csi-proto)" "$protos/csi.proto"
  cp "$(hack/tools.sh kubelet-proto)" "$protos/pluginregistration.proto"
  log "building $DRIVER_IMAGE on $base"
  podman build "${build_flags[@]}" --network host \
    --build-arg "BASE_IMAGE=$base" \
    --build-context "protos=$protos" \
    --label "io.openebs.device-localpv.inputs=$(basename "$archive" .tar)" \
    -f Dockerfile -t "$DRIVER_IMAGE" . >&2
  size=$(podman image inspect --format '{{.Size}}' "$DRIVER_IMAGE")
  if ((size > max_driver_mb * 1000 * 1000)); then
    die "$DRIVER_IMAGE is $((size / 1000000)) MB, over the $max_driver_mb MB limit; see what is big with:" \
      "podman run --rm --entrypoint du $DRIVER_IMAGE -xhd3 / | sort -h | tail -30"
  fi
  podman run --rm "${podman_limits[@]}" "$DRIVER_IMAGE" --help >/dev/null || die "$DRIVER_IMAGE does not start"
  save_archive "$DRIVER_IMAGE" "$archive" "$start" "$previous"
}

# build_scratch <image> <archive> <binary> <start time>: FROM scratch, the binary alone, as the entrypoint.
build_scratch() {
  local image=$1 archive=$2 bin=$3 start=$4 previous name ctx
  previous=$(image_id "$image")
  name=$(basename "$bin")
  file -b "$bin" | grep -q 'statically linked' || die "$bin is not statically linked: $(file -b "$bin")"
  ctx=$work/ctx-$name
  mkdir -p "$ctx"
  cp "$bin" "$ctx/$name"
  scratch_containerfile "$name" >"$ctx/Containerfile"
  log "building $image (FROM scratch + $name)"
  podman build "${build_flags[@]}" --network none \
    --label "io.openebs.device-localpv.inputs=$(basename "$archive" .tar)" \
    -f "$ctx/Containerfile" -t "$image" "$ctx" >&2
  save_archive "$image" "$archive" "$start" "$previous"
}

build_provisioner() {  # build_provisioner <archive>
  build_scratch "$PROVISIONER_IMAGE" "$1" "$prov_bin" "$(date +%s)"
}

build_resizer() {  # build_resizer <archive>
  build_scratch "$RESIZER_IMAGE" "$1" "$resizer_bin" "$(date +%s)"
}

build_snapshotter() {  # build_snapshotter <archive>
  build_scratch "$SNAPSHOTTER_IMAGE" "$1" "$snapshotter_bin" "$(date +%s)"
}

build_pause() {  # build_pause <archive>
  local start
  start=$(date +%s)
  mkdir -p "$work/pause"
  gcc "${PAUSE_CFLAGS[@]}" -o "$work/pause/pause" hack/pause/pause.c >&2
  "$work/pause/pause" --version >&2
  build_scratch "$PAUSE_IMAGE" "$1" "$work/pause/pause" "$start"
}

# ---------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------
for c in podman mmdebstrap gcc file flock; do
  command -v "$c" >/dev/null || die "$c is not installed (apt-get install podman mmdebstrap gcc libc6-dev file util-linux)"
done
mkdir -p "$cache"
exec 9>"$cache/.lock"  # one run at a time per cache (a test harness and a developer may start it together)
flock 9

# sidecar_bin <variable of hack/tools.sh env> <tool>: the sidecar's binary, built first when missing.
sidecar_bin() {
  local bin; bin=$(tool_bin "$1")
  if [[ ! -x $bin ]]; then
    [[ $mode != sizes ]] || die "$2 is not built yet ($bin)"
    log "no $2 binary yet: building it with hack/tools.sh (several minutes)"
    hack/tools.sh "$2" >&2
  fi
  echo "$bin"
}
prov_bin=$(sidecar_bin CSI_PROVISIONER_BIN csi-provisioner)
resizer_bin=$(sidecar_bin CSI_RESIZER_BIN csi-resizer)
snapshotter_bin=$(sidecar_bin CSI_SNAPSHOTTER_BIN csi-snapshotter)

driver_archive=$(archive_path "device-localpv-$project_version" "$(driver_key)")
prov_archive=$(archive_path "csi-provisioner-$EXTERNAL_PROVISIONER_VERSION" "$(sidecar_key "$PROVISIONER_IMAGE" "$prov_bin")")
resizer_archive=$(archive_path "csi-resizer-$EXTERNAL_RESIZER_VERSION" "$(sidecar_key "$RESIZER_IMAGE" "$resizer_bin")")
snapshotter_archive=$(archive_path "csi-snapshotter-$EXTERNAL_SNAPSHOTTER_VERSION" \
  "$(sidecar_key "$SNAPSHOTTER_IMAGE" "$snapshotter_bin")")
pause_archive=$(archive_path "pause-$PAUSE_VERSION" "$(pause_key)")
archives=("$driver_archive" "$prov_archive" "$resizer_archive" "$snapshotter_archive" "$pause_archive")

summary() {  # per image: name, uncompressed size (podman's figure), build time
  local a size seconds how
  for a in "${archives[@]}"; do
    if [[ ! -s $a ]]; then printf '%-52s not built (%s)\n' "$(basename "$a" .tar)" "$a"; continue; fi
    size=$(meta "$a" size); seconds=$(meta "$a" seconds)
    if [[ -n ${built_now[$a]:-} ]]; then how="built in ${seconds}s"; else how="cached (built in ${seconds}s)"; fi
    printf '%-52s %7.1f MB  %s\n' "$(meta "$a" image)" "$(awk -v s="${size:-0}" 'BEGIN { print s / 1e6 }')" "$how"
  done
}

if [[ $mode == sizes ]]; then
  summary
  exit 0
fi

run_start=$(date +%s)
for a in "${archives[@]}"; do
  [[ $mode == rebuild || ! -s $a ]] || continue
  case $a in
    "$driver_archive") build_driver "$a" ;;
    "$prov_archive") build_provisioner "$a" ;;
    "$resizer_archive") build_resizer "$a" ;;
    "$snapshotter_archive") build_snapshotter "$a" ;;
    "$pause_archive") build_pause "$a" ;;
  esac
  built_now[$a]=1
done

log "images ready in $(($(date +%s) - run_start))s (cache: $cache)"
summary | sed 's/^/[image]   /' >&2
printf '%s\n' "${archives[@]}"
