"""Decide which nodes can host a new volume and in what order to try them."""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

# (largest_extent, free, free_entries) of one usable disk.
_Space = tuple[int, int, int]


class Policy(enum.Enum):
    """How candidate nodes are ordered."""

    CAPACITY_WEIGHTED = "CapacityWeighted"
    VOLUME_WEIGHTED = "VolumeWeighted"
    FREE_CAPACITY_WEIGHTED = "FreeCapacityWeighted"

    @classmethod
    def parse(cls, text: str) -> Policy:
        """Match ``text`` against the values, ignoring case; empty means the default."""
        if text == "":
            return cls.CAPACITY_WEIGHTED
        wanted = text.lower()
        for member in cls:
            if member.value.lower() == wanted:
                return member
        valid = ", ".join(member.value for member in cls)
        raise ValueError(f"unknown scheduling policy {text!r}; valid values are: {valid}")


@dataclass(frozen=True)
class DiskState:
    """Space left on one pool disk of a node."""

    pool: str
    guid: str
    size: int
    free: int
    largest_extent: int
    free_entries: int
    healthy: bool = True
    cordoned: bool = False


@dataclass(frozen=True)
class NodeState:
    """What a node holds, and what has been promised to it but not carved yet."""

    node: str
    disks: tuple[DiskState, ...]
    provisioned: Mapping[str, int]
    volumes: Mapping[str, int]
    pending: Mapping[str, tuple[int, ...]]

    @functools.cached_property
    def _summaries(self) -> dict[str, tuple[int, int]]:
        """pool -> (free after reservations, largest extent of a disk that still has a GPT entry); computed once
        per snapshot, so ranking thousands of nodes is a dictionary lookup per node."""
        out: dict[str, tuple[int, int]] = {}
        for pool in {d.pool for d in self.disks}:
            spaces = _spaces(self, pool)
            room = max((extent for extent, _, entries in spaces if entries >= 1), default=-1)
            out[pool] = (sum(free for _, free, _ in spaces), room)
        return out

    def summary(self, pool: str) -> tuple[int, int]:
        return self._summaries.get(pool, (0, -1))


@dataclass(frozen=True)
class Request:
    """A volume to place."""

    pool: str
    size: int
    policy: Policy


def fits(node: NodeState, pool: str, size: int) -> bool:
    """Whether one usable disk of ``pool`` can still take ``size`` bytes and a partition."""
    return _room_for(_spaces(node, pool), size)


def pool_capacity(node: NodeState, pool: str) -> tuple[int, int]:
    """Total free bytes and largest extent of the usable disks of ``pool``, after reservations."""
    spaces = _spaces(node, pool)
    return sum(s[1] for s in spaces), max((s[0] for s in spaces), default=0)


def rank_nodes(nodes: Iterable[NodeState], request: Request) -> list[str]:
    """Names of the nodes that fit ``request``, best first."""
    pool, size, policy = request.pool, request.size, request.policy
    scored: list[tuple[int, int, str]] = []
    for node in nodes:
        free = _free_if_fits(node, pool, size)
        if free is not None:
            scored.append((_primary(policy, node, pool, free), -free, node.node))
    scored.sort()
    return [name for _, _, name in scored]


def best_node(nodes: Iterable[NodeState], request: Request) -> str | None:
    """The first name ``rank_nodes`` would return, in one pass without sorting (the hot path)."""
    pool, size, policy = request.pool, request.size, request.policy
    best: tuple[int, int, str] | None = None
    for node in nodes:
        free, room = node.summary(pool)
        if room < size:
            continue
        key = (_primary(policy, node, pool, free), -free, node.node)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]


def _free_if_fits(node: NodeState, pool: str, size: int) -> int | None:
    """Free bytes of the pool on ``node`` when the request fits there, else None."""
    free, room = node.summary(pool)
    return free if room >= size else None


def _primary(policy: Policy, node: NodeState, pool: str, free: int) -> int:
    """First sort key of a node under ``policy``; smaller is better."""
    if policy is Policy.CAPACITY_WEIGHTED:
        return node.provisioned.get(pool, 0)
    if policy is Policy.VOLUME_WEIGHTED:
        return node.volumes.get(pool, 0)
    return -free


def _room_for(spaces: Sequence[_Space], size: int) -> bool:
    """Whether some space has a large enough extent and a spare entry."""
    return any(extent >= size and entries >= 1 for extent, _, entries in spaces)


def _spaces(node: NodeState, pool: str) -> list[_Space]:
    """Usable disks of ``pool`` on ``node`` with pending reservations taken out."""
    disks = [d for d in node.disks if d.pool == pool and d.healthy and not d.cordoned]
    pending = node.pending.get(pool)
    if not pending:
        return [(d.largest_extent, d.free, d.free_entries) for d in disks]
    return _reserve(disks, pending)


def _reserve(disks: list[DiskState], pending: tuple[int, ...]) -> list[_Space]:
    """Place pending sizes, largest first, each on the roomiest disk that holds it."""
    rooms = [[d.largest_extent, d.free, d.free_entries] for d in sorted(disks, key=lambda d: d.guid)]
    for size in sorted(pending, reverse=True):
        target = _roomiest(rooms, size)
        if target is not None:
            target[0] -= size
            target[1] -= size
            target[2] -= 1
    return [(extent, free, entries) for extent, free, entries in rooms]


def _roomiest(rooms: list[list[int]], size: int) -> list[int] | None:
    """Room with the largest extent that holds ``size``; rooms come in guid order, so ties go to the first."""
    best: list[int] | None = None
    for room in rooms:
        if room[0] >= size and room[2] >= 1 and (best is None or room[0] > best[0]):
            best = room
    return best
