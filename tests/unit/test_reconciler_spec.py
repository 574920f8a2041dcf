"""A volume whose capacity cannot be used is marked Failed once, with the reason, and no disk is looked at."""

from __future__ import annotations

from typing import Any

from csidriver.agent.brake import DeletionBrake
from csidriver.agent.volumes import VolumeReconciler


class RecordingKube:
    def __init__(self) -> None:
        self.status: list[dict[str, Any]] = []
        self.events: list[str] = []
        self.finalizers: list[str] = []

    async def patch_volume_status(self, name: str, status: dict[str, Any]) -> None:
        self.status.append(status)

    async def record_event(self, obj: Any, kind: str, event_type: str, reason: str, message: str) -> None:
        self.events.append(reason)

    async def add_finalizer(self, name: str, finalizers: tuple[str, ...], finalizer: str) -> None:
        self.finalizers.append(finalizer)


class NoDisks:
    """Any use of the partition manager or the reporter fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"touched the disks: {name}")


async def test_zero_capacity_is_failed_not_retried() -> None:
    kube = RecordingKube()
    obj = {
        "metadata": {"name": "pvc-0", "namespace": "openebs"},
        "spec": {"ownerNodeID": "n1", "capacity": "0", "devname": "ssd"},
        "status": {"state": "Pending"},
    }
    rec = VolumeReconciler(kube, {"pvc-0": obj}, NoDisks(), NoDisks(), "n1", DeletionBrake(10, 60))  # type: ignore[arg-type]
    assert await rec.reconcile("pvc-0") is None
    assert [s["state"] for s in kube.status] == ["Failed"]
    assert "positive number of bytes" in kube.status[0]["error"]["message"]
    assert kube.events == ["ProvisioningFailed"] and kube.finalizers == []
