"""LeaseElector against an in-memory Lease store that keeps the API server's optimistic concurrency, on a clock the
test moves: creation of an absent Lease, take-over judged on our own clock (never on the holder's timestamps),
stepping down when renewals fail, release, and follower mode. test_lease.py covers the pod-mate conflicts."""

from __future__ import annotations

import copy
import datetime
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from csidriver.kube import lease as lease_module
from csidriver.kube.client import ApiError
from csidriver.kube.lease import LeaseElector, micro_time

NS, NAME = "openebs", "device-csi-openebs-io"
LONG_AGO = datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC)  # a holder whose wall clock is far behind ours


def _parse(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(lease_module, "time", c)  # the elector judges expiry on time.monotonic() only
    return c


@dataclass
class Leases:
    """One Lease as the API server keeps it: a write must carry the version it read, or it is a 409."""

    stored: Any = None
    version: int = 0
    failing: bool = False
    writes: list[Any] = field(default_factory=list)
    reads: int = 0

    def put(
        self, holder: str | None, renew: datetime.datetime = LONG_AGO, duration: int = 15, transitions: int = 3
    ) -> None:
        """Another process writes the Lease."""
        self.version += 1
        self.stored = {
            "metadata": {"name": NAME, "namespace": NS, "resourceVersion": str(self.version)},
            "spec": {
                "holderIdentity": holder,
                "leaseDurationSeconds": duration,
                "acquireTime": micro_time(LONG_AGO),
                "renewTime": micro_time(renew),
                "leaseTransitions": transitions,
            },
        }

    def renew(self) -> None:
        """The holder renews: a new renewTime."""
        assert self.stored is not None
        spec = self.stored["spec"]
        renewed = _parse(spec["renewTime"]) + datetime.timedelta(seconds=5)
        self.put(spec["holderIdentity"], renewed, spec["leaseDurationSeconds"], spec["leaseTransitions"])

    @property
    def spec(self) -> Any:
        return self.stored["spec"]

    def _check(self) -> None:
        if self.failing:
            raise ApiError(503, "ServiceUnavailable", "etcd is down")

    async def read(self, name: str) -> Any:
        self._check()
        self.reads += 1
        if self.stored is None:
            raise ApiError(404, "NotFound", f"leases {name!r} not found")
        return copy.deepcopy(self.stored)

    async def create(self, body: Any) -> Any:
        self._check()
        if self.stored is not None:
            raise ApiError(409, "AlreadyExists", "already exists")
        assert "resourceVersion" not in body["metadata"]
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        self.stored = copy.deepcopy(body)
        self.writes.append(copy.deepcopy(body))
        return body

    async def replace(self, name: str, body: Any) -> Any:
        self._check()
        if self.stored is None:
            raise ApiError(404, "NotFound", f"leases {name!r} not found")
        if body["metadata"].get("resourceVersion") != self.stored["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified")
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        self.stored = copy.deepcopy(body)
        self.writes.append(copy.deepcopy(body))
        return body


async def elector(leases: Leases, identity: str = "controller-0", writer: bool = True) -> LeaseElector:
    e = LeaseElector(cast(Any, None), NS, NAME, identity, 15.0, writer=writer)  # nothing goes to a server
    e._api = cast(Any, leases)  # the store answers the Lease calls
    return e


async def test_an_absent_lease_is_created_by_a_writer_and_left_alone_by_a_follower(clock: Clock) -> None:
    leases = Leases()
    follower = await elector(leases, writer=False)
    await follower._attempt()
    assert leases.stored is None and not follower.is_leader()
    writer = await elector(leases)
    await writer._attempt()
    assert leases.spec["holderIdentity"] == "controller-0"
    assert leases.spec["leaseTransitions"] == 0 and leases.spec["leaseDurationSeconds"] == 15
    assert writer.is_leader()


async def test_renewing_keeps_the_lead_and_the_acquire_time(clock: Clock) -> None:
    leases = Leases()
    ours = await elector(leases)
    await ours._attempt()
    acquired = leases.spec["acquireTime"]
    for _ in range(5):
        clock.now += 5
        await ours._attempt()
        assert ours.is_leader()
    assert len(leases.writes) == 6
    assert leases.spec["acquireTime"] == acquired and leases.spec["leaseTransitions"] == 0
    assert leases.spec["renewTime"] >= acquired


async def test_a_stale_holder_is_taken_over_after_a_lease_duration_on_our_clock(clock: Clock) -> None:
    leases = Leases()
    leases.put("controller-1", renew=LONG_AGO)  # its renewTime means nothing to us: its clock may be off
    ours = await elector(leases)
    await ours._attempt()
    assert leases.writes == [] and not ours.is_leader(), "a Lease first seen now is live for one duration"
    clock.now += 14.9
    await ours._attempt()
    assert leases.writes == [] and not ours.is_leader()
    clock.now += 0.2
    await ours._attempt()
    assert ours.is_leader()
    assert leases.spec["holderIdentity"] == "controller-0"
    assert leases.spec["leaseTransitions"] == 4, "a take-over counts as a transition"
    assert _parse(leases.spec["acquireTime"]) > LONG_AGO, "a new holder's acquireTime is when it acquired"


async def test_the_holders_own_duration_decides_expiry(clock: Clock) -> None:
    leases = Leases()
    leases.put("controller-1", duration=40)
    ours = await elector(leases)  # ours is 15 s
    await ours._attempt()
    clock.now += 39
    await ours._attempt()
    assert not ours.is_leader() and leases.writes == []
    clock.now += 2
    await ours._attempt()
    assert ours.is_leader()


async def test_a_holder_that_keeps_renewing_is_never_taken_over(clock: Clock) -> None:
    leases = Leases()
    leases.put("controller-1", renew=LONG_AGO)
    ours = await elector(leases)
    for _ in range(40):  # 200 s, with a renewal seen every 5 s, however old its timestamps look
        await ours._attempt()
        clock.now += 5
        leases.renew()
    assert leases.writes == [] and not ours.is_leader()
    assert leases.spec["holderIdentity"] == "controller-1"


async def test_a_released_lease_is_taken_at_once(clock: Clock) -> None:
    leases = Leases()
    leases.put(None)
    ours = await elector(leases)
    await ours._attempt()
    assert ours.is_leader() and leases.spec["holderIdentity"] == "controller-0"


async def test_a_leader_whose_renewals_fail_steps_down_after_one_duration(clock: Clock) -> None:
    leases = Leases()
    ours = await elector(leases)
    await ours._attempt()
    assert ours.is_leader()
    leases.failing = True
    for _ in range(2):
        clock.now += 5
        with pytest.raises(ApiError):
            await ours._attempt()
    clock.now += 4.9  # 14.9 s since the last renewal
    assert ours.is_leader()
    clock.now += 0.2
    assert not ours.is_leader(), "a leader that could not renew for a lease duration must stop leading"
    assert not await ours.confirm(), "confirm must not lead while the Lease cannot be read"
    # Nobody else could take over yet: a replica first seeing our last renewal now waits a whole duration.
    leases.failing = False
    other = await elector(leases, "controller-1")
    await other._attempt()
    assert not other.is_leader()


async def test_a_conflicting_writer_of_another_identity_wins_and_we_do_not_lead(clock: Clock) -> None:
    leases = Leases()
    leases.put(None)
    ours = await elector(leases)
    real_read = leases.read
    raced = False

    async def read_then_race(name: str) -> Any:
        nonlocal raced
        got = await real_read(name)
        if not raced:  # another replica takes the free Lease between our read and our write
            raced = True
            leases.put("controller-1", renew=LONG_AGO)
        return got

    leases.read = read_then_race  # type: ignore[method-assign]
    await ours._attempt()
    assert not ours.is_leader()
    assert leases.spec["holderIdentity"] == "controller-1"


async def test_release_hands_the_lease_over_at_once(clock: Clock) -> None:
    leases = Leases()
    ours = await elector(leases)
    await ours._attempt()
    await ours.release()
    assert not ours.is_leader()
    assert leases.spec["holderIdentity"] is None
    other = await elector(leases, "controller-1")
    await other._attempt()
    assert other.is_leader(), "a released Lease must not wait out its duration"


async def test_release_leaves_alone_a_lease_that_is_not_ours(clock: Clock) -> None:
    leases = Leases()
    ours = await elector(leases)
    await ours.release()  # never led: not even a read
    assert leases.reads == 0 and leases.writes == []
    await ours._attempt()
    leases.put("controller-1")  # taken over meanwhile (we could not renew, say)
    await ours.release()
    assert leases.spec["holderIdentity"] == "controller-1"
    assert len(leases.writes) == 1  # only our creation
    assert not ours.is_leader()


async def test_release_survives_an_unreachable_api_server(clock: Clock) -> None:
    leases = Leases()
    ours = await elector(leases)
    await ours._attempt()
    leases.failing = True
    await ours.release()  # logs, does not raise: shutdown goes on
    assert not ours.is_leader()


async def test_follower_leads_exactly_while_its_identity_renews(clock: Clock) -> None:
    leases = Leases()
    leases.put("controller-0", renew=LONG_AGO)
    follower = await elector(leases, writer=False)
    for _ in range(6):
        await follower._attempt()
        assert follower.is_leader()
        clock.now += 5
        leases.renew()
    await follower._attempt()
    clock.now += 14.9  # renewals stop
    await follower._attempt()
    assert follower.is_leader()
    clock.now += 0.2
    await follower._attempt()  # the same renewal, first seen 15.1 s ago
    assert not follower.is_leader()
    leases.renew()  # the sidecar renews again
    await follower._attempt()
    assert follower.is_leader()
    assert leases.writes == []


async def test_follower_of_an_expired_lease_of_another_identity_never_takes_it(clock: Clock) -> None:
    leases = Leases()
    leases.put("controller-1")
    follower = await elector(leases, writer=False)
    await follower._attempt()
    clock.now += 100
    await follower._attempt()
    assert not follower.is_leader() and leases.writes == []
    leases.put(None)
    await follower._attempt()
    assert not follower.is_leader() and leases.writes == []


async def test_follower_stops_leading_when_the_lease_is_no_longer_its_identitys(clock: Clock) -> None:
    leases = Leases()
    leases.put("controller-0")
    follower = await elector(leases, writer=False)
    await follower._attempt()
    assert follower.is_leader()
    leases.put(None)  # our sidecar released it on shutdown ...
    leases.put("controller-1")  # ... and another Pod's sidecar acquired it at once
    clock.now += 1
    await follower._attempt()
    assert not follower.is_leader(), "two followers lead at once"
