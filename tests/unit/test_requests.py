"""Validation of CSI requests, names and quantities (pure functions)."""

from __future__ import annotations

import pytest

from csidriver.api import naming
from csidriver.api.quantity import parse_quantity
from csidriver.config import Role, SettingsError, parse_settings
from csidriver.services.errors import InvalidArgument, OutOfRange
from csidriver.services.requests import AccessMode, Capability, capability_problem, parse_params, volume_size
from scheduler import Policy

MIB = 1 << 20


@pytest.mark.parametrize(
    ("params", "pool", "policy"),
    [
        ({"devname": "ssd"}, "ssd", Policy.CAPACITY_WEIGHTED),
        ({"DevName": "ssd", "SCHEDULER": "volumeweighted"}, "ssd", Policy.VOLUME_WEIGHTED),
        ({"devname": "a.b_c-9", "scheduler": "FreeCapacityWeighted"}, "a.b_c-9", Policy.FREE_CAPACITY_WEIGHTED),
        ({"devname": "ssd", "csi.storage.k8s.io/pvc/name": "x"}, "ssd", Policy.CAPACITY_WEIGHTED),
    ],
)
def test_params_accepted(params: dict[str, str], pool: str, policy: Policy) -> None:
    got = parse_params(params)
    assert (got.pool, got.policy) == (pool, policy)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"devname": "ssd", "fsType": "ext4"},
            "unknown parameter 'fsType'; valid parameters are: devname, scheduler, placement",
        ),
        ({}, "parameter 'devname' (the pool name) is required"),
        ({"devname": "a" * 37}, "is invalid"),
        ({"devname": "ssd two"}, "is invalid"),
        ({"devname": "ssd", "scheduler": "x"}, "valid values are: CapacityWeighted, VolumeWeighted"),
        ({"devname": "ssd", "Devname": "ssd"}, "given twice"),
    ],
)
def test_params_rejected(params: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_params(params)


@pytest.mark.parametrize(
    ("required", "limit", "size"),
    [
        (0, 0, 1 << 30),
        (1, 0, MIB),
        (MIB, 0, MIB),
        (MIB + 1, 0, 2 * MIB),
        (0, 5 * MIB, 5 * MIB),
        (3 * MIB, 3 * MIB, 3 * MIB),
    ],
)
def test_sizes(required: int, limit: int, size: int) -> None:
    assert volume_size(required, limit) == size


@pytest.mark.parametrize(
    ("required", "limit", "error"),
    [(2 * MIB, MIB, OutOfRange), (MIB + 1, MIB + 2, OutOfRange), (0, MIB - 1, OutOfRange), (-1, 0, InvalidArgument)],
)
def test_bad_sizes(required: int, limit: int, error: type[Exception]) -> None:
    with pytest.raises(error):
        volume_size(required, limit)


@pytest.mark.parametrize(
    ("cap", "problem"),
    [
        (Capability(False, AccessMode.SINGLE_NODE_WRITER, "xfs"), None),
        (Capability(True, AccessMode.SINGLE_NODE_READER_ONLY), None),
        (Capability(False, AccessMode.MULTI_NODE_MULTI_WRITER), "not supported"),
        (Capability(False, AccessMode.UNKNOWN), "not supported"),
        (Capability(False, AccessMode.SINGLE_NODE_WRITER, "zfs"), "filesystem 'zfs'"),
        (Capability(False, AccessMode.SINGLE_NODE_WRITER, "", ("noatime", "discard")), None),
        (Capability(False, AccessMode.SINGLE_NODE_WRITER, "", ("a,b",)), "mount flag"),
        (Capability(False, AccessMode.SINGLE_NODE_WRITER, "", ("--bind",)), "mount flag"),
    ],
)
def test_capabilities(cap: Capability, problem: str | None) -> None:
    got = capability_problem(cap)
    assert (got is None) if problem is None else (got is not None and problem in got)


@pytest.mark.parametrize(
    ("csi_name", "object_name", "partition"),
    [
        (
            "pvc-0d3c5e1a-2b4f-4c6d-8e9f-a0b1c2d3e4f5",
            "pvc-0d3c5e1a-2b4f-4c6d-8e9f-a0b1c2d3e4f5",
            "0d3c5e1a-2b4f-4c6d-8e9f-a0b1c2d3e4f5",
        ),
        ("sanity-volume", "sanity-volume", None),
        ("Upper", None, None),
        ("x" * 254, None, None),
    ],
)
def test_naming(csi_name: str, object_name: str | None, partition: str | None) -> None:
    name = naming.object_name(csi_name)
    if object_name is None:
        assert name.startswith("vol-") and len(name) == 40 and naming.is_valid_volume_id(name)
        assert name == naming.object_name(csi_name) != naming.object_name(csi_name + "x")
    else:
        assert name == object_name
    pname = naming.partition_name(name)
    assert len(pname) == 36
    if partition is not None:
        assert pname == partition


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1024", 1024),
        (7, 7),
        ("1Ki", 1024),
        ("1Gi", 1 << 30),
        ("1.5Mi", 3 << 19),
        ("1k", 1000),
        ("1e3", 1000),
        ("0.5", 1),
    ],
)
def test_quantity(text: object, value: int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "abc", "1Zi", "--1", True])
def test_bad_quantity(text: object) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)


def test_settings_flags_win_over_environment() -> None:
    s = parse_settings(
        ["agent", "--node-id", "n1", "--topology-labels", "b, a,,a"],
        {"OPENEBS_NODE_ID": "env", "DEVICE_DRIVER_NAMESPACE": "ns", "WORKERS": "4"},
    )
    assert (s.role, s.node_id, s.namespace, s.workers) == (Role.AGENT, "n1", "ns", 4)
    assert s.topology_labels == ("a", "b")
    assert s.socket_path == "/var/lib/kubelet/plugins/device-localpv/csi.sock"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["agent"], {}, "--node-id"),
        (["controller", "--endpoint", "tcp://x:1"], {}, "unix://"),
        (["controller", "--include-devices-regex", "("], {}, "invalid regular expression"),
        (["controller"], {"WORKERS": "0"}, "must be >= 1"),
        (["controller"], {"KUBE_API_QPS": "fast"}, "not a number"),
    ],
)
def test_settings_errors(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        parse_settings(argv, env)
