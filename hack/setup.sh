#!/usr/bin/env bash
# Everything the driver, its tests and its demo need on a fresh Debian 12 machine (run as root):
# Debian packages, a Python venv with pinned dependencies, the generated CSI stubs, and the Go-built tools
# (cached under ~/.cache/device-localpv-tools, so only the first run builds them).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# The second line is the real node: container engine and image builder, kubelet runtime, pod networking.
packages=(parted fdisk util-linux e2fsprogs xfsprogs btrfs-progs udev openssl fuse3 libfuse2
  podman containerd runc containernetworking-plugins mmdebstrap iptables conntrack gcc libc6-dev file)
missing=()
for p in "${packages[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if ((${#missing[@]})); then
  echo "[setup] apt-get install ${missing[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
modprobe loop 2>/dev/null || true

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $python" >&2
  "$python" -m venv .venv
fi
stamp=.venv/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [[ ! -e $stamp ]]; then
  echo "[setup] installing Python dependencies (pinned by constraints.txt)" >&2
  .venv/bin/pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  rm -f .venv/.installed-*; touch "$stamp"
fi
hack/gen-proto.sh
hack/tools.sh all
hack/image.sh >/dev/null  # the images deploy/ names, plus pause (cached; seconds when nothing changed)
