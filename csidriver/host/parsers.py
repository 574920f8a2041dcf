"""Pure parsers for the text that host tools print (sfdisk, blkid, /proc/self/mountinfo).

Nothing here runs a command or touches the system, so every function is tested on captured output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MIB = 1024 * 1024
DEFAULT_GPT_ENTRIES = 128

_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_BLKID_ESCAPE = re.compile(r"\\(.)")
_TRAILING_NUMBER = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class PartitionEntry:
    """One entry of a partition table, in sectors as sfdisk reports it."""

    number: int
    node: str
    start: int
    size: int
    type: str
    uuid: str
    name: str
    attrs: str


@dataclass(frozen=True)
class DiskTable:
    """A disk's partition table as read by ``sfdisk --json``."""

    label: str
    disk_guid: str
    sector_size: int
    first_lba: int
    last_lba: int
    table_length: int
    partitions: tuple[PartitionEntry, ...]

    def by_number(self, number: int) -> PartitionEntry | None:
        return next((p for p in self.partitions if p.number == number), None)

    def pool(self) -> str | None:
        """The pool this table's disk belongs to: the GPT name of its partition #1 (the meta partition), or None
        when it is not GPT or has no partition #1. Whether that name is a valid pool name is the caller's check."""
        meta = self.by_number(1)
        return meta.name if self.label == "gpt" and meta is not None else None


@dataclass(frozen=True)
class Extent:
    """A free, aligned range of a disk, in bytes."""

    start_bytes: int
    size_bytes: int


@dataclass(frozen=True)
class MountInfo:
    """One line of /proc/self/mountinfo, escapes decoded."""

    mount_id: int
    parent_id: int
    major_minor: str
    root: str
    mount_point: str
    options: tuple[str, ...]
    fstype: str
    source: str
    super_options: tuple[str, ...]
    optional_fields: tuple[str, ...] = ()

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def partition_node(disk_path: str, number: int) -> str:
    """The device node of partition ``number``: a disk name ending in a digit takes a ``p``."""
    if number < 1:
        raise ValueError(f"partition numbers start at 1, got {number}")
    separator = "p" if disk_path[-1:].isdigit() else ""
    return f"{disk_path}{separator}{number}"


def partition_number(node: str, disk_path: str = "") -> int:
    """The partition number encoded in a node name (``/dev/loop3p12`` -> 12, ``/dev/sdb2`` -> 2)."""
    if disk_path and node.startswith(disk_path):
        suffix = node[len(disk_path) :].removeprefix("p")
        if suffix.isdigit():
            return int(suffix)
    match = _TRAILING_NUMBER.search(node)
    if match is None:
        raise ValueError(f"no partition number in device name {node!r}")
    return int(match.group(1))


def parse_sfdisk_json(text: str) -> DiskTable:
    """Parse ``sfdisk --json DISK``; ``table-length`` appears only when it differs from 128."""
    try:
        table = json.loads(text)["partitiontable"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"not sfdisk JSON output: {exc}") from exc
    device = str(table.get("device", ""))
    entries = tuple(_partition_entry(p, device) for p in table.get("partitions", ()))
    return DiskTable(
        label=str(table["label"]),
        disk_guid=str(table.get("id", "")),
        sector_size=int(table.get("sectorsize", 512)),
        first_lba=int(table.get("firstlba", 0)),
        last_lba=int(table.get("lastlba", 0)),
        table_length=int(table.get("table-length", DEFAULT_GPT_ENTRIES)),
        partitions=tuple(sorted(entries, key=lambda p: p.number)),
    )


def _partition_entry(raw: Mapping[str, Any], device: str) -> PartitionEntry:
    node = str(raw["node"])
    return PartitionEntry(
        number=partition_number(node, device),
        node=node,
        start=int(raw["start"]),
        size=int(raw["size"]),
        type=str(raw.get("type", "")),
        uuid=str(raw.get("uuid", "")),
        name=str(raw.get("name", "")),
        attrs=str(raw.get("attrs", "")),
    )


def free_extents(table: DiskTable, align_bytes: int = MIB) -> list[Extent]:
    """Free space in the usable range not covered by partitions, shrunk inward to the alignment grid."""
    if align_bytes <= 0:
        raise ValueError("alignment must be positive")
    sector = table.sector_size
    cursor = table.first_lba * sector
    end = (table.last_lba + 1) * sector
    gaps: list[tuple[int, int]] = []
    for part in sorted(table.partitions, key=lambda p: p.start):
        gaps.append((cursor, part.start * sector))
        cursor = max(cursor, (part.start + part.size) * sector)
    gaps.append((cursor, end))
    return [e for e in (_align(s, min(t, end), align_bytes) for s, t in gaps) if e is not None]


def _align(start: int, end: int, grid: int) -> Extent | None:
    first = -(-start // grid) * grid
    last = (end // grid) * grid
    return Extent(first, last - first) if last > first else None


def parse_mountinfo(text: str) -> list[MountInfo]:
    """Parse /proc/self/mountinfo (see proc(5)); blank lines are skipped."""
    return [_mount_line(line) for line in text.splitlines() if line.strip()]


def _mount_line(line: str) -> MountInfo:
    fields = line.split(" ")
    try:
        dash = fields.index("-", 6)
        fstype, source, super_options = fields[dash + 1 : dash + 4]
    except ValueError as exc:
        raise ValueError(f"malformed mountinfo line: {line!r}") from exc
    return MountInfo(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major_minor=fields[2],
        root=unescape_octal(fields[3]),
        mount_point=unescape_octal(fields[4]),
        options=tuple(fields[5].split(",")),
        fstype=unescape_octal(fstype),
        source=unescape_octal(source),
        super_options=tuple(super_options.split(",")),
        optional_fields=tuple(fields[6:dash]),
    )


def unescape_octal(value: str) -> str:
    r"""Decode the kernel's ``\ooo`` escapes (space, tab, newline, backslash)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), value)


def parse_blkid_probe(text: str) -> dict[str, str]:
    """Parse ``blkid -p -o export DEV``; values have shell-special characters backslash-escaped.

    blkid exits 2 when it finds nothing: the caller treats that as empty output (a blank device).
    """
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            found[key.strip()] = _BLKID_ESCAPE.sub(lambda m: m.group(1), value)
    return found
