"""The single place where the driver starts external programs.

Every command is an argv list (never a shell), runs with ``LC_ALL=C`` and only ``PATH`` from the
environment (so variables such as ``LOCK_BLOCK_DEVICE`` never leak into util-linux tools), and is
bounded by a timeout after which the process is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_STDERR_LIMIT = 400
_REAP_LIMIT = 5.0  # seconds to reap a killed command


@dataclass(frozen=True)
class Completed:
    """The outcome of one finished command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandError(Exception):
    """A command could not be started or exited with a non-zero status."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(argv, returncode, stderr)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr

    def _detail(self) -> str:
        text = " ".join(self.stderr.split())
        if len(text) > _STDERR_LIMIT:
            text = text[:_STDERR_LIMIT] + "..."
        return text or "no error output"

    def __str__(self) -> str:
        return f"{shlex.join(self.argv)} exited with status {self.returncode}: {self._detail()}"


class CommandTimeout(CommandError):
    """A command ran past its timeout and was killed."""

    def __init__(self, argv: Sequence[str], timeout: float, stderr: str = "") -> None:
        super().__init__(argv, -9, stderr)
        self.timeout = timeout

    def __str__(self) -> str:
        return f"{shlex.join(self.argv)} timed out after {self.timeout:g}s and was killed"


class Runner:
    """Runs commands asynchronously; inject a fake with the same ``run`` method in unit tests."""

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._reapers: set[asyncio.Task[None]] = set()

    def _env(self) -> dict[str, str]:
        path = self._path or os.environ.get("PATH") or DEFAULT_PATH
        return {"LC_ALL": "C", "PATH": path}

    async def run(
        self,
        argv: Sequence[str],
        *,
        input: bytes | None = None,
        timeout: float = 60.0,  # noqa: ASYNC109 - the documented per-command limit
        check: bool = True,
    ) -> Completed:
        args = tuple(argv)
        if not args or not all(isinstance(a, str) for a in args):
            raise ValueError("argv must be a non-empty sequence of strings")
        proc = await self._spawn(args, piped_input=input is not None)
        out, err = await _communicate(proc, args, input, timeout)
        done = Completed(args, _code(proc), _text(out), _text(err))
        if check and done.returncode != 0:
            raise CommandError(args, done.returncode, done.stderr or done.stdout)
        return done

    async def _spawn(self, args: tuple[str, ...], *, piped_input: bool) -> asyncio.subprocess.Process:
        """Start a command. The start itself is shielded: cancelling asyncio's subprocess creation
        mid-way can hang forever on Python 3.11 (unconnected pipes never report closed), so a
        cancelled caller lets the start finish, then kills and reaps the process before re-raising."""
        spawn = asyncio.ensure_future(
            asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if piped_input else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(),
                start_new_session=True,
            )
        )
        try:
            return await asyncio.shield(spawn)
        except OSError as exc:
            raise CommandError(args, 127, f"cannot start {args[0]}: {exc.strerror}") from exc
        except asyncio.CancelledError:
            await self._abandon(spawn)
            raise

    async def _abandon(self, spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
        """Kill a process whose caller was cancelled; wait for that unless cancelled once more."""
        reaper = asyncio.ensure_future(_reap(spawn))
        self._reapers.add(reaper)
        reaper.add_done_callback(self._reapers.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(reaper)


async def _reap(spawn: asyncio.Future[asyncio.subprocess.Process]) -> None:
    try:
        proc = await spawn
    except Exception:
        return
    await _kill(proc)


async def _communicate(
    proc: asyncio.subprocess.Process, argv: tuple[str, ...], input: bytes | None, limit: float
) -> tuple[bytes, bytes]:
    """Feed input and collect output; kill the process on timeout or cancellation."""
    try:
        async with asyncio.timeout(limit):
            return await proc.communicate(input)
    except TimeoutError:
        await _kill(proc)
        raise CommandTimeout(argv, limit) from None
    except BaseException:
        await _kill(proc)
        raise


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the command's whole process group, then drain its pipes: on Python 3.11 ``wait()`` only
    returns once the pipes are closed, and an unread, full pipe (or a surviving grandchild holding it)
    would otherwise block it forever. Bounded, so a process that escaped its group cannot hang us."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError, OSError, ValueError):
        async with asyncio.timeout(_REAP_LIMIT):
            await asyncio.shield(proc.communicate())


def _code(proc: asyncio.subprocess.Process) -> int:
    return proc.returncode if proc.returncode is not None else -1


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")
