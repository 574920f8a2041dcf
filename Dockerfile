# device-localpv: one image for both roles, `device-localpv controller` and `device-localpv agent`.
#
# Inputs besides this directory: the two gRPC API definitions, handed in as the named build context
# "protos" (a directory holding csi.proto and pluginregistration.proto at the versions pinned in
# hack/versions.env; hack/tools.sh fetches them through the Go module proxy). The image generates its
# own stubs from them, so stubs generated in a checkout never reach it (.dockerignore).
#
# 1. Release build (Docker >= 23 with BuildKit, public base image, PyPI reachable):
#
#      mkdir -p /tmp/protos
#      cp "$(hack/tools.sh csi-proto)" /tmp/protos/csi.proto
#      cp "$(hack/tools.sh kubelet-proto)" /tmp/protos/pluginregistration.proto
#      docker build --build-context protos=/tmp/protos -t openebs/device-localpv:0.1.0 .
#
# 2. Local build without any registry: hack/image.sh. It makes the base from Debian packages
#    (mmdebstrap --variant=minbase, then podman import as localhost/device-localpv-base:<hash>; it
#    already holds python3-venv and every host tool below) and runs
#
#      podman build --network host --pull=never --build-arg BASE_IMAGE=localhost/device-localpv-base:<hash> \
#        --build-context protos=<dir> -t docker.io/openebs/device-localpv:0.1.0 .
#
#    The builder stage still downloads from PyPI (--network host gives it the host's network). That
#    machine trusts a custom CA for TLS, so the local base carries the host's CA bundle
#    (/etc/ssl/certs/ca-certificates.crt, copied in by hack/image.sh), which Debian's Python and pip
#    use by default: nothing in this file knows about it, and the public base is unaffected.
#
# Both bases work with the same steps: Debian's python3 has no `pip` command and refuses system-wide
# installs (PEP 668), so everything Python goes into virtualenvs (/opt/build in the builder,
# /opt/device-localpv at run time).
#
# No "# syntax=" line on purpose: the built-in frontends of BuildKit and of podman/buildah support
# named build contexts, and pulling a frontend image needs a registry.

ARG BASE_IMAGE=python:3.11-slim-bookworm

# -------------------------------------------------------------------------------------------------
# builder: generates the gRPC stubs, wheels the project and its runtime dependencies at the versions
# pinned by pyproject.toml and constraints.txt, and installs them, offline, into the virtualenv the
# runtime stage copies as it is (same base, same path: the venv's links to python3 hold).
# -------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/build/bin:${PATH}
WORKDIR /src

# The stub generator only (grpcio-tools pulls grpcio and protobuf), at the locked versions.
COPY constraints.txt ./
RUN python3 -m venv /opt/build \
 && pip install -c constraints.txt grpcio-tools protobuf

# Runtime dependencies next, in their own layer, reused while pyproject.toml and the lock are
# unchanged: with no sources copied yet the project wheels as an empty distribution (dropped).
COPY pyproject.toml ./
RUN pip wheel -c constraints.txt --wheel-dir /wheels . \
 && rm -rf /wheels/device_localpv-* build *.egg-info

COPY hack/gen-proto.sh hack/
COPY scheduler/ scheduler/
COPY csidriver/ csidriver/
COPY --from=protos csi.proto pluginregistration.proto /protos/
RUN PROTO_DIR=/protos PYTHON=/opt/build/bin/python bash hack/gen-proto.sh \
 && test -f csidriver/csi/csi_pb2_grpc.py \
 && test -f csidriver/pluginregistration/api_pb2_grpc.py \
 && pip wheel --no-deps --wheel-dir /wheels .

# The runtime virtualenv: exactly the wheels above, nothing fetched, installers removed afterwards
# (pip can uninstall itself). pip byte-compiles everything, which keeps start-up fast.
RUN python3 -m venv /opt/device-localpv \
 && /opt/device-localpv/bin/pip install --no-index --find-links=/wheels device-localpv \
 && /opt/device-localpv/bin/pip uninstall -y -q pip setuptools

# -------------------------------------------------------------------------------------------------
# runtime
# -------------------------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/device-localpv/bin:${PATH}

# Host tools the agent runs (partitioning, filesystems, block device queries) and libudev for
# pyudev; the controller uses none of them, one image keeps releases simple. Installed only when
# the base lacks one of them: the local base has them all, and its build may have no apt mirror.
RUN set -eu; \
    pkgs="parted util-linux fdisk e2fsprogs xfsprogs btrfs-progs udev"; \
    missing=""; \
    for p in $pkgs; do \
      [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends $missing \
      && apt-get clean \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# COPY rather than a RUN --mount of the builder's wheels: buildah (podman build) reuses a cached
# RUN --mount=from=<stage> step even when that stage changed, while COPY --from compares contents.
COPY --from=builder /opt/device-localpv /opt/device-localpv
RUN ln -s /opt/device-localpv/bin/device-localpv /usr/local/bin/device-localpv \
 && device-localpv --help >/dev/null \
 && python -c "import csidriver.csi.csi_pb2_grpc, csidriver.pluginregistration.api_pb2_grpc"

ENTRYPOINT ["device-localpv"]
