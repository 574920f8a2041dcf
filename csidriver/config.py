"""Process settings: read once from flags and environment into a frozen dataclass, then passed down."""

from __future__ import annotations

import argparse
import enum
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_DRIVER_NAME = "device.csi.openebs.io"
DEFAULT_NAMESPACE = "openebs"
DEFAULT_AGENT_ENDPOINT = "unix:///var/lib/kubelet/plugins/device-localpv/csi.sock"
DEFAULT_CONTROLLER_ENDPOINT = "unix:///var/lib/csi/sockets/pluginproxy/csi.sock"


class Role(enum.Enum):
    CONTROLLER = "controller"
    AGENT = "agent"


class SettingsError(ValueError):
    """A flag or environment variable has a value the driver cannot run with."""


@dataclass(frozen=True)
class Settings:
    role: Role
    driver_name: str
    endpoint: str
    node_id: str
    namespace: str
    kubeconfig: str | None
    include_devices_regex: str | None
    ignore_devices_regex: str | None
    metrics_address: str | None
    topology_labels: tuple[str, ...]
    resync_seconds: float
    create_timeout_seconds: float
    kube_qps: float
    kube_burst: int
    lock_dir: str
    workers: int
    log_level: str
    max_deletions: int
    deletion_window_seconds: float
    leader_election: bool
    lease_seconds: float
    identity: str
    registration_dir: str | None
    lease_writer: str  # "driver": elect on the Lease; "sidecar": follow the Lease csi-provisioner writes
    publish_roots: tuple[str, ...] = ()  # NodePublish/Unpublish targets must lie under one of these directories
    heartbeat_seconds: float = 10.0  # the agent renews its heartbeat Lease this often (it lasts 4 periods)
    default_fstype: str = "ext4"  # the filesystem a mount capability that names none gets
    inventory_write_seconds: float = 5.0  # the DeviceNode shows new partitions at most this long after they are made

    @property
    def socket_path(self) -> str:
        return self.endpoint.removeprefix("unix://")


# flag name -> (environment variable, default)
_ENV: Mapping[str, tuple[str, str]] = {
    "driver_name": ("CSI_DRIVER_NAME", DEFAULT_DRIVER_NAME),
    "endpoint": ("CSI_ENDPOINT", ""),
    "node_id": ("OPENEBS_NODE_ID", ""),
    "namespace": ("DEVICE_DRIVER_NAMESPACE", DEFAULT_NAMESPACE),
    "kubeconfig": ("KUBECONFIG", ""),
    "include_devices_regex": ("DEVICE_INCLUDE_REGEX", ""),
    "ignore_devices_regex": ("IGNORE_BLOCK_DEVICES_REGEX", ""),
    "metrics_address": ("METRICS_ADDRESS", ""),
    "topology_labels": ("ALLOWED_TOPOLOGY_LABELS", ""),
    "resync_seconds": ("RESYNC_SECONDS", "300"),
    "create_timeout_seconds": ("CREATE_TIMEOUT_SECONDS", "60"),
    "kube_qps": ("KUBE_API_QPS", "50"),
    "kube_burst": ("KUBE_API_BURST", "100"),
    "lock_dir": ("LOCK_DIR", "/run/device-localpv/locks"),
    "workers": ("WORKERS", "128"),
    "log_level": ("LOG_LEVEL", "INFO"),
    "max_deletions": ("MAX_DELETIONS", "120"),
    "deletion_window_seconds": ("DELETION_WINDOW_SECONDS", "60"),
    "leader_election": ("LEADER_ELECTION", "true"),
    "lease_seconds": ("LEASE_SECONDS", "15"),
    "identity": ("POD_NAME", ""),
    "registration_dir": ("KUBELET_REGISTRATION_DIR", ""),
    "lease_writer": ("LEASE_WRITER", "driver"),
    # Where kubelet puts publish targets: mount targets under pods/, raw block targets under plugins/kubernetes.io/csi.
    "heartbeat_seconds": ("HEARTBEAT_SECONDS", "10"),
    "default_fstype": ("DEFAULT_FSTYPE", "ext4"),
    "inventory_write_seconds": ("INVENTORY_WRITE_SECONDS", "5"),
    "publish_roots": ("PUBLISH_ROOTS", "/var/lib/kubelet/pods,/var/lib/kubelet/plugins/kubernetes.io/csi"),
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="device-localpv", description="Device-LocalPV CSI driver")
    p.add_argument("role", choices=[r.value for r in Role], help="which process to run")
    for name in _ENV:
        env, default = _ENV[name]
        p.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=f"(env {env}, default {default!r})")
    return p


def _check_regex(name: str, value: str | None) -> None:
    if value is None:
        return
    try:
        re.compile(value)
    except re.error as e:
        raise SettingsError(f"--{name.replace('_', '-')}: invalid regular expression {value!r}: {e}") from e


def _number(name: str, value: str, kind: type[float] | type[int], minimum: float) -> float:
    try:
        n = kind(value)
    except ValueError as e:
        raise SettingsError(f"--{name.replace('_', '-')}: not a number: {value!r}") from e
    if n < minimum:
        raise SettingsError(f"--{name.replace('_', '-')}: must be >= {minimum}, got {value}")
    return n


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"--{name.replace('_', '-')}: expected one of {', '.join(allowed)}, got {value!r}")
    return value


def _flag(name: str, value: str) -> bool:
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise SettingsError(f"--{name.replace('_', '-')}: expected true or false, got {value!r}")


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Flags win over environment variables, which win over defaults."""
    ns = _parser().parse_args(list(argv))
    raw: dict[str, str] = {}
    for name, (env, default) in _ENV.items():
        flag = getattr(ns, name)
        raw[name] = flag if flag is not None else environ.get(env, default)
    role = Role(ns.role)

    def opt(name: str) -> str | None:
        return raw[name] or None

    for key in ("include_devices_regex", "ignore_devices_regex"):
        _check_regex(key, opt(key))
    endpoint = raw["endpoint"] or (DEFAULT_AGENT_ENDPOINT if role is Role.AGENT else DEFAULT_CONTROLLER_ENDPOINT)
    if not endpoint.startswith("unix://") or len(endpoint) <= len("unix://"):
        raise SettingsError(f"--endpoint: only unix:// sockets are supported, got {endpoint!r}")
    if role is Role.AGENT and not raw["node_id"]:
        raise SettingsError("--node-id (env OPENEBS_NODE_ID) is required for the agent")
    labels = tuple(sorted({x.strip() for x in raw["topology_labels"].split(",") if x.strip()}))
    roots = tuple(r.strip().rstrip("/") for r in raw["publish_roots"].split(",") if r.strip())
    for r in roots:
        if not r.startswith("/") or os.path.normpath(r) != r:
            raise SettingsError(f"--publish-roots: {r!r} is not an absolute, normalised directory")
    if role is Role.AGENT and not roots:
        raise SettingsError("--publish-roots (env PUBLISH_ROOTS) must name at least one directory")
    return Settings(
        role=role,
        driver_name=raw["driver_name"],
        endpoint=endpoint,
        node_id=raw["node_id"],
        namespace=raw["namespace"],
        kubeconfig=opt("kubeconfig"),
        include_devices_regex=opt("include_devices_regex"),
        ignore_devices_regex=opt("ignore_devices_regex"),
        metrics_address=opt("metrics_address"),
        topology_labels=labels,
        resync_seconds=_number("resync_seconds", raw["resync_seconds"], float, 1),
        create_timeout_seconds=_number("create_timeout_seconds", raw["create_timeout_seconds"], float, 1),
        kube_qps=_number("kube_qps", raw["kube_qps"], float, 0.1),
        kube_burst=int(_number("kube_burst", raw["kube_burst"], int, 1)),
        lock_dir=raw["lock_dir"],
        workers=int(_number("workers", raw["workers"], int, 1)),
        log_level=raw["log_level"].upper(),
        max_deletions=int(_number("max_deletions", raw["max_deletions"], int, 0)),
        deletion_window_seconds=_number("deletion_window_seconds", raw["deletion_window_seconds"], float, 1),
        leader_election=_flag("leader_election", raw["leader_election"]),
        lease_seconds=_number("lease_seconds", raw["lease_seconds"], float, 3),
        identity=raw["identity"] or socket.gethostname(),
        registration_dir=opt("registration_dir"),
        lease_writer=_choice("lease_writer", raw["lease_writer"], ("driver", "sidecar")),
        publish_roots=roots,
        heartbeat_seconds=_number("heartbeat_seconds", raw["heartbeat_seconds"], float, 0.5),
        default_fstype=_choice("default_fstype", raw["default_fstype"], ("ext4", "xfs", "btrfs")),
        inventory_write_seconds=_number("inventory_write_seconds", raw["inventory_write_seconds"], float, 0),
    )


def from_process(argv: Sequence[str]) -> Settings:
    return parse_settings(argv, os.environ)
