"""Host layer: parsers on output captured from real tools (util-linux 2.38.1, Debian 12), plus the
pure decisions built on them (pool classification, best fit, name/option validation) and the runner."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from csidriver.host.disks import Candidate, DiskInventory, table_to_pool_disk
from csidriver.host.filesystems import signatures
from csidriver.host.mounts import validate_options
from csidriver.host.parsers import (
    DiskTable,
    Extent,
    PartitionEntry,
    free_extents,
    parse_blkid_probe,
    parse_mountinfo,
    parse_sfdisk_json,
    partition_node,
    partition_number,
)
from csidriver.host.partitions import (
    InsufficientCapacity,
    NotAPoolDisk,
    PartitionManager,
    UnsafeOperation,
    best_fit,
    validate_name,
)
from csidriver.host.runner import CommandError, CommandTimeout, Completed, Runner

DATA = Path(__file__).parent / "data"
MiB = 1 << 20
LINUX = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


def data(name: str) -> str:
    return (DATA / name).read_text()


def table(name: str) -> DiskTable:
    return parse_sfdisk_json(data(name))


# ---------------------------------------------------------------- sfdisk


def test_sfdisk_json_parted_pool_disk() -> None:
    t = table("sfdisk_json_pool_a.json")
    assert (t.label, t.disk_guid, t.sector_size) == ("gpt", "26989174-A51A-42F5-BB93-366673F06BDC", 512)
    assert (t.first_lba, t.last_lba, t.table_length) == (34, 524254, 128)
    assert t.partitions == (
        PartitionEntry(1, "/dev/loop0p1", 2048, 18432, LINUX, "1D292B07-8C9E-4435-AF78-24851CB45B67", "pool-a", ""),
        PartitionEntry(2, "/dev/loop0p2", 20480, 40960, LINUX, "89E85B95-6F4C-D847-83D1-384F5913C662", "vol-one", ""),
        PartitionEntry(
            3,
            "/dev/loop0p3",
            102400,
            2048,
            LINUX,
            "DD534A44-4769-E149-97DE-2032327DD122",
            "vol-two",
            "RequiredPartition GUID:63",
        ),
    )


def test_sfdisk_json_msftdata_meta_partition() -> None:
    t = table("sfdisk_json_msftdata.json")
    meta = t.by_number(1)
    assert meta is not None
    assert (meta.name, meta.type) == ("ssd", "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
    assert (t.last_lba, t.table_length) == (131038, 128)


def test_sfdisk_json_reports_non_default_table_length() -> None:
    t = table("sfdisk_json_table_length_32.json")
    assert (t.table_length, t.first_lba, t.last_lba) == (32, 2048, 131062)
    assert [(p.number, p.node, p.name) for p in t.partitions] == [(1, "/dev/loop3p1", "only-one")]


@pytest.mark.parametrize(
    ("json_file", "dump_file"),
    [
        ("sfdisk_json_pool_a.json", "sfdisk_dump_pool_a.txt"),
        ("sfdisk_json_msftdata.json", "sfdisk_dump_msftdata.txt"),
        ("sfdisk_json_table_length_32.json", "sfdisk_dump_table_length_32.txt"),
    ],
)
def test_json_and_dump_agree_on_table_length(json_file: str, dump_file: str) -> None:
    """Both forms omit table-length when it is 128 and print it otherwise: JSON alone is enough."""
    lines = [ln.split(":", 1)[1] for ln in data(dump_file).splitlines() if ln.startswith("table-length:")]
    assert table(json_file).table_length == (int(lines[0]) if lines else 128)


def test_sfdisk_json_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_sfdisk_json("sfdisk: cannot open /dev/nothing")


@pytest.mark.parametrize(
    ("node", "disk", "number"),
    [
        ("/dev/loop3p12", "/dev/loop3", 12),
        ("/dev/sdb2", "/dev/sdb", 2),
        ("/dev/sdb12", "", 12),
        ("/dev/nvme0n1p3", "/dev/nvme0n1", 3),
        ("/dev/mmcblk0p1", "", 1),
    ],
)
def test_partition_number(node: str, disk: str, number: int) -> None:
    assert partition_number(node, disk) == number


@pytest.mark.parametrize(
    ("disk", "node"),
    [("/dev/loop0", "/dev/loop0p3"), ("/dev/nvme0n1", "/dev/nvme0n1p3"), ("/dev/sdb", "/dev/sdb3")],
)
def test_partition_node(disk: str, node: str) -> None:
    assert partition_node(disk, 3) == node


# ---------------------------------------------------------------- free space


def test_free_extents_on_captured_table() -> None:
    # p1 1-10 MiB, p2 10-30 MiB, p3 50-51 MiB; usable end 255.98 MiB rounds down to 255 MiB.
    assert free_extents(table("sfdisk_json_pool_a.json")) == [
        Extent(30 * MiB, 20 * MiB),
        Extent(51 * MiB, 204 * MiB),
    ]


def test_free_extents_align_inward_and_drop_slivers() -> None:
    parts = (
        PartitionEntry(1, "/dev/sdx1", 2048, 18432, LINUX, "", "pool", ""),
        PartitionEntry(2, "/dev/sdx2", 20480, 2047, LINUX, "", "odd-end", ""),  # ends 1 sector short
        PartitionEntry(3, "/dev/sdx3", 23552, 2048, LINUX, "", "half", ""),  # 11.5-12.5 MiB: sub-MiB gap
    )
    t = DiskTable("gpt", "G", 512, 34, 40959, 128, parts)  # usable up to 20 MiB
    assert free_extents(t) == [Extent(13 * MiB, 7 * MiB)]


def test_free_extents_with_4k_sectors() -> None:
    parts = (PartitionEntry(1, "/dev/nvme0n1p1", 256, 2304, LINUX, "", "pool", ""),)
    t = DiskTable("gpt", "G", 4096, 6, 262138, 128, parts)  # 1 GiB disk
    assert free_extents(t) == [Extent(10 * MiB, 1013 * MiB)]


def test_best_fit_picks_smallest_fitting_extent() -> None:
    t = table("sfdisk_json_pool_a.json")
    assert best_fit(t, 10 * MiB) == Extent(30 * MiB, 20 * MiB)
    assert best_fit(t, 20 * MiB) == Extent(30 * MiB, 20 * MiB)
    assert best_fit(t, 21 * MiB) == Extent(51 * MiB, 204 * MiB)


def test_best_fit_reports_largest_extent() -> None:
    with pytest.raises(InsufficientCapacity) as caught:
        best_fit(table("sfdisk_json_pool_a.json"), 205 * MiB)
    assert caught.value.largest_extent == 204 * MiB


def test_best_fit_needs_a_free_gpt_entry() -> None:
    t = table("sfdisk_json_pool_a.json")
    full = DiskTable(t.label, t.disk_guid, 512, t.first_lba, t.last_lba, 3, t.partitions)
    with pytest.raises(InsufficientCapacity, match="no free GPT entry"):
        best_fit(full, MiB)


# ---------------------------------------------------------------- pool classification


def test_pool_disk_from_parted_table() -> None:
    disk = table_to_pool_disk(Candidate("loop0", "/dev/loop0", 256 * MiB), table("sfdisk_json_pool_a.json"))
    assert disk is not None
    assert (disk.pool, disk.guid, disk.size) == ("pool-a", "26989174-A51A-42F5-BB93-366673F06BDC", 256 * MiB)
    assert (disk.free, disk.largest_extent, disk.free_entries) == (224 * MiB, 204 * MiB, 125)


def test_pool_disk_with_msftdata_flag() -> None:
    disk = table_to_pool_disk(Candidate("loop1", "/dev/loop1", 64 * MiB), table("sfdisk_json_msftdata.json"))
    assert disk is not None and disk.pool == "ssd"


@pytest.mark.parametrize("meta_name", ["", "EFI System Partition", "x" * 37])
def test_not_a_pool_disk_without_a_valid_meta_name(meta_name: str) -> None:
    parts = (PartitionEntry(1, "/dev/sdx1", 2048, 2048, LINUX, "", meta_name, ""),)
    t = DiskTable("gpt", "G", 512, 34, 99999, 128, parts)
    assert table_to_pool_disk(Candidate("sdx", "/dev/sdx", MiB), t) is None


def test_not_a_pool_disk_when_first_entry_is_not_number_one() -> None:
    t = table("sfdisk_json_pool_a.json")
    only_two = DiskTable("gpt", "G", 512, 34, t.last_lba, 128, t.partitions[1:])
    assert table_to_pool_disk(Candidate("sdx", "/dev/sdx", MiB), only_two) is None
    dos = DiskTable("dos", "0x1234", 512, 0, 0, 128, t.partitions)
    assert table_to_pool_disk(Candidate("sdx", "/dev/sdx", MiB), dos) is None


def test_inventory_filters_use_search_on_name_and_path() -> None:
    runner = Runner()
    default = DiskInventory(runner, None, None)
    assert default.wanted("sdb", "/dev/sdb")
    assert not default.wanted("zram0", "/dev/zram0")
    assert not default.wanted("dm-1", "/dev/dm-1")
    included = DiskInventory(runner, r"^(loop[0-3]|zram0)$", r"loop2")
    assert included.wanted("loop1", "/dev/loop1")
    assert included.wanted("zram0", "/dev/zram0")
    assert not included.wanted("loop2", "/dev/loop2")
    assert not included.wanted("loop5", "/dev/loop5")
    by_path = DiskInventory(runner, r"^/dev/nvme", None)
    assert by_path.wanted("nvme0n1", "/dev/nvme0n1")
    assert not by_path.wanted("sda", "/dev/sda")


# ---------------------------------------------------------------- mountinfo


def test_mountinfo_sample() -> None:
    mounts = parse_mountinfo(data("mountinfo_sample.txt"))
    assert [m.mount_point for m in mounts] == ["/", "/tmp/mnt with space", "/tmp/tab", "/tmp/blockfile"]
    fs = mounts[1]
    assert (fs.mount_id, fs.parent_id, fs.major_minor, fs.root) == (42, 27, "7:2", "/")
    assert (fs.fstype, fs.source, fs.options, fs.super_options) == (
        "ext4",
        "/dev/loop2",
        ("rw", "relatime"),
        ("rw",),
    )
    assert mounts[2].source == "my tmp"
    assert mounts[2].super_options == ("rw", "size=1024k", "mode=755")
    bind = mounts[3]
    assert (bind.root, bind.fstype, bind.major_minor, bind.read_only) == ("/loop0p2", "devtmpfs", "0:6", True)


def test_mountinfo_optional_fields_and_escapes() -> None:
    line = r"36 35 98:0 /mnt1 /mnt/a\011b\134c rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue"
    (m,) = parse_mountinfo(line + "\n\n")
    assert m.optional_fields == ("master:1", "shared:7")
    assert (m.root, m.mount_point, m.fstype) == ("/mnt1", "/mnt/a\tb\\c", "ext3")


def test_mountinfo_rejects_malformed_line() -> None:
    with pytest.raises(ValueError):
        parse_mountinfo("1 2 3:4 / /x rw shared:1")


# ---------------------------------------------------------------- blkid


def test_blkid_ext4_and_label_escapes() -> None:
    assert parse_blkid_probe(data("blkid_ext4_disk.txt"))["TYPE"] == "ext4"
    found = parse_blkid_probe(data("blkid_ext4_label.txt"))
    assert found["LABEL"] == 'a b$"x'
    assert (found["USAGE"], found["BLOCK_SIZE"]) == ("filesystem", "1024")


def test_blkid_xfs_and_gpt() -> None:
    assert signatures(parse_blkid_probe(data("blkid_xfs_disk.txt")))["TYPE"] == "xfs"
    gpt = signatures(parse_blkid_probe(data("blkid_gpt_disk.txt")))
    assert gpt == {"PTUUID": "26989174-a51a-42f5-bb93-366673f06bdc", "PTTYPE": "gpt"}


def test_blank_partition_reports_only_its_entry() -> None:
    """blkid exits 0 on a blank GPT partition, printing PART_ENTRY_* keys: that is still blank."""
    raw = parse_blkid_probe(data("blkid_blank_partition.txt"))
    assert raw["PART_ENTRY_NAME"] == "vol-one" and raw["PART_ENTRY_NUMBER"] == "2"
    assert signatures(raw) == {}
    assert signatures(parse_blkid_probe(data("blkid_partition_with_attrs.txt"))) == {}
    assert parse_blkid_probe("") == {}


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("name", ["0b1e4f0a-6a43-4c8c-9f0e-2d7c3b1a9e55", "a", "vol_1.x-Y"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 37, 'a"b', "a b", "a,b", "é", "a\nb", "../x"])
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError):
        validate_name(name)


def test_mount_options() -> None:
    assert validate_options(["noatime", "discard", "uid=1000"]) == ["noatime", "discard", "uid=1000"]
    for bad in ["a,b", "-o", "a b", "", "é", "x\t"]:
        with pytest.raises(ValueError):
            validate_options([bad])


# ---------------------------------------------------------------- runner


async def test_runner_output_and_status() -> None:
    script = "echo out; echo err >&2; exit 3"
    done = await Runner().run(["sh", "-c", script], check=False)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    with pytest.raises(CommandError, match="exited with status 3: err") as caught:
        await Runner().run(["sh", "-c", script])
    assert caught.value.returncode == 3 and caught.value.argv == ("sh", "-c", script)


async def test_runner_input_and_clean_environment() -> None:
    assert (await Runner().run(["cat"], input=b"hello")).stdout == "hello"
    env = (await Runner().run(["env"])).stdout.splitlines()
    assert sorted(k.split("=")[0] for k in env) == ["LC_ALL", "PATH"]
    assert "LC_ALL=C" in env


async def test_runner_timeout_kills() -> None:
    with pytest.raises(CommandTimeout, match=r"timed out after 0\.2s"):
        await Runner().run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.2)


def running_with_arg(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if marker.encode() in handle.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue
    return found


async def test_runner_cancellation_kills_and_never_hangs() -> None:
    """Cancelled at every stage (even mid-spawn), commands are killed and reaped promptly."""
    marker = "29.7654"
    runner = Runner()
    for delay in (0.0, 0.001, 0.005, 0.02, 0.1):
        tasks = [asyncio.create_task(runner.run(["sleep", marker])) for _ in range(5)]
        await asyncio.sleep(delay)
        for task in tasks:
            task.cancel()
        async with asyncio.timeout(10):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
    await asyncio.sleep(0.1)
    assert await asyncio.to_thread(running_with_arg, marker) == []


async def test_runner_missing_program() -> None:
    with pytest.raises(CommandError) as caught:
        await Runner().run(["/nonexistent/tool"])
    assert caught.value.returncode == 127


# ---------------------------------------------------------------- safety with a fake runner


class FakeRunner(Runner):
    """Answers `sfdisk --json` with a captured table and records every command."""

    def __init__(self, json_text: str) -> None:
        super().__init__()
        self.json_text = json_text
        self.calls: list[tuple[str, ...]] = []

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109
        check: bool = True,
    ) -> Completed:
        self.calls.append(tuple(argv))
        if tuple(argv[:2]) == ("sfdisk", "--json"):
            return Completed(tuple(argv), 0, self.json_text, "")
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def fake_disk(tmp_path: Path) -> str:
    disk = tmp_path / "disk"
    disk.write_bytes(b"")
    return str(disk)


async def test_no_write_to_a_disk_of_another_pool(fake_disk: str, tmp_path: Path) -> None:
    runner = FakeRunner(data("sfdisk_json_msftdata.json"))
    manager = PartitionManager(runner, str(tmp_path / "locks"))
    with pytest.raises(NotAPoolDisk):
        await manager.create(fake_disk, "nvme-ssd", "vol-1", MiB)
    with pytest.raises(NotAPoolDisk):
        await manager.delete(fake_disk, "ss", "vol-1")
    assert all(call[:2] == ("sfdisk", "--json") for call in runner.calls)


async def test_absent_name_is_noop_and_meta_name_refused(fake_disk: str, tmp_path: Path) -> None:
    runner = FakeRunner(data("sfdisk_json_msftdata.json"))
    manager = PartitionManager(runner, str(tmp_path / "locks"))
    assert await manager.delete(fake_disk, "ssd", "absent") is False
    with pytest.raises(UnsafeOperation):
        await manager.delete(fake_disk, "ssd", "ssd")  # partition #1 is never a volume
    with pytest.raises(UnsafeOperation):
        await manager.create(fake_disk, "ssd", "ssd", MiB)
    assert all(call[:2] == ("sfdisk", "--json") for call in runner.calls)


async def test_hostile_names_never_reach_a_command(fake_disk: str, tmp_path: Path) -> None:
    runner = FakeRunner(data("sfdisk_json_msftdata.json"))
    manager = PartitionManager(runner, str(tmp_path / "locks"))
    for bad in ['x", type=EF', "a\nname=b"]:
        with pytest.raises(ValueError):
            await manager.create(fake_disk, "ssd", bad, MiB)
    assert runner.calls == []
