from __future__ import annotations

from csidriver.agent.brake import DeletionBrake


def test_brake_admits_n_per_window_then_defers_until_room() -> None:
    now = [100.0]
    brake = DeletionBrake(limit=3, window=60, clock=lambda: now[0])
    assert [brake.admit() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert brake.admit() == 60.0
    now[0] += 59.5
    assert brake.admit() == 0.5
    now[0] += 0.5
    assert brake.admit() == 0.0  # the first deletion left the window
    assert brake.deferred == 2


def test_zero_limit_means_no_brake() -> None:
    brake = DeletionBrake(limit=0, window=60)
    assert all(brake.admit() == 0.0 for _ in range(1000))
