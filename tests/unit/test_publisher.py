"""The Publisher's logic (NodePublish/Unpublish/GetVolumeStats/Expand) on the in-memory FakeHost, which
tests/contract/test_host.py checks against the real host layer on a loop device. No process, no disk, no mount."""

from __future__ import annotations

import pytest

from csidriver.api import naming
from csidriver.host.parsers import MountInfo
from csidriver.services.errors import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from csidriver.services.publish import Publisher
from csidriver.services.requests import AccessMode, Capability
from tests.fakes.host import FakeHost

ROOT = "/fake-kubelet/pods"
VOL, OTHER = "pvc-11111111-1111-1111-1111-111111111111", "pvc-22222222-2222-2222-2222-222222222222"
DEV, OTHER_DEV = "/dev/fk1p2", "/dev/fk1p3"
MIB = 1 << 20
FS = Capability(block=False, access_mode=AccessMode.SINGLE_NODE_WRITER)
XFS = Capability(block=False, access_mode=AccessMode.SINGLE_NODE_WRITER, fs_type="xfs")
BLOCK = Capability(block=True, access_mode=AccessMode.SINGLE_NODE_WRITER)
ONCE = Capability(block=False, access_mode=AccessMode.SINGLE_NODE_SINGLE_WRITER)


def _world() -> tuple[FakeHost, Publisher]:
    host = FakeHost()
    host.add_dir(ROOT)
    host.add_device(DEV, "259:2", 64 * MIB, naming.partition_name(VOL))
    host.add_device(OTHER_DEV, "259:3", 64 * MIB, naming.partition_name(OTHER))
    return host, Publisher(host, roots=("/fake-kubelet",), default_fs="ext4")


def _at(host: FakeHost, target: str) -> list[MountInfo]:
    return [m for m in host.table if m.mount_point == target]


async def test_first_publish_formats_mounts_and_repeats_are_idempotent() -> None:
    host, pub = _world()
    t = f"{ROOT}/a/mount"
    host.add_dir(f"{ROOT}/a")
    await pub.publish(VOL, t, FS, False, {})
    assert host.signatures[DEV] == "ext4"
    [m] = _at(host, t)
    assert m.fstype == "ext4" and {"nosuid", "nodev"} <= set(m.options) and not m.read_only
    await pub.publish(VOL, t, FS, False, {})
    assert len(_at(host, t)) == 1
    for cap, ro, words in ((FS, True, "read_only"), (BLOCK, False, "filesystem"), (XFS, False, "ext4")):
        with pytest.raises(AlreadyExists, match=words):
            await pub.publish(VOL, t, cap, ro, {})
    with pytest.raises(AlreadyExists, match="another device"):
        await pub.publish(OTHER, t, FS, False, {})


async def test_a_device_is_never_formatted_over_another_filesystem_or_read_only() -> None:
    host, pub = _world()
    with pytest.raises(FailedPrecondition, match="read-only"):
        await pub.publish(VOL, f"{ROOT}/ro", FS, True, {})
    host.signatures[DEV] = "xfs"
    with pytest.raises(FailedPrecondition, match="already holds xfs, not ext4"):
        await pub.publish(VOL, f"{ROOT}/t", FS, False, {})
    assert host.signatures[DEV] == "xfs" and not host.table


async def test_a_failed_mount_removes_the_target_it_made_but_not_one_it_found() -> None:
    host, pub = _world()
    host.fail_mount = RuntimeError("mount: wrong fs type")
    with pytest.raises(RuntimeError):
        await pub.publish(VOL, f"{ROOT}/new", FS, False, {})
    assert f"{ROOT}/new" not in host.paths
    host.add_dir(f"{ROOT}/kubelet-made")
    with pytest.raises(RuntimeError):
        await pub.publish(VOL, f"{ROOT}/kubelet-made", FS, False, {})
    assert f"{ROOT}/kubelet-made" in host.paths  # kubelet made it: kubelet removes it


async def test_targets_holding_data_or_missing_parents_are_refused() -> None:
    host, pub = _world()
    host.add_dir(f"{ROOT}/full", empty=False)
    with pytest.raises(FailedPrecondition, match="not empty"):
        await pub.publish(VOL, f"{ROOT}/full", FS, False, {})
    host.add_file(f"{ROOT}/file", empty=False)
    with pytest.raises(FailedPrecondition, match="not empty"):
        await pub.publish(VOL, f"{ROOT}/file", BLOCK, False, {})
    with pytest.raises(FailedPrecondition, match="parent directory"):
        await pub.publish(VOL, f"{ROOT}/no/such/target", FS, False, {})
    assert not host.table


async def test_single_node_single_writer_is_published_once() -> None:
    _, pub = _world()
    await pub.publish(VOL, f"{ROOT}/one", ONCE, False, {})
    with pytest.raises(FailedPrecondition, match="SINGLE_NODE_SINGLE_WRITER"):
        await pub.publish(VOL, f"{ROOT}/two", ONCE, False, {})


async def test_block_publish_binds_the_device_onto_a_file() -> None:
    host, pub = _world()
    t = f"{ROOT}/dev"
    await pub.publish(VOL, t, BLOCK, True, {})
    [m] = _at(host, t)
    assert m.fstype == "devtmpfs" and m.root == DEV.removeprefix("/dev") and m.read_only
    assert not host.paths[t].directory and DEV not in host.signatures  # never formatted
    await pub.publish(VOL, t, BLOCK, True, {})
    assert len(_at(host, t)) == 1


async def test_unpublish_unmounts_and_removes_only_what_is_ours() -> None:
    host, pub = _world()
    t = f"{ROOT}/u"
    await pub.publish(VOL, t, FS, False, {})
    await pub.unpublish(VOL, t)
    assert not _at(host, t) and t not in host.paths
    await pub.unpublish(VOL, t)  # again: nothing to do
    # Another volume's mount, or a foreign one, is never unmounted.
    await pub.publish(OTHER, t, FS, False, {})
    with pytest.raises(FailedPrecondition, match="not volume"):
        await pub.unpublish(VOL, t)
    assert _at(host, t)
    with pytest.raises(FailedPrecondition, match="not volume"):  # an unknown id never takes a live device's mount
        await pub.unpublish(f"pvc-{'4' * 8}-4444-4444-4444-444444444444", t)
    assert _at(host, t)
    foreign = f"{ROOT}/tmpfs"
    host.add_dir(foreign)
    host.table.append(MountInfo(1, 1, "0:77", "/", foreign, ("rw",), "tmpfs", "tmpfs", ()))
    with pytest.raises(FailedPrecondition, match="not volume"):
        await pub.unpublish(f"pvc-{'3' * 8}-3333-3333-3333-333333333333", foreign)
    assert _at(host, foreign) and foreign in host.paths


async def test_unpublish_of_a_volume_whose_disk_vanished() -> None:
    host, pub = _world()
    t = f"{ROOT}/gone"
    await pub.publish(VOL, t, FS, False, {})
    del host.partitions[naming.partition_name(VOL)]  # its disk is gone: the partition cannot be found
    del host.numbers[DEV]  # and its device node no longer exists
    await pub.unpublish(VOL, t)
    assert not _at(host, t) and t not in host.paths


async def test_stats_and_conditions() -> None:
    host, pub = _world()
    t, raw = f"{ROOT}/s", f"{ROOT}/r"
    with pytest.raises(NotFound):
        await pub.stats(VOL, t)
    await pub.publish(VOL, t, FS, False, {})
    await pub.publish(OTHER, raw, BLOCK, False, {})
    fs = await pub.stats(VOL, t)
    assert not fs.block and fs.total == 64 * MIB and not fs.abnormal
    blk = await pub.stats(OTHER, raw)
    assert blk.block and blk.total == 64 * MIB
    host.failing[DEV] = "Input/output error"
    assert (await pub.stats(VOL, t)).abnormal == "Input/output error"
    with pytest.raises(NotFound):
        await pub.stats(OTHER, t)  # published there is another volume


async def test_expand_grows_a_filesystem_only_once_the_partition_grew() -> None:
    host, pub = _world()
    t = f"{ROOT}/e"
    await pub.publish(VOL, t, FS, False, {})
    with pytest.raises(FailedPrecondition, match="has not grown it yet"):
        await pub.expand(VOL, t, 128 * MIB, None)
    host.sizes[DEV] = 128 * MIB
    assert await pub.expand(VOL, t, 128 * MIB, None) == 128 * MIB
    assert host.grown == [t]
    raw = f"{ROOT}/eb"
    await pub.publish(OTHER, raw, BLOCK, False, {})
    assert await pub.expand(OTHER, raw, 0, True) == 64 * MIB and host.grown == [t]


async def test_locate() -> None:
    host, pub = _world()
    with pytest.raises(NotFound):
        await pub.locate("pvc-absent", {})
    host.add_device("/dev/notblock", "", 0, "weird")
    del host.numbers["/dev/notblock"]
    host.partitions[naming.partition_name(VOL)] = "/dev/notblock"
    with pytest.raises(Internal, match="not a block device"):
        await pub.locate(VOL, {})


async def test_a_symbolic_link_on_the_way_is_refused_before_anything_is_touched() -> None:
    host, pub = _world()
    host.add_link(f"{ROOT}/escape")
    for target in (f"{ROOT}/escape", f"{ROOT}/escape/mount"):
        with pytest.raises(InvalidArgument, match="symbolic link"):
            await pub.publish(VOL, target, FS, False, {})
        with pytest.raises(InvalidArgument, match="symbolic link"):
            await pub.unpublish(VOL, target)
        with pytest.raises(NotFound, match="symbolic link"):
            await pub.stats(VOL, target)
    assert not host.table and DEV not in host.signatures
