"""The in-memory FakeHost (tests/fakes/host.py) and the real host layer (agent/localhost.LocalHost over host/) on a
real loop device answer the Publisher's calls the same way: every Publisher unit test stands on these checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from csidriver.agent.localhost import LocalHost
from csidriver.host import DiskInventory, Filesystems, Mounter, Runner
from csidriver.host.targets import NoParent, NotABlockDevice, NotEmpty, WrongKind
from harness.disks import LoopDisks
from tests.fakes.host import FakeHost

pytestmark = pytest.mark.asyncio(loop_scope="session")
MIB = 1 << 20


@dataclass
class Side:
    host: Any
    root: str  # an existing, empty directory
    device: str  # a block device of 64 MiB holding nothing
    number: str
    put_dir: Any  # (path, empty) -> None
    put_file: Any  # (path, empty) -> None
    put_link: Any  # (path, to) -> None: a symbolic link at path pointing to `to`


@pytest.fixture(scope="module")
def loop() -> Iterator[str]:
    disks = LoopDisks()
    try:
        yield disks.blank(64).device
    finally:
        disks.cleanup()


def _real_dir(path: str, empty: bool) -> None:
    os.mkdir(path)
    if not empty:
        Path(path, "data").write_text("x")


def _real_file(path: str, empty: bool) -> None:
    Path(path).write_text("" if empty else "data")


@pytest.fixture(params=["fake", "real"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    root = tempfile.mkdtemp(prefix="dlpv-host-contract-")
    if request.param == "fake":
        fake = FakeHost()
        fake.add_dir(root)
        fake.add_device("/dev/fake0", "7:99", 64 * MIB)
        yield Side(fake, root, "/dev/fake0", "7:99", fake.add_dir, fake.add_file, lambda p, _to: fake.add_link(p))
        return
    device: str = request.getfixturevalue("loop")
    st = os.stat(device)
    runner = Runner()
    host = LocalHost(DiskInventory(runner), Mounter(runner), Filesystems(runner))
    subprocess.run(["wipefs", "-a", "-q", device], check=True)  # the test's own loop device
    try:
        number = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        yield Side(host, root, device, number, _real_dir, _real_file, lambda p, to: os.symlink(to, p))
    finally:
        for name in os.listdir(root):
            subprocess.run(["umount", "-q", os.path.join(root, name)], check=False)
        shutil.rmtree(root)


async def test_directory_targets(side: Side) -> None:
    h, t = side.host, f"{side.root}/target"
    assert await h.make_target(t, True) is True
    assert await h.make_target(t, True) is False  # there and empty: accepted
    assert await h.is_dir(t) and await h.exists(t) and await h.target_removable(t)
    with pytest.raises(WrongKind):
        await h.make_target(t, False)
    full = f"{side.root}/full"
    side.put_dir(full, False)
    with pytest.raises(NotEmpty):
        await h.make_target(full, True)
    assert not await h.target_removable(full)
    with pytest.raises(NoParent):
        await h.make_target(f"{side.root}/absent/target", True)
    await h.remove_target(t)
    assert not await h.exists(t) and not await h.target_removable(t)
    await h.remove_target(t)  # absent: fine


async def test_file_targets(side: Side) -> None:
    h, t = side.host, f"{side.root}/dev-target"
    assert await h.make_target(t, False) is True
    assert await h.make_target(t, False) is False
    assert not await h.is_dir(t) and await h.target_removable(t)
    with pytest.raises(WrongKind):
        await h.make_target(t, True)
    data = f"{side.root}/data-file"
    side.put_file(data, False)
    with pytest.raises(NotEmpty):
        await h.make_target(data, False)
    assert not await h.target_removable(data)
    await h.remove_target(t)
    assert not await h.exists(t)


async def test_device_numbers(side: Side) -> None:
    assert await side.host.device_number(side.device) == side.number
    side.put_file(f"{side.root}/plain", True)
    with pytest.raises(NotABlockDevice):
        await side.host.device_number(f"{side.root}/plain")
    assert await side.host.block_size(side.device) == 64 * MIB
    assert await side.host.read_problem(side.device) is None


async def test_format_mount_and_unmount(side: Side) -> None:
    h, t = side.host, f"{side.root}/mnt"
    assert dict(await h.probe(side.device)) == {}
    await h.make_filesystem(side.device, "ext4")
    assert (await h.probe(side.device)).get("TYPE") == "ext4"
    await h.make_target(t, True)
    await h.mount(side.device, t, "ext4", ["ro", "nosuid", "nodev"])
    found = [m for m in await h.mounts() if m.mount_point == t]
    assert len(found) == 1 and found[0].fstype == "ext4" and found[0].major_minor == side.number
    assert found[0].read_only
    assert not await h.target_removable(t)  # a mounted filesystem is not an empty directory
    stats = await h.stats(t)
    assert not stats.block and 0 < stats.total <= 64 * MIB
    await h.unmount(t)
    assert not [m for m in await h.mounts() if m.mount_point == t]
    await h.unmount(t)  # not mounted: nothing to do
    assert await h.target_removable(t)


async def test_bind_a_device_onto_a_file(side: Side) -> None:
    h, t = side.host, f"{side.root}/raw"
    await h.make_target(t, False)
    await h.bind_mount(side.device, t, True)
    found = [m for m in await h.mounts() if m.mount_point == t]
    assert len(found) == 1 and found[0].fstype == "devtmpfs" and found[0].read_only
    assert found[0].root == side.device.removeprefix("/dev")
    assert not await h.is_dir(t)
    await h.unmount(t)
    assert not [m for m in await h.mounts() if m.mount_point == t]


async def test_symbolic_links_on_the_way(side: Side) -> None:
    h, r = side.host, side.root
    side.put_dir(f"{r}/plain", True)
    assert await h.link_problem(f"{r}/plain") is None
    assert await h.link_problem(f"{r}/plain/missing/target") is None  # a missing parent is answered later
    side.put_link(f"{r}/link", "/etc")
    assert await h.link_problem(f"{r}/link") == "is a symbolic link"
    assert await h.link_problem(f"{r}/link/target") == "goes through a symbolic link"
    assert await h.link_problem(f"{r}/link/deeper/target") == "goes through a symbolic link"
