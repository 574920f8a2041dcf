"""LeaseElector sharing its Lease with a writer of the same identity (csi-provisioner in the same Pod)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from csidriver.kube.client import ApiError
from csidriver.kube.lease import LeaseElector, micro_time


class PodMateLeases:
    """A Lease that the pod-mate renews between every read and write of ours, so each of our writes conflicts."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.version = 0
        self.writes = 0

    def _lease(self) -> Any:
        self.version += 1
        return {
            "metadata": {"name": "device-csi-openebs-io", "namespace": "openebs", "resourceVersion": str(self.version)},
            "spec": {
                "holderIdentity": self.holder,
                "leaseDurationSeconds": 15,
                "renewTime": micro_time(),
                "leaseTransitions": 0,
            },
        }

    async def read(self, name: str) -> Any:
        return self._lease()

    async def replace(self, name: str, body: Any) -> Any:
        self.writes += 1
        raise ApiError(409, "Conflict", "the object has been modified")


async def _elector(leases: Any, identity: str, writer: bool = True, duration: float = 15) -> LeaseElector:
    elector = LeaseElector(cast(Any, None), "openebs", "device-csi-openebs-io", identity, duration, writer=writer)
    elector._api = leases  # the API server's side, as the pod-mate makes it behave
    return elector


async def test_pod_mate_renewals_count_as_ours() -> None:
    leases = PodMateLeases(holder="controller-0")
    elector = await _elector(leases, "controller-0")
    for _ in range(3):
        await elector._attempt()
    assert leases.writes == 3
    assert elector.is_leader(), "the Pod holds the Lease: its driver must lead with its csi-provisioner"


async def test_another_pods_renewals_do_not() -> None:
    leases = PodMateLeases(holder="controller-1")
    elector = await _elector(leases, "controller-0")
    for _ in range(3):
        await elector._attempt()
    assert leases.writes == 0  # a live holder's Lease is not even tried
    assert not elector.is_leader()


async def test_confirm_reads_the_lease_before_refusing() -> None:
    """A call arriving right after our Pod's csi-provisioner acquired the Lease is served, not sent into backoff."""
    ours = await _elector(PodMateLeases(holder="controller-0"), "controller-0")
    assert not ours.is_leader()  # no renewal round has run yet
    assert await ours.confirm()
    theirs = await _elector(PodMateLeases(holder="controller-1"), "controller-0")
    assert not await theirs.confirm()


class FrozenLease(PodMateLeases):
    """A Lease whose holder stopped renewing: the same renewTime on every read."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.frozen = self._lease()

    async def read(self, name: str) -> Any:
        return self.frozen


async def test_follower_leads_while_its_sidecar_renews_and_never_writes() -> None:
    leases = PodMateLeases(holder="controller-0")
    follower = await _elector(leases, "controller-0", writer=False)
    assert await follower.confirm()
    for _ in range(3):
        await follower._attempt()
    assert follower.is_leader() and leases.writes == 0
    await follower.release()
    assert leases.writes == 0  # handing the Lease over is the sidecar's job


async def test_follower_steps_down_when_its_sidecar_stops_renewing() -> None:
    follower = await _elector(FrozenLease(holder="controller-0"), "controller-0", writer=False, duration=0.3)
    await follower._attempt()
    assert follower.is_leader()  # a renewal first seen now is fresh for one lease duration
    await asyncio.sleep(0.4)
    await follower._attempt()
    assert not follower.is_leader(), "a dead sidecar's Lease must not keep this Pod leading"


async def test_follower_of_another_pods_lease_does_not_lead() -> None:
    follower = await _elector(PodMateLeases(holder="controller-1"), "controller-0", writer=False)
    assert not await follower.confirm()
