"""Who puts our finalizer on a DeviceVolume, and what it costs in API requests, on the in-memory fakes.

The controller creates a volume without it, as the original driver's controller does: the original's agent marks a
volume Ready only when it carries no finalizer, so during a rolling upgrade (our controller, its agents) a volume
created with one would be carved and never reported Ready. Our agent adds it before it touches a disk, and only when
it is missing: a volume that already carries it (the original's agent put it there, or a future controller that
knows the node runs our agent) is carved with no finalizer request."""

from __future__ import annotations

from csidriver.api import constants as c
from csidriver.api.objects import State, new_volume_body
from tests.unit.test_volume_reconciler import NODE, World


def test_the_controller_creates_a_volume_without_a_finalizer() -> None:
    body = new_volume_body("pvc-1", c.DEFAULT_NAMESPACE, NODE, "ssd", 64 << 20, "pvc-1")
    assert "finalizers" not in body["metadata"]
    assert body["status"] == {"state": State.PENDING.value}


async def test_a_volume_already_carrying_our_finalizer_is_carved_without_patching_it() -> None:
    w = World()
    name = await w.volume()
    vol = w.obj(name)
    await w.kube.add_finalizer(name, vol.finalizers, c.FINALIZER)
    before = list(w.kube.writes)
    assert await w.rec.reconcile(name) is None
    assert w.obj(name).state is State.READY and w.obj(name).finalizers == (c.FINALIZER,)
    made = w.kube.writes[len(before) :]
    assert [op for op, _, _ in made if "finalizer" in op] == [], made
    assert len(made) == 1, made  # the status patch (Ready) is the only request for this volume


async def test_a_volume_without_it_gets_it_in_one_request_before_any_disk_is_touched() -> None:
    w = World()
    name = await w.volume()
    before = len(w.kube.writes)
    assert await w.rec.reconcile(name) is None
    made = w.kube.writes[before:]
    assert [op for op, _, _ in made].count("add-finalizer") == 1 and made[0][0] == "add-finalizer", made
