"""Wires the agent: the Node gRPC service starts first (it needs no API server), then the reconcilers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import grpc

from csidriver.agent.brake import DeletionBrake
from csidriver.agent.localhost import LocalHost
from csidriver.agent.reporter import NodeReporter
from csidriver.agent.snapshots import SnapshotReconciler
from csidriver.agent.volumes import VolumeReconciler
from csidriver.agent.workqueue import WorkQueue
from csidriver.allocator import trim_heap
from csidriver.api import constants as c
from csidriver.api.objects import cordoned_disks
from csidriver.config import Settings
from csidriver.csi import csi_pb2_grpc
from csidriver.host import DiskInventory, Filesystems, Mounter, PartitionManager, Runner
from csidriver.kube.client import make_api_client
from csidriver.kube.heartbeat import Heartbeat
from csidriver.kube.informer import Informer
from csidriver.kube.resources import Kube
from csidriver.metrics import Family, Metrics, counter, gauge
from csidriver.pluginregistration import api_pb2_grpc
from csidriver.servicers import health
from csidriver.servicers.identity import IdentityServicer
from csidriver.servicers.node import NodeServicer
from csidriver.servicers.registration import RegistrationServicer, RegistrationState, registration_socket
from csidriver.servicers.server import Shutdown, start_server, until_stopped
from csidriver.services.publish import Publisher

log = logging.getLogger(__name__)
HEALTH_TIMEOUT = 4.0  # seconds for the /healthz Probe (kubelet's probe timeout in deploy/ is 5 s)
TRIM_DELAY = 0.5  # seconds of quiet after a burst of reconciles before the heap's free pages go back to the system


class TrimWhenQuiet:
    """Calls `trim` once `delay` seconds have passed since it was last called: once per burst of work, whichever
    of the agent's work queues went idle last."""

    def __init__(self, delay: float, trim: Callable[[], object] = trim_heap) -> None:
        self._delay = delay
        self._trim = trim
        self._handle: asyncio.TimerHandle | None = None

    def __call__(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._handle = asyncio.get_running_loop().call_later(self._delay, self._trim)


async def _node_identity(kube: Kube, settings: Settings) -> tuple[dict[str, str], dict[str, Any] | None]:
    """Topology labels (node name + allow-listed Node labels) and an owner reference to the Node."""
    node = await _until_done(lambda: kube.get_node(settings.node_id), f"cannot read Node {settings.node_id} yet")
    topology = {c.TOPOLOGY_KEY: settings.node_id}
    if node is None:
        log.warning("Node %s not found: DeviceNode gets no owner reference", settings.node_id)
        return topology, None
    labels = node["metadata"].get("labels") or {}
    for key in settings.topology_labels:
        if key in labels:
            topology[key] = labels[key]
    owner = {"apiVersion": "v1", "kind": "Node", "name": settings.node_id, "uid": node["metadata"]["uid"]}
    return topology, owner


def _disk_metrics(reporter: NodeReporter) -> Iterable[Family]:
    names = ("size", "free", "largest_extent", "free_entries")
    families = {
        n: gauge(f"device_localpv_disk_{n}", f"Pool disk {n.replace('_', ' ')}", labels=["pool", "disk"]) for n in names
    }
    healthy = gauge("device_localpv_disk_healthy", "1 if the pool disk is readable", labels=["pool", "disk"])
    for d in reporter.disks:
        healthy.add([d.pool, d.path], 1)
        for n in names:
            families[n].add([d.pool, d.path], getattr(d, n))
    for d in reporter.failed:
        healthy.add([d.pool, d.path], 0)
    return [*families.values(), healthy]


def _queue_metrics(queue: WorkQueue) -> Iterable[Family]:
    depth = gauge("device_localpv_reconcile_queue_depth", "DeviceVolume keys waiting to be reconciled")
    depth.add([], queue.depth())
    retries = counter("device_localpv_reconcile_retries", "DeviceVolume reconciles that failed and retry")
    retries.add([], queue.retries)
    return [depth, retries]


def _brake_metrics(brake: DeletionBrake) -> Iterable[Family]:
    deferred = counter("device_localpv_deletions_deferred", "Partition deletions deferred by the brake on destruction")
    deferred.add([], brake.deferred)
    engaged = gauge("device_localpv_deletion_brake_engaged", "1 while deletions are being held back")
    engaged.add([], 1 if brake.engaged else 0)
    return [deferred, engaged]


async def run(settings: Settings, stop: asyncio.Event) -> None:
    runner = Runner()
    inventory = DiskInventory(runner, settings.include_devices_regex, settings.ignore_devices_regex)
    partitions = PartitionManager(runner, settings.lock_dir)
    host = LocalHost(inventory, Mounter(runner), Filesystems(runner))
    metrics = Metrics()
    topology: dict[str, str] = {c.TOPOLOGY_KEY: settings.node_id}  # completed once the Node is read
    api = await make_api_client(settings.kubeconfig, settings.kube_qps, settings.kube_burst)
    kube = Kube(api, settings.namespace, "device-localpv-agent")
    metrics.api_requests(api.requests)
    reporter_box: list[NodeReporter] = []
    wake: list[Callable[[str], None]] = []  # the work queue's wake, once it exists

    def wake_volume(volume_id: str) -> None:
        # A volume whose deletion waits in backoff (still mounted, or its disk failed) is reconciled at once when
        # what it waited for happens (its unpublish, the disk reading again).
        for w in wake:
            w(volume_id)

    beats: list[Heartbeat] = []

    async def readiness() -> str | None:
        if not (reporter_box and reporter_box[0].scanned.is_set()):
            return "first disk scan not in the DeviceNode yet"
        if not (beats and beats[0].attempted.is_set()):
            # Ready only once the controller can see this agent alive (a restarted agent's Lease may be stale).
            return "first heartbeat not written yet"
        return None

    server = await start_server(
        settings.socket_path,
        [
            (
                csi_pb2_grpc.add_IdentityServicer_to_server,
                IdentityServicer(settings.driver_name, readiness),
            ),
            (
                csi_pb2_grpc.add_NodeServicer_to_server,
                NodeServicer(
                    Publisher(host, settings.publish_roots, settings.default_fstype),
                    settings.node_id,
                    topology,
                    metrics.observe_rpc,
                    wake_volume,
                ),
            ),
        ],
    )
    log.info("agent for node %s serving on %s", settings.node_id, settings.endpoint)
    registration = RegistrationState()
    check = health.liveness(settings.socket_path, HEALTH_TIMEOUT, registration.problem)
    metrics.serve(settings.metrics_address, health.from_thread(check, asyncio.get_running_loop(), HEALTH_TIMEOUT + 1))
    registrar: grpc.aio.Server | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(until_stopped(stop))
            # First of all: a copy (clone, snapshot, restore) cut short by a crash must not leave its source frozen,
            # and the agent reads ready only once it is thawed.
            await partitions.thaw_leftovers()
            found, owner = await _node_identity(kube, settings)
            topology.update(found)
            if settings.registration_dir:
                # Only now: kubelet calls NodeGetInfo right after registering and copies the topology keys
                # into CSINode, so they must be complete.
                registrar = await _register_with_kubelet(settings, registration)
            informer = kube.volume_informer(settings.node_id)

            def held() -> set[str]:
                return {_disk_guid(v) for v in informer.cache.values()} - {""}

            def disks_back(guids: set[str]) -> None:
                back = {g.upper() for g in guids}
                for name in [name for name, v in informer.cache.items() if _disk_guid(v) in back]:
                    wake_volume(name)

            reporter = NodeReporter(
                kube,
                inventory,
                settings.node_id,
                topology,
                owner,
                settings.resync_seconds,
                held=held,
                write_delay=settings.inventory_write_seconds,
                recovered=disks_back,
            )
            reporter_box.append(reporter)
            metrics.add_collector(lambda: _disk_metrics(reporter))
            brake = DeletionBrake(settings.max_deletions, settings.deletion_window_seconds)
            metrics.add_collector(lambda: _brake_metrics(brake))
            own_node = kube.node_informer(settings.node_id)

            def cordoned() -> set[str]:
                return cordoned_disks((own_node.cache.get(settings.node_id) or {}).get("metadata") or {})

            snapshots = kube.snapshot_informer(settings.node_id)
            reconciler = VolumeReconciler(
                kube,
                informer.cache,
                partitions,
                reporter,
                settings.node_id,
                brake,
                cordoned,
                snapshots.cache,
                snapshots.synced.is_set,
            )
            quiet = TrimWhenQuiet(TRIM_DELAY)
            queue = WorkQueue(reconciler.reconcile, settings.workers, "devicevolume", quiet)
            wake.append(queue.wake)
            informer.subscribe(lambda name, _old, _new: queue.add(name))
            snapshotter = SnapshotReconciler(
                kube,
                snapshots.cache,
                informer.cache,
                partitions,
                reporter,
                settings.node_id,
                brake,
                cordoned,
                informer.synced.is_set,
            )
            snap_queue = WorkQueue(snapshotter.reconcile, settings.workers, "devicesnapshot", quiet)
            snapshots.subscribe(lambda name, _old, _new: snap_queue.add(name))

            def left(_name: str, _old: Any, new: Any) -> None:
                # A volume migrated to another node (or deleted) may have been the last one on a disk that is gone.
                if new is None and reporter.failed:
                    reporter.poke()

            informer.subscribe(left)
            metrics.add_collector(lambda: _queue_metrics(queue))
            await _first_scan(reporter)
            # Alive for the controller's scheduling only from here: its DeviceNode is written.
            beats.append(Heartbeat(api, settings.namespace, settings.node_id, settings.heartbeat_seconds, owner))
            tg.create_task(beats[0].run())
            tg.create_task(reporter.run())
            tg.create_task(informer.run())
            tg.create_task(own_node.run())
            tg.create_task(queue.run())
            tg.create_task(snapshots.run())
            tg.create_task(snap_queue.run())
            tg.create_task(_promise_stamps(informer, reporter))
    except* Shutdown:
        log.info("stopping: asked to")
    finally:
        try:
            if registrar is not None and settings.registration_dir:
                await registrar.stop(grace=1)
                # Removing the socket tells kubelet's plugin watcher that the plugin is gone.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(registration_socket(settings.registration_dir, settings.driver_name))
            await server.stop(grace=2)
        finally:
            await api.close()


async def _register_with_kubelet(settings: Settings, state: RegistrationState) -> grpc.aio.Server:
    assert settings.registration_dir
    path = registration_socket(settings.registration_dir, settings.driver_name)
    servicer = RegistrationServicer(settings.driver_name, settings.socket_path, state)
    server = await start_server(path, [(api_pb2_grpc.add_RegistrationServicer_to_server, servicer)])
    log.info("registration socket for kubelet at %s", path)
    return server


T = TypeVar("T")


async def _until_done(call: Callable[[], Awaitable[T]], what: str) -> T:
    """`call` retried with jittered exponential backoff (0.5 s doubling to 30 s) until it returns."""
    delay = 0.5
    while True:
        try:
            return await call()
        except Exception as e:
            log.warning("%s: %s", what, e)
            await asyncio.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 30)


async def _promise_stamps(informer: Informer, reporter: NodeReporter) -> None:
    """After a restart: stamps on this node's volumes that the previous process took and did not write."""
    await informer.synced.wait()
    reporter.promise(max((_stamp(v) for v in informer.cache.values()), default=0))


def _disk_guid(raw: Mapping[str, Any]) -> str:
    """The GPT GUID (upper case) of the disk a volume is placed on, or ""."""
    return str((raw.get("status") or {}).get("diskGUID") or "").upper()


def _stamp(raw: Mapping[str, Any]) -> int:
    stamp = (raw.get("status") or {}).get("inventoryGeneration")
    return stamp if isinstance(stamp, int) else 0


async def _first_scan(reporter: NodeReporter) -> None:
    await _until_done(reporter.refresh, "first disk scan/report failed")
