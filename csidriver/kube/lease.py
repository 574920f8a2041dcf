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
from collections.abc import Mapping
from typing import Any

from csidriver.kube.client import MERGE_PATCH, ApiClient, ApiError, path

log = logging.getLogger(__name__)
Obj = dict[str, Any]


def micro_time(t: datetime.datetime | None = None) -> str:
    """A MicroTime, as Lease times are written."""
    return (t or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leases:
    """The coordination.k8s.io/v1 Leases of one namespace."""

    def __init__(self, api: ApiClient, namespace: str) -> None:
        self._api = api
        self._ns = namespace

    def _path(self, name: str | None = None) -> str:
        return path("coordination.k8s.io", "v1", "leases", self._ns, name)

    async def read(self, name: str) -> Obj:
        return await self._api.get(self._path(name))

    async def create(self, body: Mapping[str, Any]) -> Obj:
        return await self._api.create(self._path(), body)

    async def replace(self, name: str, body: Mapping[str, Any]) -> Obj:
        """Guarded by the body's metadata.resourceVersion: a 409 ApiError when the Lease changed since."""
        return await self._api.replace(self._path(name), body)

    async def patch(self, name: str, patch: Mapping[str, Any]) -> Obj:
        return await self._api.patch(self._path(name), patch, MERGE_PATCH)


class LeaseElector:
    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        name: str,
        identity: str,
        duration: float = 15.0,
        writer: bool = True,
    ) -> None:
        self._api = Leases(api, namespace)
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

    def _body(self, transitions: int, acquired: str | None) -> Obj:
        now = micro_time()
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self._name, "namespace": self._ns},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": int(self._duration),
                "acquireTime": acquired or now,
                "renewTime": now,
                "leaseTransitions": transitions,
            },
        }

    async def _attempt(self) -> None:
        try:
            lease = await self._api.read(self._name)
        except ApiError as e:
            if e.status != 404:
                raise
            if not self._writer:
                return  # nobody leads yet
            await self._api.create(self._body(0, None))
            self._won()
            return
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        mine = holder == self.identity
        stamp = f"{holder}/{spec.get('renewTime')}"
        if stamp != self._seen[0]:
            self._seen = (stamp, time.monotonic())
        expired = time.monotonic() - self._seen[1] > (spec.get("leaseDurationSeconds") or self._duration)
        if not self._writer:
            if mine and not expired:
                # Renewed by our Pod at the latest when we first saw this renewal.
                self._renewed_at = max(self._renewed_at, self._seen[1])
            elif not mine:
                # Released, or taken by another Pod: that Pod's driver may lead from now on, so this one stops at
                # once rather than when its last renewal seen grows old.
                self._renewed_at = 0.0
            return
        if not (mine or not holder or expired):
            self._renewed_at = 0.0  # another identity holds it, unexpired: not ours (any more)
            return
        transitions = (spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        body = self._body(transitions, spec.get("acquireTime") if mine else None)
        body["metadata"]["resourceVersion"] = lease["metadata"]["resourceVersion"]
        try:
            await self._api.replace(self._name, body)
        except ApiError as e:
            if e.status != 409:
                raise
            # Someone wrote first. When it was a writer with our identity (csi-provisioner in our Pod shares this
            # Lease and identity), our Pod still holds it: that renewal is ours too.
            again = await self._api.read(self._name)
            if mine and (again.get("spec") or {}).get("holderIdentity") == self.identity:
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
            lease = await self._api.read(self._name)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = None
                await self._api.replace(self._name, lease)
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
