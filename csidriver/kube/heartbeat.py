"""The agent's heartbeat: a coordination.k8s.io Lease per node, renewed every `period` seconds.

The controller places volumes only on nodes whose agent renewed its Lease within the Lease's duration (judged on
the controller's own clock: see services/cluster.py), so a node whose agent is gone gets a prompt, precise answer
instead of a Pending object that waits for the create timeout. One merge patch per period; created on the first
beat (or again when deleted) with an owner reference to the Node, so it goes when the Node goes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Mapping
from typing import Any

from csidriver.api import constants as c
from csidriver.api import naming
from csidriver.kube.client import ApiClient, ApiError
from csidriver.kube.lease import Leases

log = logging.getLogger(__name__)
# A Lease outlives this many missed renewals before its agent counts as gone (kubelet's node Lease: 10 s / 40 s).
DURATION_PERIODS = 4


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Heartbeat:
    def __init__(
        self,
        api: ApiClient,
        namespace: str,
        node: str,
        period: float,
        owner: Mapping[str, Any] | None = None,
    ) -> None:
        self._api = Leases(api, namespace)
        self._ns = namespace
        self._node = node
        self._period = period
        self._owner = owner
        self.name = naming.heartbeat_name(node)
        self.attempted = asyncio.Event()  # set after the first beat, written or not

    def _spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self._node,
            "leaseDurationSeconds": max(1, round(self._period * DURATION_PERIODS)),
            "renewTime": _now(),
        }

    async def beat(self) -> None:
        try:
            await self._api.patch(self.name, {"spec": self._spec()})
            return
        except ApiError as e:
            if e.status != 404:
                raise
        meta: dict[str, Any] = {"name": self.name, "namespace": self._ns, "labels": {c.HEARTBEAT_LABEL: "true"}}
        if self._owner:
            meta["ownerReferences"] = [dict(self._owner)]
        spec = {**self._spec(), "acquireTime": _now()}
        try:
            await self._api.create({"metadata": meta, "spec": spec})
        except ApiError as e:
            if e.status != 409:  # created meanwhile by a previous instance of this agent: the next beat patches it
                raise
        log.info("heartbeat Lease %s/%s created", self._ns, self.name)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.beat()
                if failing:
                    log.info("heartbeat Lease %s renewed again", self.name)
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not failing:
                    log.warning("heartbeat Lease %s: %s (retrying every %.0f s)", self.name, e, self._period)
                failing = True
            self.attempted.set()
            await asyncio.sleep(self._period)
