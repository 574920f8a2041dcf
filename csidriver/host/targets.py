"""Publish targets on this host: the empty directory or file a volume is mounted on, made and removed safely.

A target is created only where nothing is (its parent must exist: the CO makes it); an existing one is accepted only
when empty and of the right kind, so a volume is never mounted over files or bound over data; only an empty one is
ever removed.
"""

from __future__ import annotations

import errno
import os
import stat


class TargetError(Exception):
    """A target that cannot be used or removed as asked."""


class NoParent(TargetError):
    """The target's parent directory does not exist."""


class WrongKind(TargetError):
    """Something other than the wanted kind (directory or regular file) is at the path."""


class NotEmpty(TargetError):
    """A directory with entries, or a file with bytes: never mounted over, never removed."""


class NotABlockDevice(TargetError):
    """The path is not a block device node."""


def make(path: str, directory: bool) -> bool:
    """Create the target (0750 directory, or 0640 empty file); True when this call created it, False when an empty
    one of the right kind was there."""
    try:
        if directory:
            os.mkdir(path, 0o750)
        else:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640))
        return True
    except FileNotFoundError:
        raise NoParent(f"the parent directory of {path} does not exist (the CO creates it)") from None
    except FileExistsError:
        pass
    if directory:
        if not os.path.isdir(path):
            raise WrongKind(f"{path} exists and is not a directory") from None
        if os.listdir(path):
            raise NotEmpty(f"{path} is a directory that is not empty: a volume is never mounted over files")
    else:
        if not os.path.isfile(path):
            raise WrongKind(f"{path} exists and is not a regular file") from None
        if os.path.getsize(path):
            raise NotEmpty(f"{path} is a file that is not empty: a device is never bound over data")
    return False


def removable(path: str) -> bool:
    """What a publish leaves at a target once unmounted: an empty directory or an empty regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        return not os.listdir(path)
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def remove(path: str) -> None:
    """Remove an empty target; absent is fine; a non-empty directory is NotEmpty."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.ENOTEMPTY:
            raise NotEmpty(f"{path} is not empty after unmount; refusing to delete data") from e
        raise


def device_number(device: str) -> str:
    """ "major:minor" of a block device node."""
    st = os.stat(device)
    if not stat.S_ISBLK(st.st_mode):
        raise NotABlockDevice(f"{device} is not a block device")
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"


def exists(path: str) -> bool:
    return os.path.exists(path)


def is_dir(path: str) -> bool:
    return os.path.isdir(path)


def link_problem(path: str) -> str | None:
    """Why a target path is refused for what lies along it, or None: a symbolic link on the way (an escape out of
    kubelet's directories, or a loop) or at the path itself. A missing parent is not a problem here (publishing
    answers it precisely)."""
    parent = os.path.dirname(path)
    try:
        resolved = os.path.realpath(parent, strict=True)
    except FileNotFoundError:
        resolved = os.path.realpath(parent)
    except OSError as e:
        return f"cannot be resolved: {e.strerror}"
    if resolved != parent:
        return "goes through a symbolic link"
    if os.path.islink(path):
        return "is a symbolic link"
    return None
