"""CSI requests as plain values, validated once. Built by the gRPC edge from protobuf messages."""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.services.errors import InvalidArgument, OutOfRange
from csidriver.services.mountflags import flag_problem
from scheduler import Policy


class AccessMode(enum.Enum):
    UNKNOWN = 0
    SINGLE_NODE_WRITER = 1
    SINGLE_NODE_READER_ONLY = 2
    MULTI_NODE_READER_ONLY = 3
    MULTI_NODE_SINGLE_WRITER = 4
    MULTI_NODE_MULTI_WRITER = 5
    SINGLE_NODE_SINGLE_WRITER = 6
    SINGLE_NODE_MULTI_WRITER = 7


SINGLE_NODE_MODES = frozenset(
    {
        AccessMode.SINGLE_NODE_WRITER,
        AccessMode.SINGLE_NODE_READER_ONLY,
        AccessMode.SINGLE_NODE_SINGLE_WRITER,
        AccessMode.SINGLE_NODE_MULTI_WRITER,
    }
)
SUPPORTED_FS = c.SUPPORTED_FS
DEFAULT_FS = "ext4"


@dataclass(frozen=True)
class Capability:
    block: bool
    access_mode: AccessMode
    fs_type: str = ""
    mount_flags: tuple[str, ...] = ()


def capability_problem(cap: Capability, default_fs: str = DEFAULT_FS) -> str | None:
    """Why a capability cannot be served, or None."""
    if cap.access_mode not in SINGLE_NODE_MODES:
        return f"access mode {cap.access_mode.name} is not supported: a local volume serves a single node"
    if not cap.block and cap.fs_type and cap.fs_type not in SUPPORTED_FS:
        return f"filesystem {cap.fs_type!r} is not supported (supported: {', '.join(SUPPORTED_FS)})"
    if cap.block and cap.mount_flags:
        return "mount flags apply to filesystem volumes only, not to raw block volumes"
    for flag in cap.mount_flags:
        problem = flag_problem(flag, cap.fs_type or default_fs)
        if problem:
            return problem
    return None


def check_capabilities(caps: tuple[Capability, ...]) -> None:
    if not caps:
        raise InvalidArgument("volume_capabilities must not be empty")
    for cap in caps:
        problem = capability_problem(cap)
        if problem:
            raise InvalidArgument(problem)


@dataclass(frozen=True)
class VolumeParams:
    pool: str
    policy: Policy
    room_to_grow: bool = False  # placement: RoomToGrow (worst fit) rather than BestFit


PARAM_POOL = "devname"
PARAM_SCHEDULER = "scheduler"
PARAM_PLACEMENT = "placement"
KNOWN_PARAMS = (PARAM_POOL, PARAM_SCHEDULER, PARAM_PLACEMENT)
_PLACEMENTS = {p.lower(): p for p in (c.PLACEMENT_BEST_FIT, c.PLACEMENT_ROOM_TO_GROW)}
# Keys the external-provisioner adds (--extra-create-metadata) or passes through.
_PASSTHROUGH_PREFIX = "csi.storage.k8s.io/"


def parse_params(params: Mapping[str, str]) -> VolumeParams:
    """StorageClass parameters; keys are case-insensitive, unknown keys are rejected."""
    seen: dict[str, str] = {}
    for key, value in params.items():
        low = key.lower()
        if low.startswith(_PASSTHROUGH_PREFIX):
            continue
        if low not in KNOWN_PARAMS:
            raise InvalidArgument(f"unknown parameter {key!r}; valid parameters are: {', '.join(KNOWN_PARAMS)}")
        if low in seen:
            raise InvalidArgument(f"parameter {low!r} given twice (keys are case-insensitive)")
        seen[low] = value
    pool = seen.get(PARAM_POOL, "")
    if not pool:
        raise InvalidArgument(f"parameter {PARAM_POOL!r} (the pool name) is required")
    if not naming.is_valid_pool(pool):
        raise InvalidArgument(f"pool name {pool!r} is invalid: 1-36 characters of [A-Za-z0-9._-]")
    try:
        policy = Policy.parse(seen.get(PARAM_SCHEDULER, ""))
    except ValueError as e:
        raise InvalidArgument(str(e)) from e
    placement = _PLACEMENTS.get(seen.get(PARAM_PLACEMENT, c.PLACEMENT_BEST_FIT).lower())
    if placement is None:
        raise InvalidArgument(
            f"placement {seen[PARAM_PLACEMENT]!r} is invalid: valid placements are {', '.join(_PLACEMENTS.values())}"
        )
    return VolumeParams(pool=pool, policy=policy, room_to_grow=placement == c.PLACEMENT_ROOM_TO_GROW)


def volume_size(required: int, limit: int) -> int:
    """Bytes to allocate: required rounded up to MiB (a default when unset), within limit."""
    if required < 0 or limit < 0:
        raise InvalidArgument("capacity_range bytes must not be negative")
    if limit and required > limit:
        raise OutOfRange(f"required_bytes {required} exceeds limit_bytes {limit}")
    want = required or min(c.DEFAULT_VOLUME_SIZE, limit or c.DEFAULT_VOLUME_SIZE)
    size = -(-want // c.MIB) * c.MIB
    if limit and size > limit:
        raise OutOfRange(f"{want} bytes rounded up to the 1 MiB grid is {size}, above limit_bytes {limit}")
    if size > MAX_VOLUME_SIZE:
        raise OutOfRange(f"{want} bytes rounded up to the 1 MiB grid is {size}, above the largest volume size")
    if size == 0:
        raise OutOfRange(f"limit_bytes {limit} is below the 1 MiB allocation unit")
    return size


Segment = Mapping[str, str]
# Sizes are int64 on the wire and in the objects; the largest whole MiB below 2^63.
MAX_VOLUME_SIZE = (2**63 - 1) // c.MIB * c.MIB
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = re.compile(rf"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?{_LABEL_NAME}")
_LABEL_VALUE = re.compile(rf"({_LABEL_NAME})?")


def check_segments(segments: tuple[Segment, ...], what: str) -> None:
    """Topology segments are Kubernetes labels: keys and values must be valid label keys and values."""
    for seg in segments:
        for key, value in seg.items():
            if len(key) > 316 or not _LABEL_KEY.fullmatch(key) or len(key.rpartition("/")[0]) > 253:
                raise InvalidArgument(f"{what}: topology key {key[:80]!r} is not a valid label key")
            if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
                raise InvalidArgument(f"{what}: topology value {value[:80]!r} of {key!r} is not a valid label value")


def describe_segments(segments: tuple[Segment, ...], shown: int = 3) -> str:
    """Segments for a message: the first few, and how many more."""
    text = "; ".join(",".join(f"{k}={v}" for k, v in sorted(seg.items())) for seg in segments[:shown])
    return text + (f"; and {len(segments) - shown} more" if len(segments) > shown else "")


@dataclass(frozen=True)
class CreateRequest:
    name: str
    required_bytes: int
    limit_bytes: int
    parameters: Mapping[str, str]
    capabilities: tuple[Capability, ...]
    requisite: tuple[Segment, ...] = ()
    preferred: tuple[Segment, ...] = ()
    has_content_source: bool = False
    source_volume: str = ""  # the volume to clone (VolumeContentSource.volume), when that is the source
    has_mutable_parameters: bool = False
    source_snapshot: str = ""  # the snapshot to restore (VolumeContentSource.snapshot), when that is the source


@dataclass(frozen=True)
class CreatedVolume:
    volume_id: str
    capacity: int
    node: str
    pool: str
    context: Mapping[str, str] = field(default_factory=dict)
    source_volume: str = ""
    source_snapshot: str = ""
