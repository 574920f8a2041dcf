"""The host layer: the only code that runs commands or touches /proc, /sys and /dev."""

from .disks import DiskFailure, DiskInventory, PoolDisk, ScanResult
from .filesystems import SUPPORTED_FS, FilesystemExists, Filesystems, FsStats
from .mounts import Mounter
from .parsers import DiskTable, Extent, MountInfo, PartitionEntry, partition_node
from .partitions import (
    InsufficientCapacity,
    NotAPoolDisk,
    Partition,
    PartitionBusy,
    PartitionError,
    PartitionManager,
    UnsafeOperation,
)
from .runner import CommandError, CommandTimeout, Completed, Runner

__all__ = [
    "SUPPORTED_FS",
    "CommandError",
    "CommandTimeout",
    "Completed",
    "DiskFailure",
    "DiskInventory",
    "DiskTable",
    "Extent",
    "FilesystemExists",
    "Filesystems",
    "FsStats",
    "InsufficientCapacity",
    "MountInfo",
    "Mounter",
    "NotAPoolDisk",
    "Partition",
    "PartitionBusy",
    "PartitionEntry",
    "PartitionError",
    "PartitionManager",
    "PoolDisk",
    "Runner",
    "ScanResult",
    "UnsafeOperation",
    "partition_node",
]
