# One image for both roles: `device-localpv controller` and `device-localpv agent`.
#
# Build (BuildKit; Docker >= 23 has it built in). The CSI spec proto is an input fetched at the
# pinned version by hack/tools.sh (through the Go module proxy, on the host) and handed to the
# build as a named context, so the image build itself needs no Go:
#
#   docker build \
#     --build-context csiproto="$(dirname "$(hack/tools.sh csi-proto)")" \
#     -t openebs/device-localpv:0.1.0 .
#
# No "# syntax=" line on purpose: the built-in Dockerfile frontend supports named contexts and
# RUN --mount, and pulling a frontend image needs a registry.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
# builder: Python tooling only (grpcio-tools compiles the proto); produces wheels of the project
# and of every runtime dependency at the versions pinned by pyproject.toml and constraints.txt.
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# Dependencies first (own layer, reused while the pins are unchanged), resolved against the same
# lock as hack/setup.sh. With no sources copied yet the project builds as an empty distribution.
COPY pyproject.toml constraints.txt ./
RUN pip install -c constraints.txt ".[dev]"

COPY hack/ hack/
COPY csidriver/ csidriver/
COPY scheduler/ scheduler/
COPY --from=csiproto csi.proto /build/csi/csi.proto

# Compile the CSI stubs into csidriver/csi/ from the proto given above (CSI_PROTO makes the script
# skip its download step), then wheel the project together with its runtime dependencies.
RUN CSI_PROTO=/build/csi/csi.proto bash hack/gen-proto.sh \
 && test -f csidriver/csi/csi_pb2.py \
 && pip wheel -c constraints.txt --wheel-dir /wheels .

# ---------------------------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Host tools the agent runs (partitioning, filesystems, block device queries) and libudev for
# pyudev. The controller uses none of them; one image keeps releases simple.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      parted util-linux fdisk e2fsprogs xfsprogs btrfs-progs udev \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

# Offline install from the builder's wheels: exactly what was resolved there, nothing fetched.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels device-localpv \
 && python -c "import csidriver.csi.csi_pb2_grpc"

ENTRYPOINT ["device-localpv"]
