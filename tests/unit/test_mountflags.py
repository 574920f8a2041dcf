"""The mount flag policy: an allow-list per filesystem; every refusal names the flag and why."""

from __future__ import annotations

import pytest

from csidriver.services.mountflags import FORCED, allowed_flags, flag_problem
from csidriver.services.requests import AccessMode, Capability, capability_problem


@pytest.mark.parametrize(
    ("flag", "fs"),
    [
        ("noatime", "ext4"),
        ("defaults", "ext4"),
        ("ro", "xfs"),
        ("errors=remount-ro", "ext4"),
        ("commit=30", "ext4"),
        ("data=ordered", "ext4"),
        ("discard", "ext4"),
        ("barrier=0", "ext4"),
        ("logbufs=8", "xfs"),
        ("inode64", "xfs"),
        ("allocsize=64k", "xfs"),
        ("compress=zstd:3", "btrfs"),
        ("discard=async", "btrfs"),
        ("subvol=data/a", "btrfs"),
    ],
)
def test_allowed(flag: str, fs: str) -> None:
    assert flag_problem(flag, fs) is None


@pytest.mark.parametrize(
    ("flag", "fs", "words"),
    [
        ("loop", "ext4", ["loop device"]),
        ("offset=0", "ext4", ["loop device"]),
        ("sizelimit=1", "ext4", ["loop device"]),
        ("X-mount.mkdir", "ext4", ["x-*"]),
        ("x-systemd.automount", "xfs", ["x-*"]),
        ("errors=panic", "ext4", ["remount-ro"]),
        ("dev", "ext4", ["nodev"]),
        ("suid", "btrfs", ["nosuid"]),
        ("bind", "ext4", ["bind"]),
        ("rbind", "ext4", ["bind"]),
        ("remount", "ext4", ["once"]),
        ("move", "ext4", ["once"]),
        ("user", "ext4", ["only the driver"]),
        ("owner", "ext4", ["only the driver"]),
        ("context=x", "ext4", ["not allowed for ext4"]),
        ("-o", "ext4", ["one option"]),
        ("a,b", "ext4", ["no commas"]),
        ("", "ext4", ["one option"]),
        ("noatime ", "ext4", ["no commas or spaces"]),
        ("logbufs=8", "ext4", ["not allowed for ext4"]),
        ("compress=zstd", "ext4", ["not allowed for ext4"]),
        ("data=bogus", "ext4", ["invalid value"]),
        ("noatime=1", "ext4", ["takes no value"]),
        ("commit", "ext4", ["needs a value"]),
        ("logbufs=99", "xfs", ["invalid value"]),
    ],
)
def test_refused(flag: str, fs: str, words: list[str]) -> None:
    problem = flag_problem(flag, fs)
    assert problem is not None
    assert repr(flag) in problem or repr(flag.partition("=")[0]) in problem
    for w in words:
        assert w in problem


def test_capability_checks_flags_against_its_filesystem_default_ext4() -> None:
    mode = AccessMode.SINGLE_NODE_WRITER
    assert capability_problem(Capability(block=False, access_mode=mode, mount_flags=("data=journal",))) is None
    assert "xfs" in (capability_problem(Capability(False, mode, "xfs", ("data=journal",))) or "")
    assert "raw block" in (capability_problem(Capability(True, mode, "", ("noatime",))) or "")


def test_forced_flags_are_allowed_and_documented() -> None:
    for fs in ("ext4", "xfs", "btrfs"):
        assert set(FORCED) <= set(allowed_flags(fs))
