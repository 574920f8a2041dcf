"""Two controller replicas: only the Lease holder places volumes; the other takes over when the leader dies."""

from __future__ import annotations

import time
import uuid

import grpc

from harness.csi import MIB, code_of, create, delete
from tests.conftest import Cluster


def _create_until_ok(channel: grpc.Channel, name: str, within: float) -> float:
    start = time.monotonic()
    while True:
        try:
            create(channel, name, MIB)
            return time.monotonic() - start
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
            assert time.monotonic() - start < within, "no takeover"
            time.sleep(0.2)


def test_standby_takes_over_within_the_lease(cluster: Cluster) -> None:
    leader = cluster.driver.processes["controller"]
    standby = cluster.driver.controller("controller-b", LEASE_SECONDS="4")
    standby.wait_ready()
    b = grpc.insecure_channel(f"unix://{standby.socket}")
    try:
        code, msg = code_of(lambda: create(b, f"pvc-{uuid.uuid4()}", MIB))
        assert code == grpc.StatusCode.UNAVAILABLE and "not the leader" in msg
        first = f"pvc-{uuid.uuid4()}"
        create(cluster.controller_channel, first, MIB)

        leader.kill()  # SIGKILL: the lease is not released, it must expire
        second = f"pvc-{uuid.uuid4()}"
        took = _create_until_ok(b, second, within=15)
        assert took < 4 + 2 + 2  # lease duration + one retry period + slack
        assert create(b, first, MIB).volume_id == first  # the old leader's volume is known, not duplicated
    finally:
        leader.start()
        leader.wait_ready()
        standby.stop()  # clean shutdown releases the lease: the fixture's controller leads again at once
    third = f"pvc-{uuid.uuid4()}"
    _create_until_ok(cluster.controller_channel, third, within=10)
    for name in (first, second, third):
        delete(cluster.controller_channel, name)
