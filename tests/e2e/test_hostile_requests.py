"""Hostile requests, RPC by RPC, against the real processes: each gets its exact code and a message that says what
is wrong, and nothing is written.

One table row per request. Every row checks, besides its code and words:
- never UNKNOWN or INTERNAL; the message is at most 4 KiB and holds no control characters (it reaches users through
  Events and terminals); no secret sent in the request appears in the message or in any log;
- the processes are alive and answer Probe afterwards;
- nothing was written: the partition tables of every disk the agents see, the DeviceVolume, DeviceNode and Lease
  objects, the mounts of the test's disks and under the publish root, the files under the publish root, /etc and a
  directory outside the root are all as they were; and the logs grew by at most 64 KiB (a 1 MiB id is not logged
  whole).

An RPC whose capability the driver does not advertise must answer UNIMPLEMENTED, whatever the request; a row whose
expectation needs a capability (expansion, cloning) states what is expected while that capability is not advertised.
Classes of requests that tests/e2e/test_bad_input.py and tests/e2e/test_csi_surface.py cover are not repeated here.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVarTuple

import grpc
import pytest
from google.protobuf.message import Message

from csidriver.csi import csi_pb2
from harness.csi import AM, MIB, POOL, create, delete, mount_cap, publish, unpublish
from harness.disks import Partition, partitions
from harness.driver import Process
from tests.conftest import NODE, Cluster
from tests.e2e.test_plugin import plugin

C = grpc.StatusCode
OK, IA, NF, FP, AE = C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION, C.ALREADY_EXISTS
OOR, RE, UN, AB = C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED, C.UNIMPLEMENTED, C.ABORTED
NODE_B = "node-hostile"  # a second node with its own agent and disk: home of the "volume on another node"
TOPO = "openebs.io/nodename"
DRIVER = "device.csi.openebs.io"
HUGE = "h" * MIB  # a 1 MiB string: 8192 times the 128 bytes the CSI spec allows a string field
OVERSIZED = "o" * (5 * MIB)  # more than gRPC's default 4 MiB receive limit
INT64_MAX = (1 << 63) - 1
SECRET = f"dlpv-secret-{uuid.uuid4()}"  # must never appear in a message or a log
CYR_E, CYR_O, CYR_A, CYR_S, CYR_ER = "\u0435", "\u043e", "\u0430", "\u0455", "\u0440"  # Cyrillic e, o, a, dze, er

# mount(8) options the policy refuses (docs/operations.md), each with a word its refusal must name.
REFUSED_FLAGS = [
    ("loop", "loop"),
    ("offset=0", "offset"),
    ("sizelimit=1", "sizelimit"),
    ("X-mount.mkdir", "X-mount.mkdir"),
    ("x-systemd.automount", "x-systemd.automount"),
    ("errors=panic", "errors=panic"),
    ("dev", "dev"),
    ("suid", "suid"),
    ("bind", "bind"),
    ("rbind", "rbind"),
    ("remount", "remount"),
    ("move", "move"),
    ("user", "user"),
    ("owner", "owner"),
    ("context=x", "context=x"),
    ("-o", "-o"),
    ("a,b", "a,b"),
    ("", "mount flag"),
    ("noatime\0,suid", "mount flag"),
    ("noatime\nsuid", "mount flag"),
    ("n" + CYR_O + "atime", "mount flag"),  # a look-alike of noatime
    ("noatime" * (MIB // 7), "mount flag"),
]
# Refused for one filesystem although another takes them.
WRONG_FS_FLAGS = [("ext4", "logbufs=8", "logbufs"), ("xfs", "commit=30", "commit"), ("ext4", "commit=-1", "commit")]


# -- the environment -------------------------------------------------------------------------------------------


@dataclass
class Env:
    cluster: Cluster
    channels: dict[str, grpc.Channel]
    vol: Any  # a Ready volume on NODE, formatted ext4, published at `published`
    remote: Any  # a Ready volume on NODE_B
    agent_b: Process
    disk_b: str
    dir: Path  # under the publish root: prepared hostile entries
    published: str
    outside: Path  # a directory outside the publish root
    advertised: set[str]  # capability names the driver advertises (controller, node and plugin)

    @property
    def root(self) -> Path:
        return self.cluster.workdir

    def target(self, name: str) -> str:
        return str(self.dir / name)

    def processes(self) -> list[Process]:
        return [
            self.cluster.driver.processes["controller"],
            self.cluster.driver.processes["agent-" + NODE],
            self.agent_b,
        ]


def _stub_call(ch: grpc.Channel, service: str, method: str, request: Message | bytes, timeout: float = 60) -> Any:
    desc = csi_pb2.DESCRIPTOR.services_by_name[service].methods_by_name[method]
    response = getattr(csi_pb2, desc.output_type.name)
    call = ch.unary_unary(
        f"/csi.v1.{service}/{method}",
        request_serializer=lambda r: r if isinstance(r, bytes) else r.SerializeToString(),
        response_deserializer=response.FromString,
    )
    return call(request, timeout=timeout)


def _advertised(channels: dict[str, grpc.Channel]) -> set[str]:
    names: set[str] = set()
    ctl = _stub_call(channels["controller"], "Controller", "ControllerGetCapabilities", b"")
    names |= {"controller:" + csi_pb2.ControllerServiceCapability.RPC.Type.Name(c.rpc.type) for c in ctl.capabilities}
    node = _stub_call(channels["node"], "Node", "NodeGetCapabilities", b"")
    names |= {"node:" + csi_pb2.NodeServiceCapability.RPC.Type.Name(c.rpc.type) for c in node.capabilities}
    plug = _stub_call(channels["controller"], "Identity", "GetPluginCapabilities", b"")
    names |= {"plugin:" + csi_pb2.PluginCapability.Service.Type.Name(c.service.type) for c in plug.capabilities}
    return names


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture(scope="module")
def env(cluster: Cluster) -> Iterator[Env]:
    channels = {
        "controller": grpc.insecure_channel(f"unix://{cluster.driver.processes['controller'].socket}"),
        "node": grpc.insecure_channel(f"unix://{cluster.driver.processes['agent-' + NODE].socket}"),
    }
    cluster.api.add_node(NODE_B)
    disk_b = cluster.disks.pool(POOL, 64)
    agent_b = cluster.driver.agent(NODE_B, [disk_b.device])
    d = cluster.workdir / "hostile"
    outside = Path(tempfile.mkdtemp(prefix="dlpv-hostile-outside-"))
    vol = remote = None
    published = str(d / "published")
    try:
        agent_b.wait_ready()
        vol = create(channels["controller"], f"pvc-{uuid.uuid4()}", 8 * MIB, requisite=[{TOPO: NODE}])
        remote = create(channels["controller"], f"pvc-{uuid.uuid4()}", 8 * MIB, requisite=[{TOPO: NODE_B}])
        d.mkdir()
        e = Env(cluster, channels, vol, remote, agent_b, disk_b.device, d, published, outside, _advertised(channels))
        _prepare(e)
        yield e
    finally:
        subprocess.run(["umount", str(d / "foreign")], check=False, capture_output=True)
        if vol is not None:
            unpublish(channels["node"], vol.volume_id, published)
            delete(channels["controller"], vol.volume_id)
        if remote is not None:
            delete(channels["controller"], remote.volume_id)
        agent_b.stop()
        plugin(cluster, "release-node", NODE_B, "--reason", "hostile request test done")
        cluster.api.kubectl("delete", "node", NODE_B, "--ignore-not-found")
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(outside, ignore_errors=True)
        for ch in channels.values():
            ch.close()


# -- what "nothing was written" means ----------------------------------------------------------------------------


def _tree(path: Path) -> dict[str, str]:
    """Every entry under `path` (symbolic links not followed): its type and content or link target."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[p] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                out[p] = "file:" + Path(p).read_bytes()[:4096].hex()
            elif stat.S_ISDIR(st.st_mode):
                out[p] = "dir"
            else:
                out[p] = f"mode:{stat.S_IFMT(st.st_mode)}"
    return out


def _mounts(env: Env) -> set[tuple[str, ...]]:
    """Mounts under the publish root, over the usual victims (/, /etc, /proc, /tmp) or of the test's disks."""
    disks = [*(d.device for d in env.cluster.pool_disks), env.cluster.lookalike.device, env.disk_b]
    ours = {os.path.basename(d) for d in disks}
    found: set[tuple[str, ...]] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        point = fields[4]
        source = fields[fields.index("-") + 2]
        if (
            point.startswith(str(env.root) + "/")
            or point in ("/", "/etc", "/proc", "/tmp")
            or re.sub(r"^(loop[0-9]+)p[0-9]+$", r"\1", os.path.basename(source)) in ours
        ):
            found.add((fields[0], point, source, fields[5]))
    return found


def _objects(env: Env) -> dict[str, str]:
    raw = env.cluster.api.kubectl(
        "get", "devicevolumes,devicesnapshots,devicenodes,leases", "-n", "openebs", "-o", "json"
    )
    out = {}
    for item in json.loads(raw)["items"]:
        meta = item["metadata"]
        key = f"{item['kind']}/{meta['name']}"
        if item["kind"] == "DeviceVolume":
            state = json.dumps(
                [item.get("spec"), (item.get("status") or {}).get("state"), meta.get("deletionTimestamp")]
            )
            out[key] = state
        else:
            out[key] = ""
    return out


def _layout(env: Env) -> dict[str, list[Partition]]:
    disks = [d.device for d in env.cluster.pool_disks] + [env.cluster.lookalike.device, env.disk_b]
    return {d: partitions(d) for d in disks}


@dataclass
class Snapshot:
    layout: dict[str, list[Partition]]
    objects: dict[str, str]
    mounts: set[tuple[str, ...]]
    tree: dict[str, str]
    etc: list[str]
    logs: dict[str, int]

    @staticmethod
    def take(env: Env) -> Snapshot:
        return Snapshot(
            _layout(env),
            _objects(env),
            _mounts(env),
            {**_tree(env.dir), **_tree(env.outside)},
            sorted(os.listdir("/etc")),
            {p.name: p.log.stat().st_size for p in env.processes()},
        )


def _changes(env: Env, before: Snapshot) -> list[str]:
    """What differs from `before`, and that each process is alive and ready."""
    problems = []
    after = Snapshot.take(env)
    if after.layout != before.layout:
        problems.append(f"partition tables changed: {before.layout} -> {after.layout}")
    for key in sorted(set(before.objects) | set(after.objects)):
        if before.objects.get(key) != after.objects.get(key):
            problems.append(f"{key} changed: {before.objects.get(key)} -> {after.objects.get(key)}")
    for m in sorted(after.mounts - before.mounts):
        problems.append(f"mount added: {m}")
    for m in sorted(before.mounts - after.mounts):
        problems.append(f"mount removed: {m}")
    for p in sorted(set(before.tree) | set(after.tree)):
        if before.tree.get(p) != after.tree.get(p):
            problems.append(f"{p}: {before.tree.get(p, 'absent')[:40]} -> {after.tree.get(p, 'absent')[:40]}")
    if after.etc != before.etc:
        problems.append("/etc changed")
    for proc in env.processes():
        grown = proc.log.stat().st_size - before.logs[proc.name]
        with proc.log.open("rb") as f:
            f.seek(before.logs[proc.name])
            new = f.read()
        if grown > 64 * 1024:
            problems.append(f"log of {proc.name} grew by {grown} bytes")
        if SECRET.encode() in new:
            problems.append(f"log of {proc.name} holds the secret")
        if proc.proc is None or proc.proc.poll() is not None:
            problems.append(f"{proc.name} exited")
            continue
        with grpc.insecure_channel(f"unix://{proc.socket}") as ch:
            try:
                if not _stub_call(ch, "Identity", "Probe", b"", timeout=10).ready.value:
                    problems.append(f"{proc.name} is not ready")
            except grpc.RpcError as e:
                problems.append(f"{proc.name} Probe: {e.code().name} {e.details()}")
    return problems


def _prepare(env: Env) -> None:
    """The hostile entries under the publish root, made again where a wrongly accepted request removed them."""
    d = env.dir
    if env.published not in {m[1] for m in _mounts(env)}:
        publish(env.channels["node"], env.vol, env.published, mount_cap("ext4"))  # formats it the first time
    for link, to in [
        ("to-etc", "/etc"),
        ("to-root", "/"),
        ("to-outside", str(env.outside)),
        ("loop-a", str(d / "loop-b")),
        ("loop-b", str(d / "loop-a")),
        ("dangling", "/nonexistent-dlpv-hostile"),
    ]:
        if not os.path.lexists(d / link):
            os.symlink(to, d / link)
    (d / "full-dir").mkdir(exist_ok=True)
    if not os.path.lexists(d / "fifo"):
        os.mkfifo(d / "fifo")
    (d / "foreign").mkdir(exist_ok=True)
    if str(d / "foreign") not in {m[1] for m in _mounts(env)}:
        _sh("mount", "-t", "tmpfs", "-o", "size=1m", "dlpv-foreign", str(d / "foreign"))
    for path in (env.outside / "keep", d / "full-dir" / "keep", d / "file", d / "foreign" / "keep"):
        if not path.exists() or path.read_text() != "keep":
            path.write_text("keep")


def _undo(env: Env, before: Snapshot) -> None:
    """Undo what a wrongly accepted request did, so one failure does not spill into the next rows."""
    for _, point, _, _ in sorted(_mounts(env) - before.mounts, key=lambda m: -m[1].count("/")):
        subprocess.run(["umount", point], check=False, capture_output=True)
    for p in sorted(set(_tree(env.dir)) - set(before.tree), key=lambda p: -p.count("/")):
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            Path(p).unlink(missing_ok=True)
    _prepare(env)


# -- building requests ---------------------------------------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        out += bytes([low | (0x80 if n else 0)])
        if not n:
            return out


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, as it travels on the wire."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


UNKNOWN_FIELDS = _field(99, b"x" * MIB) + _field(2047, b"\0" * 64)  # fields of no version of the spec


def _both_block_and_mount(flag: str) -> bytes:
    """A VolumeCapability with both access types on the wire (a oneof): block first, then a mount with `flag`. The
    last one wins when parsed, so the refused flag must still be seen."""
    mount = csi_pb2.VolumeCapability.MountVolume(fs_type="ext4", mount_flags=[flag]).SerializeToString()
    mode = AM(mode=AM.SINGLE_NODE_WRITER).SerializeToString()
    return _field(1, b"") + _field(2, mount) + _field(3, mode)


def _with_field(msg: Message, name: str, payload: bytes) -> bytes:
    return msg.SerializeToString() + _field(msg.DESCRIPTOR.fields_by_name[name].number, payload)


def _no_access_type() -> Any:
    return csi_pb2.VolumeCapability(access_mode=AM(mode=AM.SINGLE_NODE_WRITER))


def _cap_mode(mode: int) -> Any:
    """A mount capability whose access mode is `mode` as the wire carries it, also a number no Mode names."""
    access_mode = AM.FromString(_varint(1 << 3) + _varint(mode))  # field 1, a varint
    return csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume(), access_mode=access_mode)


def _lookalike(volume_id: str) -> str:
    return volume_id.replace("c", "\u0441", 1)  # Cyrillic es in "pvc"


def _fullwidth(volume_id: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "0" <= c <= "9" else c for c in volume_id)


def _from_snapshot(snapshot_id: str) -> Any:
    return csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id))


def _from_volume(volume_id: str) -> Any:
    return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id))


def cv(
    name: str | None = None,
    cap: Any = None,
    caps: list[Any] | None = None,
    params: dict[str, str] | None = None,
    required: int = MIB,
    limit: int = 0,
    requisite: list[dict[str, str]] | None = None,
    preferred: list[dict[str, str]] | None = None,
    **extra: Any,
) -> Any:
    return csi_pb2.CreateVolumeRequest(
        name=f"pvc-{uuid.uuid4()}" if name is None else name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit),
        volume_capabilities=[cap or mount_cap()] if caps is None else caps,
        parameters={"devname": POOL} if params is None else params,
        accessibility_requirements=csi_pb2.TopologyRequirement(
            requisite=[csi_pb2.Topology(segments=s) for s in requisite or []],
            preferred=[csi_pb2.Topology(segments=s) for s in preferred or []],
        ),
        **extra,
    )


def npv(env: Env, vid: str | None = None, target: str = "", cap: Any = None, **extra: Any) -> Any:
    vol_id = env.vol.volume_id if vid is None else vid
    return csi_pb2.NodePublishVolumeRequest(
        volume_id=vol_id,
        target_path=target,
        volume_capability=cap or mount_cap("ext4"),
        volume_context=dict(env.vol.volume_context) if vol_id == env.vol.volume_id else {},
        **extra,
    )


# -- the table -----------------------------------------------------------------------------------------------------

Build = Callable[[Env, str], "Message | bytes"]  # (environment, a fresh target path under the root) -> request
Check = Callable[[Env, Any], "str | None"]  # on an OK response: what is wrong with it, or None


@dataclass(frozen=True)
class Case:
    service: str
    rpc: str
    name: str
    build: Build
    code: grpc.StatusCode
    words: tuple[str, ...] = ()
    endpoint: str = ""  # "controller" or "node"; by default the one serving the service
    needs: str = ""  # the capability this expectation needs ("controller:EXPAND_VOLUME"); see `fallback`
    check: Check | None = None
    # What the row expects while `needs` is not advertised: by default UNIMPLEMENTED ("not supported").
    fallback: tuple[grpc.StatusCode, tuple[str, ...]] | None = None

    @property
    def id(self) -> str:
        where = f"@{self.endpoint}" if self.endpoint else ""
        return f"{self.rpc}{where}-{self.name}"

    def where(self) -> str:
        if self.endpoint:
            return self.endpoint
        return "node" if self.service == "Node" else "controller"


CASES: list[Case] = []


def row(
    service: str,
    rpc: str,
    name: str,
    build: Build,
    code: grpc.StatusCode,
    *words: str,
    endpoint: str = "",
    needs: str = "",
    check: Check | None = None,
    fallback: tuple[grpc.StatusCode, tuple[str, ...]] | None = None,
) -> None:
    CASES.append(Case(service, rpc, name, build, code, words, endpoint, needs, check, fallback))


Ts = TypeVarTuple("Ts")


def _bind(make: Callable[[Env, str, *Ts], Message | bytes], *values: *Ts) -> Build:
    """A row's build from `make` with `values` fixed now, for rows made in a loop: a lambda reading the loop's
    variables when the row runs would see their last values."""
    return lambda env, t: make(env, t, *values)


def _expect(pred: Callable[[Env, Any], bool], what: str) -> Check:
    return lambda env, r: None if pred(env, r) else f"{what}; got {r}"


def unconfirmed(*words: str) -> Check:
    """ValidateVolumeCapabilities answers OK without `confirmed`, with a message naming what is not supported."""

    def check(env: Env, r: Any) -> str | None:
        if r.HasField("confirmed"):
            return f"confirmed although it cannot be served: {r}"
        missing = [w for w in words if w.lower() not in r.message.lower()]
        return f"message {r.message!r} lacks {missing}" if missing else _message_problem(r.message)

    return check


NO_CAPACITY = _expect(lambda env, r: r.available_capacity == 0, "a pool that cannot serve this has no capacity")

# Identity: both processes serve it; a request carrying fields of no spec version is answered as usual.
for where in ("controller", "node"):
    row(
        "Identity",
        "GetPluginInfo",
        "unknown-fields",
        lambda env, t: UNKNOWN_FIELDS,
        OK,
        endpoint=where,
        check=_expect(lambda env, r: r.name == DRIVER and bool(r.vendor_version), "name and version"),
    )
    row(
        "Identity",
        "GetPluginCapabilities",
        "unknown-fields",
        lambda env, t: UNKNOWN_FIELDS,
        OK,
        endpoint=where,
        check=_expect(lambda env, r: len(r.capabilities) > 0, "capabilities"),
    )
    row(
        "Identity",
        "Probe",
        "unknown-fields",
        lambda env, t: UNKNOWN_FIELDS,
        OK,
        endpoint=where,
        check=_expect(lambda env, r: r.ready.value, "ready"),
    )

# CreateVolume ------------------------------------------------------------------------------------------------------
CV = ("Controller", "CreateVolume")
row(*CV, "name-nul", lambda env, t: cv(name="pvc-\0" + str(uuid.uuid4())), IA, "name")
row(*CV, "name-escape-sequence", lambda env, t: cv(name="pvc-\x1b[2J" + str(uuid.uuid4())), IA, "name")
row(*CV, "name-c1-control", lambda env, t: cv(name="pvc-\x85" + str(uuid.uuid4())), IA, "name")
row(*CV, "name-1MiB", lambda env, t: cv(name=HUGE), IA, "name")
row(*CV, "name-5MiB", lambda env, t: cv(name=OVERSIZED), RE, "larger than")
row(*CV, "cap-no-access-type", lambda env, t: cv(cap=_no_access_type()), IA, "access type")
row(*CV, "cap-no-access-mode", lambda env, t: cv(cap=_cap_mode(AM.UNKNOWN)), IA, "access mode")
row(*CV, "cap-access-mode-99", lambda env, t: cv(cap=_cap_mode(99)), IA, "access mode")
row(
    *CV,
    "cap-block-and-mount-on-the-wire",
    lambda env, t: _with_field(cv(caps=[]), "volume_capabilities", _both_block_and_mount("loop")),
    IA,
    "loop",
)
row(
    *CV,
    "caps-third-refused",
    lambda env, t: cv(caps=[mount_cap("ext4"), mount_cap("ext4", flags=("noatime",)), mount_cap(flags=("suid",))]),
    IA,
    "suid",
)
for label, fs, word in [
    ("fs-upper-case", "EXT4", "EXT4"),
    ("fs-lookalike", CYR_E + "xt4", "not supported"),
    ("fs-nul", "ext4\0", "filesystem type"),
    ("fs-path", "../ext4", "not supported"),
    ("fs-with-options", "ext4 -o loop", "not supported"),
    ("fs-tmpfs", "tmpfs", "tmpfs"),
    ("fs-1MiB", HUGE, "filesystem type"),
]:
    row(*CV, label, _bind(lambda env, t, fs: cv(cap=mount_cap(fs)), fs), IA, word)
for flag, word in REFUSED_FLAGS:
    row(*CV, f"flag-{flag[:24]!a}", _bind(lambda env, t, f: cv(cap=mount_cap(flags=(f,))), flag), IA, word)
for fs, flag, word in WRONG_FS_FLAGS:
    row(
        *CV,
        f"flag-{flag}-on-{fs}",
        _bind(lambda env, t, fs, f: cv(cap=mount_cap(fs, flags=(f,))), fs, flag),
        IA,
        word,
    )
row(*CV, "required-negative", lambda env, t: cv(required=-1), IA, "negative")
row(*CV, "limit-negative", lambda env, t: cv(required=MIB, limit=-MIB), IA, "negative")
row(*CV, "required-int64-min", lambda env, t: cv(required=-(1 << 63)), IA, "negative")
row(*CV, "limit-below-enormous", lambda env, t: cv(required=INT64_MAX, limit=1 << 62), OOR, "limit_bytes")
row(*CV, "enormous-rounds-past-limit", lambda env, t: cv(required=INT64_MAX, limit=INT64_MAX), OOR, "limit_bytes")
row(*CV, "enormous-beyond-int64", lambda env, t: cv(required=INT64_MAX), OOR, "bytes")
row(*CV, "limit-one-byte", lambda env, t: cv(required=0, limit=1), OOR, "limit_bytes")
row(*CV, "param-nul-key", lambda env, t: cv(params={"devname": POOL, "\0": "x"}), IA, "parameter", "control")
row(*CV, "param-1MiB-key", lambda env, t: cv(params={"devname": POOL, HUGE: "x"}), IA, "parameter", "at most")
row(*CV, "param-1MiB-pool", lambda env, t: cv(params={"devname": HUGE}), IA, "devname", "at most")
row(
    *CV,
    "param-10000-keys",
    lambda env, t: cv(params={"devname": POOL, **{f"k{i}": "v" for i in range(10000)}}),
    IA,
    "devname",
)
row(*CV, "param-lookalike-key", lambda env, t: cv(params={"d" + CYR_E + "vname": POOL}), IA, "devname")
row(*CV, "param-lookalike-pool", lambda env, t: cv(params={"devname": CYR_S + "sd"}), IA, "pool name")
row(*CV, "param-pool-slash", lambda env, t: cv(params={"devname": "ssd/../ssd"}), IA, "pool name")
row(*CV, "param-pool-nul", lambda env, t: cv(params={"devname": "ssd\0"}), IA, "devname", "control")
row(*CV, "param-pool-dotdot", lambda env, t: cv(params={"devname": ".."}), RE, "pools known")
row(
    *CV,
    "param-scheduler-twice",
    lambda env, t: cv(params={"devname": POOL, "Scheduler": "VolumeWeighted", "SCHEDULER": "CapacityWeighted"}),
    IA,
    "twice",
)
row(
    *CV,
    "param-scheduler-1MiB",
    lambda env, t: cv(params={"devname": POOL, "scheduler": HUGE}),
    IA,
    "scheduler",
    "at most",
)
row(
    *CV,
    "mutable-parameters-without-modify",
    lambda env, t: cv(mutable_parameters={"iops": "1000"}),
    IA,
    "mutable",
)
for label, make in [
    ("source-snapshot-nul", lambda env: "snapshot-\0"),
    ("source-snapshot-names-a-volume", lambda env: env.vol.volume_id),
]:
    row(
        *CV,
        label,
        _bind(lambda env, t, m: cv(volume_content_source=_from_snapshot(m(env))), make),
        NF,
        "snapshot",
        needs="controller:CREATE_DELETE_SNAPSHOT",
    )
row(
    *CV,
    "source-snapshot-dotdot",
    lambda env, t: cv(volume_content_source=_from_snapshot("../../snap")),
    NF,
    "snap",
    needs="controller:CREATE_DELETE_SNAPSHOT",
    fallback=(IA, ("source",)),
)
for label, make, required, limit, code, word in [
    ("source-volume-dotdot", lambda env: "../" + env.vol.volume_id, MIB, 0, NF, "source"),
    ("source-volume-lookalike", lambda env: _lookalike(env.vol.volume_id), MIB, 0, NF, "source"),
    ("source-volume-nul", lambda env: env.vol.volume_id + "\0", MIB, 0, NF, "source"),
    ("source-volume-of-another-node-smaller", lambda env: env.remote.volume_id, MIB, 4 * MIB, OOR, "bytes"),
    ("source-volume-smaller", lambda env: env.vol.volume_id, MIB, 4 * MIB, OOR, "bytes"),
]:
    row(
        *CV,
        label,
        _bind(
            lambda env, t, m, r, li: cv(volume_content_source=_from_volume(m(env)), required=r, limit=li),
            make,
            required,
            limit,
        ),
        code,
        word,
        needs="controller:CLONE_VOLUME",
        fallback=(IA, ("source",)),
    )
row(*CV, "topology-unknown-key", lambda env, t: cv(requisite=[{"example.com/zone": "z1"}]), RE, "example.com/zone")
for label, seg in [
    ("topology-key-dotdot", {"../etc": "x"}),
    ("topology-key-nul", {TOPO + "\0": NODE}),
    ("topology-key-lookalike", {"openebs.io/noden" + CYR_A + "me": NODE}),
    ("topology-value-lookalike", {TOPO: "n" + CYR_O + "de-a"}),
    ("topology-value-dotdot", {TOPO: "../" + NODE}),
    ("topology-value-1MiB", {TOPO: HUGE}),
]:
    row(*CV, label, _bind(lambda env, t, s: cv(requisite=[s]), seg), IA, "topology")
row(*CV, "topology-preferred-key-dotdot", lambda env, t: cv(preferred=[{"../etc": "x"}]), IA, "topology")
row(
    *CV,
    "topology-2000-segments",
    lambda env, t: cv(requisite=[{TOPO: f"absent-{i}"} for i in range(2000)]),
    RE,
    "requested topology",
)
row(
    *CV,
    "secrets-with-bad-param",
    lambda env, t: cv(params={"devname": POOL, "colour": "x"}, secrets={"password": SECRET}),
    IA,
    "colour",
)
row(
    *CV,
    "secrets-1MiB-with-bad-pool",
    lambda env, t: cv(params={"devname": "../x"}, secrets={"token": SECRET + HUGE}),
    IA,
    "pool name",
)
row(*CV, "sent-to-the-agent", lambda env, t: cv(), UN, endpoint="node")

# DeleteVolume: a volume that does not exist is deleted already (OK), and nothing else goes with it.
DV = ("Controller", "DeleteVolume")


def dv(vid: str, **extra: Any) -> Any:
    return csi_pb2.DeleteVolumeRequest(volume_id=vid, **extra)


row(*DV, "empty-id", lambda env, t: dv(""), IA, "volume_id")
row(*DV, "id-1MiB", lambda env, t: dv(HUGE), IA, "volume_id")
row(*DV, "id-nul", lambda env, t: dv(env.vol.volume_id + "\0"), OK)
row(*DV, "id-dotdot", lambda env, t: dv("../../etc/passwd"), OK)
row(*DV, "id-slash", lambda env, t: dv("openebs/" + env.vol.volume_id), OK)
row(*DV, "id-lookalike", lambda env, t: dv(_lookalike(env.vol.volume_id)), OK)
row(*DV, "id-fullwidth", lambda env, t: dv(_fullwidth(env.vol.volume_id)), OK)
row(*DV, "id-upper-case", lambda env, t: dv(env.vol.volume_id.upper()), OK)
row(*DV, "id-unknown", lambda env, t: dv(f"pvc-{uuid.uuid4()}"), OK)
row(*DV, "id-names-a-devicenode", lambda env, t: dv(NODE), OK)
row(*DV, "id-names-a-lease", lambda env, t: dv(f"device-localpv-agent.{NODE}"), OK)
row(*DV, "secrets", lambda env, t: dv(f"pvc-{uuid.uuid4()}", secrets={"password": SECRET}), OK)
row(*DV, "sent-to-the-agent", lambda env, t: dv(env.vol.volume_id), UN, endpoint="node")

# ValidateVolumeCapabilities
VV = ("Controller", "ValidateVolumeCapabilities")


def vv(vid: str, caps: list[Any] | None = None, **extra: Any) -> Any:
    return csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=vid, volume_capabilities=[mount_cap()] if caps is None else caps, **extra
    )


row(*VV, "empty-id", lambda env, t: vv(""), IA, "volume_id")
row(*VV, "id-1MiB", lambda env, t: vv(HUGE), IA, "volume_id")
row(*VV, "id-nul", lambda env, t: vv(env.vol.volume_id + "\0"), NF, "volume", "exist")
row(*VV, "id-dotdot", lambda env, t: vv("../" + env.vol.volume_id), NF, "volume", "exist")
row(*VV, "id-lookalike", lambda env, t: vv(_lookalike(env.vol.volume_id)), NF, "volume", "exist")
row(*VV, "id-upper-case", lambda env, t: vv(env.vol.volume_id.upper()), NF, "volume", "exist")
row(*VV, "no-capabilities", lambda env, t: vv(env.vol.volume_id, []), IA, "volume_capabilities")
row(*VV, "cap-no-access-type", lambda env, t: vv(env.vol.volume_id, [_no_access_type()]), IA, "access type")
row(*VV, "flag-loop", lambda env, t: vv(env.vol.volume_id, [mount_cap(flags=("loop",))]), OK, check=unconfirmed("loop"))
row(*VV, "flag-comma", lambda env, t: vv(env.vol.volume_id, [mount_cap(flags=("a,b",))]), OK, check=unconfirmed("a,b"))
row(
    *VV,
    "fs-lookalike",
    lambda env, t: vv(env.vol.volume_id, [mount_cap(CYR_E + "xt4")]),
    OK,
    check=unconfirmed("not supported"),
)
row(*VV, "access-mode-99", lambda env, t: vv(env.vol.volume_id, [_cap_mode(99)]), OK, check=unconfirmed("access mode"))
row(
    *VV,
    "cap-block-and-mount-on-the-wire",
    lambda env, t: _with_field(vv(env.vol.volume_id, []), "volume_capabilities", _both_block_and_mount("suid")),
    OK,
    check=unconfirmed("suid"),
)
row(*VV, "param-1MiB-key", lambda env, t: vv(env.vol.volume_id, parameters={"devname": POOL, HUGE: "x"}), IA, "at most")
row(
    *VV,
    "param-pool-nul",
    lambda env, t: vv(env.vol.volume_id, parameters={"devname": "ssd\0"}),
    IA,
    "devname",
    "control",
)
row(
    *VV,
    "secrets-unknown-id",
    lambda env, t: vv(f"pvc-{uuid.uuid4()}", secrets={"password": SECRET}),
    NF,
    "volume",
    "exist",
)

# GetCapacity: what cannot be served has no capacity; malformed fields are refused.
GC = ("Controller", "GetCapacity")


def gc(params: dict[str, str] | None = None, caps: list[Any] | None = None, topo: dict[str, str] | None = None) -> Any:
    return csi_pb2.GetCapacityRequest(
        parameters=params or {},
        volume_capabilities=caps or [],
        accessible_topology=csi_pb2.Topology(segments=topo) if topo is not None else None,
    )


row(*GC, "param-unknown-key", lambda env, t: gc({"devname": POOL, "../x": "y"}), IA, "devname")
row(*GC, "param-1MiB-pool", lambda env, t: gc({"devname": HUGE}), IA, "devname", "at most")
row(*GC, "param-pool-nul", lambda env, t: gc({"devname": POOL + "\0"}), IA, "devname", "control")
row(*GC, "param-lookalike-pool", lambda env, t: gc({"devname": CYR_S + "sd"}), IA, "pool name")
row(*GC, "param-unknown-pool", lambda env, t: gc({"devname": "nosuchpool"}), OK, check=NO_CAPACITY)
row(*GC, "cap-no-access-type", lambda env, t: gc(caps=[_no_access_type()]), IA, "access type")
row(*GC, "cap-flag-loop", lambda env, t: gc({"devname": POOL}, [mount_cap(flags=("loop",))]), OK, check=NO_CAPACITY)
row(*GC, "cap-access-mode-99", lambda env, t: gc({"devname": POOL}, [_cap_mode(99)]), OK, check=NO_CAPACITY)
row(*GC, "cap-fs-ntfs", lambda env, t: gc({"devname": POOL}, [mount_cap("ntfs")]), OK, check=NO_CAPACITY)
row(
    *GC,
    "topology-unknown-key",
    lambda env, t: gc({"devname": POOL}, topo={"example.com/zone": "z1"}),
    OK,
    check=NO_CAPACITY,
)
row(*GC, "topology-key-dotdot", lambda env, t: gc({"devname": POOL}, topo={"../etc": "x"}), IA, "topology")
row(*GC, "topology-value-1MiB", lambda env, t: gc({"devname": POOL}, topo={TOPO: HUGE}), IA, "topology")
row(*GC, "topology-value-nul", lambda env, t: gc({"devname": POOL}, topo={TOPO: NODE + "\0"}), IA, "topology")

# ListVolumes (tests/e2e/test_csi_surface.py covers made-up tokens of plain text and a negative max_entries)
LV = ("Controller", "ListVolumes")


def lv(token: str = "", max_entries: int = 0) -> Any:
    return csi_pb2.ListVolumesRequest(starting_token=token, max_entries=max_entries)


def _token_of(name: str) -> str:
    return "v1:" + base64.urlsafe_b64encode(name.encode()).decode()


row(*LV, "token-nul", lambda env, t: lv("v1:\0"), AB, "starting_token")
row(*LV, "token-1MiB", lambda env, t: lv(HUGE), AB, "starting_token")
row(*LV, "token-of-dotdot", lambda env, t: lv(_token_of("../../etc")), AB, "starting_token")
row(*LV, "token-of-nul-name", lambda env, t: lv(_token_of("pvc-\0")), AB, "starting_token")
row(*LV, "token-fullwidth-prefix", lambda env, t: lv("\uff56" + _token_of(env.vol.volume_id)[1:]), AB, "starting_token")
row(*LV, "max-entries-int32-min", lambda env, t: lv(max_entries=-(1 << 31)), IA, "max_entries")

# ControllerGetVolume
GV = ("Controller", "ControllerGetVolume")
for label, make in [
    ("id-nul", lambda env: env.vol.volume_id + "\0"),
    ("id-dotdot", lambda env: "../" + env.vol.volume_id),
    ("id-lookalike", lambda env: _lookalike(env.vol.volume_id)),
    ("id-upper-case", lambda env: env.vol.volume_id.upper()),
    ("id-names-a-devicenode", lambda env: NODE),
]:
    row(
        *GV,
        label,
        _bind(lambda env, t, m: csi_pb2.ControllerGetVolumeRequest(volume_id=m(env)), make),
        NF,
        "volume",
        "exist",
        needs="controller:GET_VOLUME",
    )
row(
    *GV, "empty-id", lambda env, t: csi_pb2.ControllerGetVolumeRequest(), IA, "volume_id", needs="controller:GET_VOLUME"
)
row(
    *GV,
    "id-1MiB",
    lambda env, t: csi_pb2.ControllerGetVolumeRequest(volume_id=HUGE),
    IA,
    "volume_id",
    needs="controller:GET_VOLUME",
)

row(
    "Controller",
    "ControllerGetCapabilities",
    "unknown-fields",
    lambda env, t: UNKNOWN_FIELDS,
    OK,
    check=_expect(lambda env, r: len(r.capabilities) > 0, "capabilities"),
)

# ControllerExpandVolume
CE = ("Controller", "ControllerExpandVolume")


def ce(vid: str, required: int | None = MIB, limit: int = 0, **extra: Any) -> Any:
    rng = None if required is None else csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit)
    return csi_pb2.ControllerExpandVolumeRequest(volume_id=vid, capacity_range=rng, **extra)


EXPAND = "controller:EXPAND_VOLUME"
row(*CE, "empty-id", lambda env, t: ce(""), IA, "volume_id", needs=EXPAND)
row(*CE, "id-1MiB", lambda env, t: ce(HUGE), IA, "volume_id", needs=EXPAND)
row(*CE, "id-dotdot", lambda env, t: ce("../" + env.vol.volume_id, 16 * MIB), NF, "volume", needs=EXPAND)
row(*CE, "id-lookalike", lambda env, t: ce(_lookalike(env.vol.volume_id), 16 * MIB), NF, "volume", needs=EXPAND)
row(*CE, "no-capacity-range", lambda env, t: ce(env.vol.volume_id, None), IA, "capacity_range", needs=EXPAND)
row(*CE, "required-negative", lambda env, t: ce(env.vol.volume_id, -MIB), IA, "negative", needs=EXPAND)
row(
    *CE,
    "limit-below-required",
    lambda env, t: ce(env.vol.volume_id, 16 * MIB, 12 * MIB),
    OOR,
    "limit_bytes",
    needs=EXPAND,
)
row(*CE, "enormous-beyond-int64", lambda env, t: ce(env.vol.volume_id, INT64_MAX), OOR, "bytes", needs=EXPAND)
row(
    *CE,
    "cap-flag-loop",
    lambda env, t: ce(env.vol.volume_id, 8 * MIB, volume_capability=mount_cap(flags=("loop",))),
    IA,
    "loop",
    needs=EXPAND,
)
row(
    *CE,
    "secrets-unknown-id",
    lambda env, t: ce(f"pvc-{uuid.uuid4()}", 16 * MIB, secrets={"password": SECRET}),
    NF,
    "volume",
    needs=EXPAND,
)

# CreateSnapshot, DeleteSnapshot, ListSnapshots -------------------------------------------------------------------
CS = ("Controller", "CreateSnapshot")
SNAP = "controller:CREATE_DELETE_SNAPSHOT"


def cs(source: str, name: str = "", **extra: Any) -> Any:
    return csi_pb2.CreateSnapshotRequest(source_volume_id=source, name=name or f"snapshot-{uuid.uuid4()}", **extra)


row(
    *CS,
    "empty-name",
    lambda env, t: csi_pb2.CreateSnapshotRequest(source_volume_id=env.vol.volume_id),
    IA,
    "name",
    needs=SNAP,
)
row(*CS, "empty-source", lambda env, t: cs(""), IA, "source_volume_id", needs=SNAP)
row(*CS, "name-1MiB", lambda env, t: cs(env.vol.volume_id, name=HUGE), IA, "name", needs=SNAP)
row(*CS, "name-nul", lambda env, t: cs(env.vol.volume_id, name="snap\0shot"), IA, "name", needs=SNAP)
row(*CS, "source-1MiB", lambda env, t: cs(HUGE), IA, "source_volume_id", needs=SNAP)
for label, make in [
    ("source-dotdot", lambda env: "../" + env.vol.volume_id),
    ("source-nul", lambda env: env.vol.volume_id + "\0"),
    ("source-lookalike", lambda env: _lookalike(env.vol.volume_id)),
    ("source-upper-case", lambda env: env.vol.volume_id.upper()),
    ("source-names-a-devicenode", lambda env: NODE),
]:
    row(*CS, label, _bind(lambda env, t, m: cs(m(env)), make), NF, "source", "exist", needs=SNAP)
row(
    *CS,
    "unknown-parameter",
    lambda env, t: cs(env.vol.volume_id, parameters={"devname": "../../etc"}),
    IA,
    "parameter",
    needs=SNAP,
)
row(
    *CS,
    "parameter-key-nul",
    lambda env, t: cs(env.vol.volume_id, parameters={"a\0b": "x"}),
    IA,
    "parameter",
    needs=SNAP,
)
row(
    *CS,
    "secrets-unknown-source",
    lambda env, t: cs(f"pvc-{uuid.uuid4()}", secrets={"password": SECRET}),
    NF,
    "source",
    needs=SNAP,
)
row(*CS, "sent-to-the-agent", lambda env, t: cs(env.vol.volume_id), UN, endpoint="node")

DS = ("Controller", "DeleteSnapshot")
row(*DS, "empty-id", lambda env, t: csi_pb2.DeleteSnapshotRequest(), IA, "snapshot_id", needs=SNAP)
row(*DS, "id-1MiB", lambda env, t: csi_pb2.DeleteSnapshotRequest(snapshot_id=HUGE), IA, "snapshot_id", needs=SNAP)
for label, make in [
    ("id-nul", lambda env: "snapshot-\0"),
    ("id-dotdot", lambda env: "../../etc/passwd"),
    ("id-unknown", lambda env: f"snapshot-{uuid.uuid4()}"),
    # A volume's id is no snapshot's: the volume stays (the table checks every object and partition).
    ("id-names-a-volume", lambda env: env.vol.volume_id),
    ("id-names-a-devicenode", lambda env: NODE),
]:
    row(*DS, label, _bind(lambda env, t, m: csi_pb2.DeleteSnapshotRequest(snapshot_id=m(env)), make), OK, needs=SNAP)

LS = ("Controller", "ListSnapshots")
LIST_SNAP = "controller:LIST_SNAPSHOTS"
NOTHING = _expect(lambda env, r: not r.entries and not r.next_token, "no entries")
row(
    *LS,
    "token-nul",
    lambda env, t: csi_pb2.ListSnapshotsRequest(starting_token="v1:\0"),
    AB,
    "starting_token",
    needs=LIST_SNAP,
)
row(
    *LS,
    "token-1MiB",
    lambda env, t: csi_pb2.ListSnapshotsRequest(starting_token=HUGE),
    AB,
    "starting_token",
    needs=LIST_SNAP,
)
row(
    *LS,
    "max-entries-negative",
    lambda env, t: csi_pb2.ListSnapshotsRequest(max_entries=-1),
    IA,
    "max_entries",
    needs=LIST_SNAP,
)
for label, list_request in [
    ("id-dotdot", lambda env: csi_pb2.ListSnapshotsRequest(snapshot_id="../" + env.vol.volume_id)),
    ("id-names-a-volume", lambda env: csi_pb2.ListSnapshotsRequest(snapshot_id=env.vol.volume_id)),
    ("source-nul", lambda env: csi_pb2.ListSnapshotsRequest(source_volume_id=env.vol.volume_id + "\0")),
    ("source-unknown", lambda env: csi_pb2.ListSnapshotsRequest(source_volume_id=f"pvc-{uuid.uuid4()}")),
]:
    row(*LS, label, _bind(lambda env, t, b: b(env), list_request), OK, needs=LIST_SNAP, check=NOTHING)

GS = ("Controller", "GetSnapshot")
GET_SNAP = "controller:GET_SNAPSHOT"
row(*GS, "empty-id", lambda env, t: csi_pb2.GetSnapshotRequest(), IA, "snapshot_id", needs=GET_SNAP)
row(*GS, "id-1MiB", lambda env, t: csi_pb2.GetSnapshotRequest(snapshot_id=HUGE), IA, "snapshot_id", needs=GET_SNAP)
for label, make in [
    ("id-dotdot", lambda env: "../" + env.vol.volume_id),
    ("id-nul", lambda env: "snapshot-\0"),
    ("id-names-a-volume", lambda env: env.vol.volume_id),
    ("id-secrets", lambda env: f"snapshot-{uuid.uuid4()}"),
]:
    row(
        *GS,
        label,
        _bind(lambda env, t, m: csi_pb2.GetSnapshotRequest(snapshot_id=m(env), secrets={"password": SECRET}), make),
        NF,
        "snapshot",
        "exist",
        needs=GET_SNAP,
    )

# Controller RPCs the driver does not offer: UNIMPLEMENTED, whatever they carry.
for rpc, cap, build in [
    (
        "ControllerPublishVolume",
        "PUBLISH_UNPUBLISH_VOLUME",
        lambda env, t: csi_pb2.ControllerPublishVolumeRequest(
            volume_id=env.vol.volume_id, node_id=NODE_B, volume_capability=mount_cap(), secrets={"p": SECRET}
        ),
    ),
    (
        "ControllerUnpublishVolume",
        "PUBLISH_UNPUBLISH_VOLUME",
        lambda env, t: csi_pb2.ControllerUnpublishVolumeRequest(volume_id=env.vol.volume_id, node_id=NODE),
    ),
    (
        "ControllerModifyVolume",
        "MODIFY_VOLUME",
        lambda env, t: csi_pb2.ControllerModifyVolumeRequest(
            volume_id=env.vol.volume_id, mutable_parameters={"x": HUGE}
        ),
    ),
]:
    row("Controller", rpc, "hostile", build, UN, "not supported", needs=f"controller:{cap}")
for rpc in ("GroupControllerGetCapabilities", "CreateVolumeGroupSnapshot"):
    req = getattr(csi_pb2, rpc + "Request")
    row(
        "GroupController",
        rpc,
        "not-served",
        _bind(lambda env, t, r: r(), req),
        UN,
        needs="plugin:GROUP_CONTROLLER_SERVICE",
    )

# NodePublishVolume (tests/e2e/test_bad_input.py covers relative and `..` targets, a symbolic link to a directory
# outside, /etc/..., /tmp, an unknown pvc-<uuid>, a multi-node mode, a missing parent for a filesystem and
# republishing with another filesystem or access type)
NP = ("Node", "NodePublishVolume")
row(*NP, "empty-id", lambda env, t: npv(env, "", t), IA, "volume_id")
row(*NP, "id-1MiB", lambda env, t: npv(env, HUGE, t), IA, "volume_id")
row(*NP, "id-5MiB", lambda env, t: npv(env, OVERSIZED, t), RE, "larger than")
for label, make in [
    ("id-nul", lambda env: env.vol.volume_id + "\0"),
    ("id-dotdot-device", lambda env: "../../dev/" + os.path.basename(env.cluster.pool_disks[0].device)),
    ("id-lookalike", lambda env: _lookalike(env.vol.volume_id)),
    ("id-fullwidth", lambda env: _fullwidth(env.vol.volume_id)),
    ("id-upper-case", lambda env: env.vol.volume_id.upper()),
    ("id-of-another-node", lambda env: env.remote.volume_id),
]:
    row(*NP, label, _bind(lambda env, t, m: npv(env, m(env), t), make), NF, "volume", "node")
row(
    *NP,
    "context-names-the-lookalike-pool",
    lambda env, t: csi_pb2.NodePublishVolumeRequest(
        volume_id=env.vol.volume_id,
        target_path=t,
        volume_capability=mount_cap("ext4"),
        volume_context={"openebs.io/devicename": "nvme-" + POOL + "2"},
    ),
    NF,
    "volume",
    "node",
)
for label, target_of, word in [
    ("target-empty", lambda env, t: "", "target_path"),
    ("target-root", lambda env, t: "/", "outside"),
    ("target-etc", lambda env, t: "/etc", "outside"),
    ("target-proc-self", lambda env, t: "/proc/self", "outside"),
    ("target-via-proc-root", lambda env, t: "/proc/self/root" + t, "outside"),
    ("target-double-slash", lambda env, t: "/" + t, "outside"),
    ("target-is-the-root", lambda env, t: str(env.root), "outside"),
    ("target-sibling-of-root", lambda env, t: str(env.root) + "-evil/x", "outside"),
    ("target-lookalike-root", lambda env, t: str(env.root).replace("dlpv", "dlp\u03bd") + "/x", "outside"),
    ("target-dot", lambda env, t: str(env.dir) + "/./x", "target_path"),
    ("target-dotdot-escape", lambda env, t: str(env.dir) + "/../../../etc", "target_path"),
    ("target-nul", lambda env, t: t + "\0x", "target_path"),
    ("target-newline", lambda env, t: t + "\nx", "target_path"),
    ("target-1MiB", lambda env, t: t + "/" + HUGE, "target_path"),
    ("target-under-link-to-etc", lambda env, t: env.target("to-etc") + "/x", "symbolic link"),
    ("target-is-link-to-root", lambda env, t: env.target("to-root"), "symbolic link"),
    ("target-under-link-loop", lambda env, t: env.target("loop-a") + "/x", "symbolic link"),
    ("target-is-dangling-link", lambda env, t: env.target("dangling"), "symbolic link"),
]:
    row(*NP, label, _bind(lambda env, t, m: npv(env, None, m(env, t)), target_of), IA, word)
row(*NP, "target-non-empty-dir", lambda env, t: npv(env, None, env.target("full-dir")), FP, "not empty")
row(*NP, "target-regular-file", lambda env, t: npv(env, None, env.target("file")), AE, "not a directory")
row(*NP, "target-fifo", lambda env, t: npv(env, None, env.target("fifo")), AE, "not a directory")
row(
    *NP,
    "block-target-non-empty-file",
    lambda env, t: npv(
        env,
        None,
        env.target("file"),
        cap=csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=AM.SINGLE_NODE_WRITER)
        ),
    ),
    FP,
    "not empty",
)
row(
    *NP,
    "block-target-dir",
    lambda env, t: npv(
        env,
        None,
        env.target("full-dir"),
        cap=csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=AM.SINGLE_NODE_WRITER)
        ),
    ),
    AE,
    "not a regular file",
)
row(
    *NP,
    "block-missing-parent",
    lambda env, t: npv(
        env,
        None,
        t + "/no/such",
        cap=csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(), access_mode=AM(mode=AM.SINGLE_NODE_WRITER)
        ),
    ),
    FP,
    "parent directory",
)
row(*NP, "target-foreign-mount", lambda env, t: npv(env, None, env.target("foreign")), AE, "mounted")
row(
    *NP,
    "no-capability",
    lambda env, t: csi_pb2.NodePublishVolumeRequest(volume_id=env.vol.volume_id, target_path=t),
    IA,
    "volume_capability",
)
row(*NP, "cap-no-access-type", lambda env, t: npv(env, None, t, _no_access_type()), IA, "access type")
row(*NP, "cap-access-mode-99", lambda env, t: npv(env, None, t, _cap_mode(99)), IA, "access mode")
row(
    *NP,
    "cap-block-and-mount-on-the-wire",
    lambda env, t: _with_field(
        csi_pb2.NodePublishVolumeRequest(volume_id=env.vol.volume_id, target_path=t),
        "volume_capability",
        _both_block_and_mount("loop"),
    ),
    IA,
    "loop",
)
for label, fs in [
    ("fs-upper-case", "EXT4"),
    ("fs-lookalike", CYR_E + "xt4"),
    ("fs-path", "../ext4"),
    ("fs-with-options", "ext4 -o loop"),
]:
    row(*NP, label, _bind(lambda env, t, fs: npv(env, None, t, mount_cap(fs)), fs), IA, "not supported")
row(*NP, "fs-xfs-over-ext4", lambda env, t: npv(env, None, t, mount_cap("xfs")), FP, "ext4")
for flag, word in REFUSED_FLAGS:
    row(
        *NP,
        f"flag-{flag[:24]!a}",
        _bind(lambda env, t, f: npv(env, None, t, mount_cap("ext4", flags=(f,))), flag),
        IA,
        word,
    )
for fs, flag, word in WRONG_FS_FLAGS:
    if fs == "ext4":
        row(
            *NP,
            f"flag-{flag}-on-{fs}",
            _bind(lambda env, t, f: npv(env, None, t, mount_cap("ext4", flags=(f,))), flag),
            IA,
            word,
        )
row(*NP, "republish-read-only", lambda env, t: npv(env, None, env.published, readonly=True), AE, "read")
row(
    *NP,
    "republish-with-refused-flag",
    lambda env, t: npv(env, None, env.published, mount_cap("ext4", flags=("suid",))),
    IA,
    "suid",
)
row(
    *NP, "another-nodes-volume-at-published", lambda env, t: npv(env, env.remote.volume_id, env.published), NF, "volume"
)
row(
    *NP,
    "secrets-unknown-id",
    lambda env, t: npv(env, f"pvc-{uuid.uuid4()}", t, secrets={"password": SECRET}),
    NF,
    "volume",
)
row(*NP, "sent-to-the-controller", lambda env, t: npv(env, None, t), UN, endpoint="controller")

# NodeUnpublishVolume (tests/e2e/test_bad_input.py covers /etc/..., /var/lib/..., /tmp, another volume's id at a
# mounted target, and an unknown id at a pre-existing file or empty directory)
NU = ("Node", "NodeUnpublishVolume")


def nuv(vid: str, target: str) -> Any:
    return csi_pb2.NodeUnpublishVolumeRequest(volume_id=vid, target_path=target)


row(*NU, "empty-id", lambda env, t: nuv("", env.published), IA, "volume_id")
row(*NU, "id-1MiB", lambda env, t: nuv(HUGE, env.published), IA, "volume_id")
for label, target_of, word in [
    ("target-empty", lambda env, t: "", "target_path"),
    ("target-1MiB", lambda env, t: t + "/" + HUGE, "target_path"),
    ("target-root", lambda env, t: "/", "outside"),
    ("target-etc", lambda env, t: "/etc", "outside"),
    ("target-proc-self", lambda env, t: "/proc/self", "outside"),
    ("target-relative", lambda env, t: "hostile/published", "absolute"),
    ("target-dotdot-escape", lambda env, t: str(env.dir) + "/../../../etc", "target_path"),
    ("target-nul", lambda env, t: env.published + "\0", "target_path"),
    ("target-is-the-root", lambda env, t: str(env.root), "outside"),
    ("target-lookalike-root", lambda env, t: str(env.root).replace("dlpv", "dlp\u03bd") + "/x", "outside"),
    ("target-under-link-to-etc", lambda env, t: env.target("to-etc") + "/hostname", "symbolic link"),
    ("target-is-link-to-root", lambda env, t: env.target("to-root"), "symbolic link"),
    ("target-is-link-outside", lambda env, t: env.target("to-outside"), "symbolic link"),
    ("published-dotdot", lambda env, t: env.published + "/..", "target_path"),
    ("published-double-slash", lambda env, t: "/" + env.published, "outside"),
]:
    row(*NU, label, _bind(lambda env, t, m: nuv(env.vol.volume_id, m(env, t)), target_of), IA, word)
row(*NU, "non-empty-dir-kept", lambda env, t: nuv(env.vol.volume_id, env.target("full-dir")), OK)
row(*NU, "unknown-id-nothing-there", lambda env, t: nuv("../../" + str(uuid.uuid4()), t), OK)
row(*NU, "foreign-mount-own-id", lambda env, t: nuv(env.vol.volume_id, env.target("foreign")), FP, "nothing unmounted")
row(
    *NU,
    "foreign-mount-unknown-id",
    lambda env, t: nuv(f"pvc-{uuid.uuid4()}", env.target("foreign")),
    FP,
    "nothing unmounted",
)
row(
    *NU,
    "published-lookalike-id",
    lambda env, t: nuv(_lookalike(env.vol.volume_id), env.published),
    FP,
    "nothing unmounted",
)
row(
    *NU,
    "published-id-of-another-node",
    lambda env, t: nuv(env.remote.volume_id, env.published),
    FP,
    "nothing unmounted",
)
row(*NU, "sent-to-the-controller", lambda env, t: nuv(env.vol.volume_id, env.published), UN, endpoint="controller")

# NodeGetVolumeStats (tests/e2e/test_bad_input.py covers a missing path, another volume's mount, an unknown id at a
# mounted target and a plain directory)
NS = ("Node", "NodeGetVolumeStats")


def nsv(vid: str, path: str) -> Any:
    return csi_pb2.NodeGetVolumeStatsRequest(volume_id=vid, volume_path=path)


row(*NS, "empty-id", lambda env, t: nsv("", env.published), IA, "volume_id")
row(*NS, "id-1MiB", lambda env, t: nsv(HUGE, env.published), IA, "volume_id")
for label, make in [
    ("path-empty", lambda env: ""),
    ("path-1MiB", lambda env: env.published + "/" + HUGE),
    ("path-nul", lambda env: env.published + "\0"),
]:
    row(*NS, label, _bind(lambda env, t, m: nsv(env.vol.volume_id, m(env)), make), IA, "volume_path")
# A well-formed string that is no publish target: the volume is not found there (csi-sanity asks NOT_FOUND for a
# relative path), and the message says why.
for label, make in [
    ("path-relative", lambda env: "hostile/published"),
    ("path-root", lambda env: "/"),
    ("path-proc-self", lambda env: "/proc/self"),
    ("published-dotdot", lambda env: env.published + "/../published"),
    ("path-under-link-to-etc", lambda env: env.target("to-etc")),
]:
    row(*NS, label, _bind(lambda env, t, m: nsv(env.vol.volume_id, m(env)), make), NF, "volume_path")
for label, make, path in [
    ("published-lookalike-id", lambda env: _lookalike(env.vol.volume_id), lambda env: env.published),
    ("published-id-of-another-node", lambda env: env.remote.volume_id, lambda env: env.published),
    ("published-nul-id", lambda env: env.vol.volume_id + "\0", lambda env: env.published),
    ("foreign-mount-own-id", lambda env: env.vol.volume_id, lambda env: env.target("foreign")),
    ("foreign-mount-unknown-id", lambda env: f"pvc-{uuid.uuid4()}", lambda env: env.target("foreign")),
]:
    row(*NS, label, _bind(lambda env, t, m, p: nsv(m(env), p(env)), make, path), NF, "volume")

row(
    "Node",
    "NodeGetInfo",
    "unknown-fields",
    lambda env, t: UNKNOWN_FIELDS,
    OK,
    check=_expect(lambda env, r: r.node_id == NODE and dict(r.accessible_topology.segments).get(TOPO) == NODE, "node"),
)
row(
    "Node",
    "NodeGetCapabilities",
    "unknown-fields",
    lambda env, t: UNKNOWN_FIELDS,
    OK,
    check=_expect(lambda env, r: len(r.capabilities) > 0, "capabilities"),
)

# NodeExpandVolume
NE = ("Node", "NodeExpandVolume")
NEXPAND = "node:EXPAND_VOLUME"


def nev(vid: str, path: str, required: int = 8 * MIB) -> Any:
    return csi_pb2.NodeExpandVolumeRequest(
        volume_id=vid, volume_path=path, capacity_range=csi_pb2.CapacityRange(required_bytes=required)
    )


row(*NE, "empty-id", lambda env, t: nev("", env.published), IA, "volume_id", needs=NEXPAND)
row(*NE, "id-1MiB", lambda env, t: nev(HUGE, env.published), IA, "volume_id", needs=NEXPAND)
for label, make, word in [
    ("path-empty", lambda env: "", "volume_path"),
    ("path-relative", lambda env: "hostile/published", "volume_path"),
    ("path-root", lambda env: "/", "outside"),
    ("path-under-link-to-etc", lambda env: env.target("to-etc") + "/x", "symbolic link"),
]:
    row(*NE, label, _bind(lambda env, t, m: nev(env.vol.volume_id, m(env)), make), IA, word, needs=NEXPAND)
row(
    *NE,
    "published-lookalike-id",
    lambda env, t: nev(_lookalike(env.vol.volume_id), env.published),
    NF,
    "volume",
    needs=NEXPAND,
)
row(
    *NE,
    "published-id-of-another-node",
    lambda env, t: nev(env.remote.volume_id, env.published),
    NF,
    "volume",
    needs=NEXPAND,
)
row(
    *NE,
    "foreign-mount-own-id",
    lambda env, t: nev(env.vol.volume_id, env.target("foreign")),
    NF,
    "volume",
    needs=NEXPAND,
)
row(*NE, "required-negative", lambda env, t: nev(env.vol.volume_id, env.published, -MIB), IA, "negative", needs=NEXPAND)

# Node RPCs the driver does not offer
row(
    "Node",
    "NodeStageVolume",
    "hostile",
    lambda env, t: csi_pb2.NodeStageVolumeRequest(
        volume_id=env.vol.volume_id, staging_target_path="/etc", volume_capability=mount_cap(), secrets={"p": SECRET}
    ),
    UN,
    "not supported",
    needs="node:STAGE_UNSTAGE_VOLUME",
)
row(
    "Node",
    "NodeStageVolume",
    "id-1MiB",
    lambda env, t: csi_pb2.NodeStageVolumeRequest(volume_id=HUGE, staging_target_path=t),
    UN,
    "not supported",
    needs="node:STAGE_UNSTAGE_VOLUME",
)
row(
    "Node",
    "NodeUnstageVolume",
    "hostile",
    lambda env, t: csi_pb2.NodeUnstageVolumeRequest(volume_id=env.vol.volume_id, staging_target_path="/"),
    UN,
    "not supported",
    needs="node:STAGE_UNSTAGE_VOLUME",
)


# -- the tests -------------------------------------------------------------------------------------------------------


def _message_problem(msg: str) -> str | None:
    if len(msg) > 4096:
        return f"message of {len(msg)} characters"
    controls = sorted({repr(ch) for ch in msg if unicodedata.category(ch) == "Cc"})
    if controls:
        return f"message holds control characters {controls}: {msg[:200]!r}"
    if SECRET in msg:
        return "message holds the secret"
    return None


def _cleanup_accepted(env: Env, case: Case, request: Message | bytes, response: Any) -> None:
    """Undo an operation that succeeded although it should not have."""
    if case.rpc == "CreateVolume" and response is not None and response.volume.volume_id:
        _stub_call(env.channels["controller"], "Controller", "DeleteVolume", dv(response.volume.volume_id))
    if case.rpc == "CreateSnapshot" and response is not None and response.snapshot.snapshot_id:
        delete_req = csi_pb2.DeleteSnapshotRequest(snapshot_id=response.snapshot.snapshot_id)
        _stub_call(env.channels["controller"], "Controller", "DeleteSnapshot", delete_req)
    if case.rpc == "NodePublishVolume":
        wire = request if isinstance(request, bytes) else request.SerializeToString()
        req = csi_pb2.NodePublishVolumeRequest.FromString(wire)
        if req.target_path != env.published:
            with contextlib.suppress(grpc.RpcError):
                _stub_call(env.channels["node"], "Node", "NodeUnpublishVolume", nuv(req.volume_id, req.target_path))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request(env: Env, case: Case) -> None:
    code, words = case.code, case.words
    problems: list[str] = []
    if case.needs and case.needs not in env.advertised:
        code, words = case.fallback or (UN, ("not supported",) if case.service != "GroupController" else ())
    elif case.needs and code is UN:
        problems.append(f"{case.needs} is advertised now: give {case.rpc} rows for what it does with this request")
    before = Snapshot.take(env)
    target = str(env.dir / f"t-{case.id[:40].encode().hex()}")
    request = case.build(env, target)
    response = None
    try:
        response = _stub_call(env.channels[case.where()], case.service, case.rpc, request)
        got, msg = OK, ""
    except grpc.RpcError as e:
        got, msg = e.code(), str(e.details() or "")
    if got is OK and code is not OK:
        _cleanup_accepted(env, case, request, response)
    if got != code:
        problems.append(f"expected {code.name}, got {got.name}: {msg[:300]!r}")
    if got in (C.UNKNOWN, C.INTERNAL):
        problems.append(f"{got.name} is never the answer to a bad request")
    if got is not OK:
        missing = [w for w in words if w.lower() not in msg.lower()]
        if missing and got == code:
            problems.append(f"message lacks {missing}: {msg[:300]!r}")
        problem = _message_problem(msg)
        if problem:
            problems.append(problem)
    elif code is OK and case.check is not None:
        problem = case.check(env, response)
        if problem:
            problems.append(problem)
    problems += _changes(env, before)
    _undo(env, before)
    assert not problems, "\n".join(problems)


def test_every_rpc_has_rows() -> None:
    """Each RPC of the Identity, Controller and Node services has at least one row."""
    rows = {(c.service, c.rpc) for c in CASES}
    for service in ("Identity", "Controller", "Node"):
        for method in csi_pb2.DESCRIPTOR.services_by_name[service].methods:
            assert (service, method.name) in rows, f"{service}.{method.name} has no hostile request"


# Filesystem flags that the policy allows must mount; nosuid,nodev are always there.
ALLOWED = {
    "ext4": ["noatime", "nodiratime", "discard", "errors=remount-ro", "commit=30", "data=ordered", "ro", "defaults"],
    "xfs": ["noatime", "logbufs=8", "inode64"],
    "btrfs": ["compress=zstd:3", "noatime"],
}
SIZES = {"ext4": 16 * MIB, "xfs": 320 * MIB, "btrfs": 128 * MIB}


def _mount_of(point: str) -> tuple[set[str], set[str]]:
    """The per-mount and the superblock options of the mount at `point`."""
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        fields = line.split()
        if fields[4] == point:
            return set(fields[5].split(",")), set(fields[fields.index("-") + 3].split(","))
    raise AssertionError(f"nothing mounted at {point}")


@pytest.mark.parametrize("fs", sorted(ALLOWED))
def test_allowed_flags_publish(env: Env, fs: str) -> None:
    """Each allowed flag is accepted by CreateVolume and NodePublishVolume and takes effect; nosuid and nodev are
    always set; a flag cannot make a read-only publish writable."""
    ctl, node = env.channels["controller"], env.channels["node"]
    before = _layout(env)
    cap = mount_cap(fs, flags=tuple(ALLOWED[fs]))
    vol = create(ctl, f"pvc-{uuid.uuid4()}", SIZES[fs], cap=cap, requisite=[{TOPO: NODE}])
    try:
        for i, flag in enumerate([*ALLOWED[fs], "rw"]):
            target = env.target(f"allowed-{fs}-{i}")
            read_only = flag == "rw"  # `rw` asked for, read-only published: read-only it is
            publish(node, vol, target, mount_cap(fs, flags=(flag,)), readonly=read_only)
            try:
                per_mount, per_super = _mount_of(target)
                assert {"nosuid", "nodev"} <= per_mount, (flag, per_mount)
                if flag == "defaults":
                    pass
                elif flag == "rw":
                    assert "ro" in per_mount, per_mount
                else:
                    assert flag in per_mount | per_super, (flag, per_mount, per_super)
            finally:
                unpublish(node, vol.volume_id, target)
            assert not os.path.exists(target)
    finally:
        delete(ctl, vol.volume_id)
    assert _layout(env) == before


DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
ODD_NAMES = {
    "dotdot-slash": lambda env: "../../etc/passwd",
    "slash": lambda env: "openebs/" + env.vol.volume_id,
    "lookalike": lambda env: _lookalike(env.vol.volume_id),
    "fullwidth": lambda env: _fullwidth(env.vol.volume_id),
    "upper-case": lambda env: env.vol.volume_id.upper(),
    "128-bytes": lambda env: "\u00e9" * 64,
}


@pytest.mark.parametrize("label", sorted(ODD_NAMES))
def test_odd_but_legal_names_are_kept_apart(env: Env, label: str) -> None:
    """The CSI spec allows any name of up to 128 bytes without control characters: such a name gets a volume of
    its own (never the existing volume it looks like), under an id that is a valid object name; a retry returns
    the same volume; deleting it leaves the disks as they were."""
    ctl = env.channels["controller"]
    before = _layout(env)
    name = ODD_NAMES[label](env)
    vol = create(ctl, name, MIB, requisite=[{TOPO: NODE}])
    try:
        assert vol.volume_id not in (env.vol.volume_id, env.remote.volume_id)
        assert DNS_NAME.fullmatch(vol.volume_id), vol.volume_id
        assert create(ctl, name, MIB, requisite=[{TOPO: NODE}]).volume_id == vol.volume_id
    finally:
        delete(ctl, vol.volume_id)
    assert _layout(env) == before
    assert f"DeviceVolume/{vol.volume_id}" not in _objects(env)
