"""Which mount flags a volume may be mounted with: an allow-list per filesystem, checked at CreateVolume (flags of
the StorageClass's mountOptions arrive there) and again at NodePublishVolume.

A flag is a mount(8) `-o` option: `name` or `name=value`. Anything not listed is refused with the reason, because
an option can do far more than tune a filesystem: `loop`/`offset=` make mount(8) attach a loop device over any file,
`X-mount.*` runs helpers, `errors=panic` lets one bad block reboot the node, `dev`/`suid` let a volume's content
gain device access or root, `bind`/`remount`/`move` change what is mounted where. Filesystem mounts always carry
`nosuid,nodev` after the user's flags, so nothing a user writes can undo them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_NUMBER = r"[0-9]{1,10}"
_SIZE = r"[0-9]{1,12}[kKmMgG]?"

# Flags every supported filesystem takes: access time, sync and execution behaviour, read-only.
_GENERIC: Mapping[str, str | None] = {
    "defaults": None,
    "ro": None,
    "rw": None,
    "atime": None,
    "noatime": None,
    "diratime": None,
    "nodiratime": None,
    "relatime": None,
    "norelatime": None,
    "strictatime": None,
    "nostrictatime": None,
    "lazytime": None,
    "nolazytime": None,
    "sync": None,
    "async": None,
    "dirsync": None,
    "exec": None,
    "noexec": None,
    "nosuid": None,
    "nodev": None,
    "iversion": None,
    "noiversion": None,
}

_QUOTA = {name: None for name in ("quota", "noquota", "usrquota", "grpquota", "prjquota")}

_PER_FS: Mapping[str, Mapping[str, str | None]] = {
    "ext4": {
        **_QUOTA,
        "discard": None,
        "nodiscard": None,
        "barrier": r"[01]",
        "nobarrier": None,
        "commit": _NUMBER,
        "data": r"ordered|writeback|journal",
        "errors": r"remount-ro|continue",
        "delalloc": None,
        "nodelalloc": None,
        "auto_da_alloc": None,
        "noauto_da_alloc": None,
        "dioread_lock": None,
        "dioread_nolock": None,
        "journal_checksum": None,
        "nojournal_checksum": None,
        "journal_async_commit": None,
        "journal_ioprio": r"[0-7]",
        "stripe": _NUMBER,
        "max_batch_time": _NUMBER,
        "min_batch_time": _NUMBER,
        "inode_readahead_blks": _NUMBER,
        "init_itable": _NUMBER,
        "noinit_itable": None,
        "block_validity": None,
        "noblock_validity": None,
        "user_xattr": None,
        "acl": None,
        "noacl": None,
        "i_version": None,
        "dax": r"always|never|inode",
    },
    "xfs": {
        **_QUOTA,
        "discard": None,
        "nodiscard": None,
        "allocsize": _SIZE,
        "inode32": None,
        "inode64": None,
        "largeio": None,
        "nolargeio": None,
        "logbufs": r"[2-8]",
        "logbsize": _SIZE,
        "uquota": None,
        "gquota": None,
        "pquota": None,
        "uqnoenforce": None,
        "gqnoenforce": None,
        "pqnoenforce": None,
        "swalloc": None,
        "wsync": None,
        "filestreams": None,
        "sunit": _NUMBER,
        "swidth": _NUMBER,
        "dax": r"always|never|inode",
    },
    "btrfs": {
        "discard": r"sync|async",
        "nodiscard": None,
        "compress": r"(zlib|lzo|zstd|no)(:[0-9]{1,2})?",
        "compress-force": r"(zlib|lzo|zstd)(:[0-9]{1,2})?",
        "commit": _NUMBER,
        "space_cache": r"v2",
        "nospace_cache": None,
        "ssd": None,
        "nossd": None,
        "ssd_spread": None,
        "nossd_spread": None,
        "autodefrag": None,
        "noautodefrag": None,
        "datacow": None,
        "nodatacow": None,
        "datasum": None,
        "nodatasum": None,
        "flushoncommit": None,
        "noflushoncommit": None,
        "barrier": None,
        "nobarrier": None,
        "acl": None,
        "noacl": None,
        "user_subvol_rm_allowed": None,
        "subvol": r"[A-Za-z0-9._/-]{1,255}",
        "subvolid": _NUMBER,
    },
}

# Why a well-known but refused flag is refused, so the message tells the user what to do instead.
_REFUSED_WHY: Mapping[str, str] = {
    "dev": "volumes are always mounted nodev",
    "suid": "volumes are always mounted nosuid",
    "loop": "it would attach a loop device over a file",
    "offset": "it would attach a loop device over a file",
    "sizelimit": "it would attach a loop device over a file",
    "bind": "the driver decides what is bind-mounted",
    "rbind": "the driver decides what is bind-mounted",
    "remount": "a volume is mounted once per target",
    "move": "a volume is mounted once per target",
    "user": "only the driver mounts volumes",
    "users": "only the driver mounts volumes",
    "owner": "only the driver mounts volumes",
    "group": "only the driver mounts volumes",
}

FORCED = ("nosuid", "nodev")
_SHAPE = re.compile(r"[A-Za-z0-9_.:/+@-]{1,64}(=[A-Za-z0-9_.:/+@-]{1,256})?")


def flag_problem(flag: str, fs_type: str) -> str | None:
    """Why `flag` may not be used to mount a `fs_type` volume, or None when it may."""
    if not _SHAPE.fullmatch(flag) or flag.startswith("-"):
        return f"mount flag {flag!r} is not allowed: one option per flag, name or name=value, no commas or spaces"
    name, has_value, value = flag.partition("=")
    if name.lower().startswith("x-"):
        return f"mount flag {flag!r} is not allowed: mount helper options (x-*, X-mount.*) are refused"
    if name == "errors" and value == "panic":
        return f"mount flag {flag!r} is not allowed: one I/O error would stop the whole node; use errors=remount-ro"
    if name in _REFUSED_WHY:
        return f"mount flag {flag!r} is not allowed: {_REFUSED_WHY[name]}"
    table = {**_GENERIC, **_PER_FS.get(fs_type, {})}
    if name not in table:
        return f"mount flag {flag!r} is not allowed for {fs_type} (see the mount flag policy in docs/operations.md)"
    pattern = table[name]
    if pattern is None and has_value:
        return f"mount flag {name!r} takes no value"
    if pattern is not None and has_value and not re.fullmatch(pattern, value):
        return f"mount flag {flag!r} has an invalid value for {fs_type}"
    if pattern is not None and not has_value and name not in ("discard", "barrier"):
        return f"mount flag {name!r} needs a value ({name}=...)"
    return None


def allowed_flags(fs_type: str) -> list[str]:
    """Every allowed flag name for a filesystem, sorted (for docs and messages)."""
    return sorted({**_GENERIC, **_PER_FS.get(fs_type, {})})
