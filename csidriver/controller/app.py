"""Wires the controller: informers -> ClusterState -> Provisioner -> gRPC."""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections.abc import Iterable

from csidriver.config import Settings
from csidriver.controller.diskevents import DiskFailureEvents
from csidriver.csi import csi_pb2_grpc
from csidriver.kube import wire
from csidriver.kube.client import make_api_client
from csidriver.kube.lease import LeaseElector
from csidriver.kube.resources import Kube
from csidriver.metrics import Family, Metrics, gauge
from csidriver.servicers import health
from csidriver.servicers.controller import ControllerServicer
from csidriver.servicers.identity import IdentityServicer
from csidriver.servicers.server import Shutdown, start_server, until_stopped
from csidriver.services.cluster import ClusterState
from csidriver.services.listing import VolumeLister
from csidriver.services.provisioning import Provisioner
from csidriver.services.snapshots import Snapshotter

log = logging.getLogger(__name__)
HEALTH_TIMEOUT = 4.0  # seconds for the /healthz Probe (kubelet's probe timeout in deploy/ is 5 s)
# While the first lists are read, the cyclic collector runs every 50,000 new containers rather than every 700: the
# objects parsed then (hundreds of thousands of dicts, none in a cycle) made a quarter of the CPU of a sync.
SYNC_GC_THRESHOLD = (50_000, 20, 20)


async def _after_sync(events: Iterable[asyncio.Event], thresholds: tuple[int, int, int]) -> None:
    """Once every cache is synced: the objects held so far (the cluster's volumes and nodes) move to the
    collector's permanent generation, never traversed again (they hold no cycles; freed by reference counting when
    deleted), and the collector's thresholds are restored."""
    for event in events:
        await event.wait()
    gc.freeze()
    gc.set_threshold(*thresholds)


def _load_metrics(cluster: ClusterState) -> Iterable[Family]:
    volumes = gauge("device_localpv_volumes", "Volumes per node and pool", labels=["node", "pool"])
    size = gauge("device_localpv_provisioned_bytes", "Bytes provisioned per node and pool", labels=["node", "pool"])
    for (node, pool), (provisioned, count) in sorted(cluster.load().items()):
        volumes.add([node, pool], count)
        size.add([node, pool], provisioned)
    return [volumes, size]


async def run(settings: Settings, stop: asyncio.Event) -> None:
    api = await make_api_client(settings.kubeconfig, settings.kube_qps, settings.kube_burst)
    kube = Kube(api, settings.namespace, "device-localpv-controller")
    cluster = ClusterState()
    # Every object of the cluster, streamed; ClusterState keeps its own compact form of each (see Kube._informer).
    # Their watches are read by the compiled decoder, which skips managedFields (DeviceNodes have another shape).
    volumes = kube.volume_informer(decode=wire.decode_event)
    nodes = kube.node_informer()
    heartbeats = kube.heartbeat_informer(decode=wire.decode_event)
    snapshots = kube.snapshot_informer(decode=wire.decode_event)
    volumes.subscribe(cluster.on_volume)
    nodes.subscribe(cluster.on_node)
    heartbeats.subscribe(cluster.on_heartbeat)
    snapshots.subscribe(cluster.on_snapshot)
    metrics = Metrics()
    metrics.api_requests(api.requests)
    metrics.add_collector(lambda: _load_metrics(cluster))
    check = health.liveness(settings.socket_path, HEALTH_TIMEOUT)
    metrics.serve(settings.metrics_address, health.from_thread(check, asyncio.get_running_loop(), HEALTH_TIMEOUT + 1))

    async def readiness() -> str | None:
        if not volumes.synced.is_set():
            return "DeviceVolume cache not synced"
        if not nodes.synced.is_set():
            return "DeviceNode cache not synced"
        if not heartbeats.synced.is_set():
            return "agent heartbeat cache not synced"
        if not snapshots.synced.is_set():
            return "DeviceSnapshot cache not synced"
        if elector is not None and not elector.attempted.is_set():
            return "leader election not tried yet"
        return None

    provisioner = Provisioner(kube, cluster, settings.create_timeout_seconds)
    elector = None
    if settings.leader_election:
        # The Lease csi-provisioner elects on (its lock name is the driver name made DNS-safe), with the same
        # identity (the Pod name): beside the sidecar (LEASE_WRITER=sidecar) the driver only follows it, so it leads
        # exactly while its own Pod's provisioner does. Two Leases could elect different Pods.
        lease_name = re.sub(r"[^a-zA-Z0-9-]", "-", settings.driver_name)
        elector = LeaseElector(
            api,
            settings.namespace,
            lease_name,
            settings.identity,
            settings.lease_seconds,
            writer=settings.lease_writer == "driver",
        )
    nodes.subscribe(DiskFailureEvents(kube, cluster, elector.is_leader if elector else lambda: True).on_node)
    server = await start_server(
        settings.socket_path,
        [
            (
                csi_pb2_grpc.add_IdentityServicer_to_server,
                IdentityServicer(settings.driver_name, readiness),
            ),
            (
                csi_pb2_grpc.add_ControllerServicer_to_server,
                ControllerServicer(
                    provisioner,
                    VolumeLister(cluster),
                    Snapshotter(kube, cluster, settings.create_timeout_seconds),
                    metrics.observe_rpc,
                    elector.confirm if elector else None,
                ),
            ),
        ],
    )
    log.info(
        "controller serving on %s (driver %s, namespace %s)",
        settings.endpoint,
        settings.driver_name,
        settings.namespace,
    )
    thresholds = gc.get_threshold()
    gc.set_threshold(*SYNC_GC_THRESHOLD)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(until_stopped(stop))
            tg.create_task(_after_sync([i.synced for i in (volumes, nodes, heartbeats, snapshots)], thresholds))
            tg.create_task(volumes.run())
            tg.create_task(nodes.run())
            tg.create_task(heartbeats.run())
            tg.create_task(snapshots.run())
            if elector is not None:
                tg.create_task(elector.run())
    except* Shutdown:
        log.info("stopping: asked to")
    finally:
        try:
            await server.stop(grace=2)
            if elector is not None:
                await elector.release()
        finally:
            await api.close()
