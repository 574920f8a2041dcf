"""Leader election on a coordination.k8s.io Lease, so that only one controller replica places volumes.

In a cluster the Lease is the one csi-provisioner elects on, under the same identity (the Pod name): the driver
follows it (writer=False) and leads exactly while its own Pod's sidecar does. Run without the sidecar, the driver
elects itself (writer=True); a conflicting write by another writer of the same identity still counts as a renewal.

Expiry is judged on this process's own clock: a lease is free once its renewTime has not changed for a whole
lease duration since we first saw that value, so clock skew between replicas does not matter. A leader that
cannot renew for a lease duration steps down by itself before anyone else can take over.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

log = logging.getLogger(__name__)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class LeaseElector:
    def __init__(
        self,
        api: client.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        writer: bool = True,
    ) -> None:
        self._api: Any = client.CoordinationV1Api(api)
        # writer=False: follow a Lease another process of our Pod writes (csi-provisioner): lead exactly while it
        # holds it under our identity and keeps renewing it; never write it, so a Pod whose sidecar died or
        # stopped leading loses the lead with it instead of keeping the Lease alive.
        self._writer = writer
        self._ns = namespace
        self._name = name
        self.identity = identity
        self._duration = duration
        self._renewed_at = 0.0  # monotonic time of our last successful renew
        self._seen: tuple[str, float] = ("", 0.0)  # (holder+renewTime seen, monotonic when first seen)
        self.attempted = asyncio.Event()  # set after the first try, won or lost
        self._confirming = asyncio.Lock()

    def is_leader(self) -> bool:
        return self._renewed_at > 0 and time.monotonic() - self._renewed_at < self._duration

    async def confirm(self) -> bool:
        """Leader now? When not as far as we know, read the Lease once before saying no: csi-provisioner in our Pod
        may have just acquired it, and its call should not wait for our next renewal round."""
        if self.is_leader():
            return True
        async with self._confirming:
            if not self.is_leader():
                try:
                    await self._attempt()
                except Exception as e:
                    log.warning("lease %s: %s", self._name, e)
        return self.is_leader()

    def _body(self, transitions: int, acquired: datetime.datetime | None) -> Any:
        now = _now()
        return client.V1Lease(
            metadata=client.V1ObjectMeta(name=self._name, namespace=self._ns),
            spec=client.V1LeaseSpec(
                holder_identity=self.identity,
                lease_duration_seconds=int(self._duration),
                acquire_time=acquired or now,
                renew_time=now,
                lease_transitions=transitions,
            ),
        )

    async def _attempt(self) -> None:
        try:
            lease = await self._api.read_namespaced_lease(self._name, self._ns)
        except ApiException as e:
            if e.status != 404:
                raise
            if not self._writer:
                return  # nobody leads yet
            await self._api.create_namespaced_lease(self._ns, self._body(0, None))
            self._won()
            return
        spec = lease.spec
        mine = spec.holder_identity == self.identity
        stamp = f"{spec.holder_identity}/{spec.renew_time}"
        if stamp != self._seen[0]:
            self._seen = (stamp, time.monotonic())
        expired = time.monotonic() - self._seen[1] > (spec.lease_duration_seconds or self._duration)
        if not self._writer:
            if mine and not expired:
                # Renewed by our Pod at the latest when we first saw this renewal.
                self._renewed_at = max(self._renewed_at, self._seen[1])
            elif not mine:
                # Released, or taken by another Pod: that Pod's driver may lead from now on, so this one stops at
                # once rather than when its last renewal seen grows old.
                self._renewed_at = 0.0
            return
        if not (mine or not spec.holder_identity or expired):
            self._renewed_at = 0.0  # another identity holds it, unexpired: not ours (any more)
            return
        transitions = (spec.lease_transitions or 0) + (0 if mine else 1)
        body = self._body(transitions, spec.acquire_time if mine else None)
        body.metadata.resource_version = lease.metadata.resource_version
        try:
            await self._api.replace_namespaced_lease(self._name, self._ns, body)
        except ApiException as e:
            if e.status != 409:
                raise
            # Someone wrote first. When it was a writer with our identity (csi-provisioner in our Pod shares this
            # Lease and identity), our Pod still holds it: that renewal is ours too.
            again = await self._api.read_namespaced_lease(self._name, self._ns)
            if mine and again.spec.holder_identity == self.identity:
                self._won()
            return
        if not mine:
            log.info("acquired lease %s/%s as %s", self._ns, self._name, self.identity)
        self._won()

    def _won(self) -> None:
        self._renewed_at = time.monotonic()

    async def release(self) -> None:
        """On a clean shutdown, hand the lease over at once instead of letting it expire."""
        if not self.is_leader():
            return
        self._renewed_at = 0.0
        if not self._writer:
            return  # the sidecar hands it over itself
        try:
            lease = await self._api.read_namespaced_lease(self._name, self._ns)
            if lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                await self._api.replace_namespaced_lease(self._name, self._ns, lease)
        except Exception as e:
            log.warning("could not release lease %s: %s", self._name, e)

    async def run(self) -> None:
        while True:
            was = self.is_leader()
            try:
                await self._attempt()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("lease %s: %s", self._name, e)
            self.attempted.set()
            if was and not self.is_leader():
                log.warning("lost lease %s/%s: no longer serving CreateVolume/DeleteVolume", self._ns, self._name)
            await asyncio.sleep(self._duration / 3 if self.is_leader() else 2.0)
