"""Unit tests for the node-scheduling policies."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from scheduler import DiskState, NodeState, Policy, Request, fits, pool_capacity, rank_nodes

MiB = 1 << 20
GiB = 1 << 30
POOL = "fast"
CAP = Policy.CAPACITY_WEIGHTED
VOL = Policy.VOLUME_WEIGHTED
FREE = Policy.FREE_CAPACITY_WEIGHTED


def disk(
    free: int = 10 * GiB,
    extent: int | None = None,
    *,
    guid: str = "g1",
    pool: str = POOL,
    entries: int = 8,
    healthy: bool = True,
    cordoned: bool = False,
) -> DiskState:
    """A disk whose largest extent defaults to all of its free space."""
    return DiskState(
        pool=pool,
        guid=guid,
        size=1024 * GiB,
        free=free,
        largest_extent=free if extent is None else extent,
        free_entries=entries,
        healthy=healthy,
        cordoned=cordoned,
    )


def node(
    name: str,
    *disks: DiskState,
    provisioned: Mapping[str, int] | None = None,
    volumes: Mapping[str, int] | None = None,
    pending: Mapping[str, tuple[int, ...]] | None = None,
) -> NodeState:
    """A node with the given disks and bookkeeping."""
    return NodeState(name, disks, provisioned or {}, volumes or {}, pending or {})


def rank(nodes: list[NodeState], policy: Policy, size: int = GiB) -> list[str]:
    """Rank ``nodes`` for a volume of ``size`` in the test pool."""
    return rank_nodes(nodes, Request(POOL, size, policy))


# --- Policy.parse -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", CAP, id="empty-is-default"),
        pytest.param("CapacityWeighted", CAP, id="capacity-exact"),
        pytest.param("capacityweighted", CAP, id="capacity-lower"),
        pytest.param("VOLUMEWEIGHTED", VOL, id="volume-upper"),
        pytest.param("volumeWeighted", VOL, id="volume-mixed"),
        pytest.param("FreeCapacityWeighted", FREE, id="free-exact"),
        pytest.param("freecapacityWEIGHTED", FREE, id="free-mixed"),
    ],
)
def test_parse_accepts(text: str, expected: Policy) -> None:
    assert Policy.parse(text) is expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Random", id="unknown-name"),
        pytest.param("Capacity", id="prefix-only"),
        pytest.param(" CapacityWeighted", id="leading-space"),
        pytest.param("CAPACITY_WEIGHTED", id="member-name-not-value"),
    ],
)
def test_parse_rejects_and_lists_valid_values(text: str) -> None:
    with pytest.raises(ValueError, match="valid values") as caught:
        Policy.parse(text)
    message = str(caught.value)
    assert repr(text) in message
    for valid in ("CapacityWeighted", "VolumeWeighted", "FreeCapacityWeighted"):
        assert valid in message


# --- ordering -----------------------------------------------------------------------------------------

FLEET = [
    node("a", disk(20 * GiB), provisioned={POOL: 30 * GiB}, volumes={POOL: 1}),
    node("b", disk(5 * GiB), provisioned={POOL: 10 * GiB}, volumes={POOL: 5}),
    node("c", disk(50 * GiB), provisioned={POOL: 20 * GiB}, volumes={POOL: 3}),
]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(CAP, ["b", "c", "a"], id="capacity-least-provisioned-first"),
        pytest.param(VOL, ["a", "c", "b"], id="volume-fewest-volumes-first"),
        pytest.param(FREE, ["c", "a", "b"], id="free-most-free-first"),
    ],
)
def test_policy_ordering(policy: Policy, expected: list[str]) -> None:
    assert rank(FLEET, policy) == expected


def test_other_pools_bookkeeping_is_ignored() -> None:
    nodes = [
        node("a", disk(), provisioned={POOL: 2 * GiB, "slow": 0}, volumes={POOL: 2, "slow": 0}),
        node("b", disk(), provisioned={POOL: 1 * GiB, "slow": 99 * GiB}, volumes={POOL: 1, "slow": 9}),
    ]
    assert rank(nodes, CAP) == ["b", "a"]
    assert rank(nodes, VOL) == ["b", "a"]


@pytest.mark.parametrize(
    ("policy", "nodes", "expected"),
    [
        pytest.param(
            CAP,
            [
                node("x", disk(5 * GiB), provisioned={POOL: GiB}),
                node("y", disk(9 * GiB), provisioned={POOL: GiB}),
            ],
            ["y", "x"],
            id="capacity-tie-more-free-first",
        ),
        pytest.param(
            CAP,
            [node("beta", disk(), provisioned={POOL: GiB}), node("alpha", disk(), provisioned={POOL: GiB})],
            ["alpha", "beta"],
            id="capacity-tie-then-name",
        ),
        pytest.param(
            CAP,
            [node("x", disk(), provisioned={POOL: MiB}), node("y", disk())],
            ["y", "x"],
            id="capacity-missing-key-is-zero",
        ),
        pytest.param(
            VOL,
            [node("x", disk(5 * GiB), volumes={POOL: 2}), node("y", disk(9 * GiB), volumes={POOL: 2})],
            ["y", "x"],
            id="volume-tie-more-free-first",
        ),
        pytest.param(
            VOL,
            [node("beta", disk(), volumes={POOL: 2}), node("alpha", disk(), volumes={POOL: 2})],
            ["alpha", "beta"],
            id="volume-tie-then-name",
        ),
        pytest.param(
            VOL,
            [node("x", disk(), volumes={POOL: 1}), node("y", disk())],
            ["y", "x"],
            id="volume-missing-key-is-zero",
        ),
        pytest.param(
            FREE,
            [node("n2", disk()), node("n10", disk()), node("n1", disk())],
            ["n1", "n10", "n2"],
            id="free-tie-then-name",
        ),
        pytest.param(
            FREE,
            [node("x", disk(4 * GiB), disk(4 * GiB, guid="g2")), node("y", disk(7 * GiB))],
            ["x", "y"],
            id="free-sums-all-disks",
        ),
    ],
)
def test_ties_and_defaults(policy: Policy, nodes: list[NodeState], expected: list[str]) -> None:
    assert rank(nodes, policy) == expected


def test_accepts_any_iterable_and_empty_input() -> None:
    assert rank_nodes((n for n in FLEET), Request(POOL, GiB, FREE)) == ["c", "a", "b"]
    assert rank_nodes([], Request(POOL, GiB, CAP)) == []


# --- which disks count ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("disks", "size", "expected"),
    [
        pytest.param((disk(),), GiB, True, id="healthy-disk-fits"),
        pytest.param((disk(extent=GiB),), GiB, True, id="extent-exactly-size-fits"),
        pytest.param((), GiB, False, id="no-disk"),
        pytest.param((disk(pool="slow"),), GiB, False, id="other-pool-only"),
        pytest.param((disk(healthy=False),), GiB, False, id="unhealthy-skipped"),
        pytest.param((disk(cordoned=True),), GiB, False, id="cordoned-skipped"),
        pytest.param((disk(entries=0),), GiB, False, id="no-free-entry"),
        pytest.param((disk(50 * GiB, 512 * MiB),), GiB, False, id="fragmented-free-space"),
        pytest.param((disk(2 * GiB),), 3 * GiB, False, id="too-small"),
        pytest.param(
            (disk(30 * GiB, 900 * MiB), disk(30 * GiB, 900 * MiB, guid="g2")),
            GiB,
            False,
            id="extents-never-combine-across-disks",
        ),
        pytest.param(
            (disk(entries=0), disk(GiB, guid="g2")),
            GiB,
            True,
            id="second-disk-has-entry",
        ),
        pytest.param(
            (
                disk(99 * GiB, healthy=False),
                disk(99 * GiB, guid="g2", cordoned=True),
                disk(2 * GiB, guid="g3"),
            ),
            2 * GiB,
            True,
            id="usable-disk-among-skipped",
        ),
    ],
)
def test_fits_and_rank_agree(disks: tuple[DiskState, ...], size: int, expected: bool) -> None:
    candidate = node("n1", *disks)
    assert fits(candidate, POOL, size) is expected
    for policy in Policy:
        assert rank([candidate], policy, size) == (["n1"] if expected else [])


@pytest.mark.parametrize(
    "skipped",
    [
        pytest.param(disk(100 * GiB, guid="g9", healthy=False), id="unhealthy"),
        pytest.param(disk(100 * GiB, guid="g9", cordoned=True), id="cordoned"),
        pytest.param(disk(100 * GiB, guid="g9", pool="slow"), id="other-pool"),
    ],
)
def test_skipped_disks_do_not_add_free_space(skipped: DiskState) -> None:
    nodes = [node("a", disk(10 * GiB), skipped), node("b", disk(20 * GiB))]
    assert rank(nodes, FREE) == ["b", "a"]
    assert pool_capacity(nodes[0], POOL) == (10 * GiB, 10 * GiB)


# --- pending reservations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate", "size", "expected"),
    [
        pytest.param(node("n", disk(10 * GiB)), 5 * GiB, True, id="no-pending-fits"),
        pytest.param(node("n", disk(10 * GiB), pending={POOL: (6 * GiB,)}), 5 * GiB, False, id="pending-eats-extent"),
        pytest.param(node("n", disk(10 * GiB), pending={POOL: (5 * GiB,)}), 5 * GiB, True, id="pending-leaves-exact"),
        pytest.param(node("n", disk(entries=1), pending={POOL: (GiB,)}), GiB, False, id="pending-takes-last-entry"),
        pytest.param(node("n", disk(10 * GiB), pending={"slow": (9 * GiB,)}), 5 * GiB, True, id="other-pool-pending"),
        pytest.param(node("n", disk(10 * GiB), pending={POOL: ()}), 10 * GiB, True, id="empty-pending"),
        pytest.param(
            node("n", disk(10 * GiB), pending={POOL: (20 * GiB,)}),
            10 * GiB,
            True,
            id="unplaceable-pending-ignored",
        ),
        pytest.param(
            node("n", disk(10 * GiB), disk(10 * GiB, guid="g2"), pending={POOL: (6 * GiB, 6 * GiB)}),
            4 * GiB,
            True,
            id="pending-spread-over-disks",
        ),
        pytest.param(
            node("n", disk(10 * GiB), disk(10 * GiB, guid="g2"), pending={POOL: (6 * GiB, 6 * GiB)}),
            5 * GiB,
            False,
            id="pending-fills-both-disks",
        ),
        pytest.param(
            node("n", disk(10 * GiB), disk(30 * GiB, guid="g2", healthy=False), pending={POOL: (6 * GiB,)}),
            5 * GiB,
            False,
            id="pending-never-lands-on-unhealthy",
        ),
        pytest.param(
            node(
                "n",
                disk(10 * GiB, guid="b", entries=3),
                disk(10 * GiB, guid="a", entries=1),
                pending={POOL: (3 * GiB, 6 * GiB, 3 * GiB)},
            ),
            4 * GiB,
            True,
            id="extent-tie-goes-to-lowest-guid",
        ),
    ],
)
def test_pending_reservations_fit(candidate: NodeState, size: int, expected: bool) -> None:
    assert fits(candidate, POOL, size) is expected
    assert rank([candidate], CAP, size) == (["n"] if expected else [])


@pytest.mark.parametrize(
    ("candidate", "expected"),
    [
        pytest.param(node("n"), (0, 0), id="no-disk"),
        pytest.param(node("n", disk(10 * GiB, 4 * GiB), disk(3 * GiB, guid="g2")), (13 * GiB, 4 * GiB), id="plain"),
        pytest.param(node("n", disk(10 * GiB), pending={POOL: (4 * GiB,)}), (6 * GiB, 6 * GiB), id="one-pending"),
        pytest.param(
            node("n", disk(10 * GiB), disk(9 * GiB, guid="g2"), pending={POOL: (3 * GiB, 8 * GiB)}),
            (8 * GiB, 6 * GiB),
            id="largest-pending-placed-first",
        ),
        pytest.param(
            node("n", disk(10 * GiB), pending={POOL: (11 * GiB, 2 * GiB)}),
            (8 * GiB, 8 * GiB),
            id="unplaceable-pending-ignored",
        ),
        pytest.param(
            node("n", disk(10 * GiB, entries=1), disk(5 * GiB, guid="g2"), pending={POOL: (GiB, 2 * GiB)}),
            (12 * GiB, 8 * GiB),
            id="pending-skips-disk-without-entries",
        ),
    ],
)
def test_pool_capacity(candidate: NodeState, expected: tuple[int, int]) -> None:
    assert pool_capacity(candidate, POOL) == expected


@pytest.mark.parametrize(
    ("policy", "with_pending", "expected"),
    [
        pytest.param(FREE, False, ["a", "b"], id="free-without-pending"),
        pytest.param(FREE, True, ["b", "a"], id="free-pending-reorders"),
        pytest.param(CAP, False, ["a", "b"], id="capacity-tie-without-pending"),
        pytest.param(CAP, True, ["b", "a"], id="capacity-tie-pending-reorders"),
    ],
)
def test_pending_changes_order(policy: Policy, with_pending: bool, expected: list[str]) -> None:
    pending = {POOL: (15 * GiB,)} if with_pending else {}
    nodes = [
        node("a", disk(30 * GiB), provisioned={POOL: GiB}, pending=pending),
        node("b", disk(20 * GiB), provisioned={POOL: GiB}),
    ]
    assert rank(nodes, policy) == expected


def test_pending_excludes_node_from_ranking() -> None:
    nodes = [
        node("full", disk(10 * GiB), pending={POOL: (8 * GiB,)}),
        node("ok", disk(5 * GiB), provisioned={POOL: 50 * GiB}),
    ]
    for policy in Policy:
        assert rank(nodes, policy, 3 * GiB) == ["ok"]


# --- design-article scenario ------------------------------------------------------------------------------

ARTICLE = [
    node("Node1", disk(170 * GiB), provisioned={POOL: 30 * GiB}, volumes={POOL: 3}),
    node("Node2", disk(100 * GiB), provisioned={POOL: 100 * GiB}, volumes={POOL: 2}),
    node("Node3"),
]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        pytest.param(CAP, ["Node1", "Node2"], id="capacity-picks-node1"),
        pytest.param(VOL, ["Node2", "Node1"], id="volume-picks-node2"),
        pytest.param(FREE, ["Node1", "Node2"], id="free-picks-node1"),
    ],
)
def test_design_article_scenario(policy: Policy, expected: list[str]) -> None:
    assert rank(ARTICLE, policy, 10 * GiB) == expected


def test_best_node_agrees_with_rank_nodes_on_every_table() -> None:
    """The one-pass hot path must pick exactly the first node of the full ranking."""
    import random

    from scheduler import best_node

    rng = random.Random(7)
    for _ in range(300):
        nodes = []
        for i in range(rng.randint(0, 8)):
            disks = tuple(
                DiskState(
                    pool=rng.choice(["ssd", "hdd"]),
                    guid=f"g{i}{d}",
                    size=100,
                    free=(free := rng.randint(0, 100)),
                    largest_extent=rng.randint(0, free),
                    free_entries=rng.randint(0, 2),
                    healthy=rng.random() > 0.1,
                    cordoned=rng.random() < 0.1,
                )
                for d in range(rng.randint(0, 3))
            )
            pending = {"ssd": tuple(rng.randint(1, 30) for _ in range(rng.randint(0, 2)))}
            nodes.append(NodeState(f"n{i}", disks, {"ssd": rng.randint(0, 50)}, {"ssd": rng.randint(0, 5)}, pending))
        for policy in Policy:
            req = Request(pool="ssd", size=rng.randint(1, 60), policy=policy)
            ranked = rank_nodes(nodes, req)
            assert best_node(nodes, req) == (ranked[0] if ranked else None)
