"""How big each scenario runs: `--quick` (make bench) and `--full` (make bench-full)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    name: str
    reaction_containers: int
    cost_pools: tuple[int, ...]
    cost_reps: int
    burst_containers: int
    burst_reps: int
    cold_containers: int
    cold_pools: int
    cold_reps: int
    load_clients: int
    load_seconds: float
    rolls: int
    setting_changes: int
    busy_pools: tuple[int, ...]
    busy_seconds: float
    scenario_timeout: float  # seconds; a scenario that takes longer fails, the rest run

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


QUICK = Sizes(
    name="quick",
    reaction_containers=20,
    cost_pools=(10, 100, 1000),
    cost_reps=5,
    burst_containers=40,
    burst_reps=2,
    cold_containers=2000,
    cold_pools=1000,
    cold_reps=3,
    load_clients=8,
    load_seconds=10.0,
    rolls=5,
    setting_changes=15,
    busy_pools=(10, 90, 150, 500, 1000),
    busy_seconds=6.0,
    scenario_timeout=900.0,
)

FULL = Sizes(
    name="full",
    reaction_containers=50,
    cost_pools=(10, 100, 1000, 5000),
    cost_reps=15,
    burst_containers=100,
    burst_reps=3,
    cold_containers=2000,
    cold_pools=1000,
    cold_reps=5,
    load_clients=8,
    load_seconds=30.0,
    rolls=5,
    setting_changes=50,
    busy_pools=(10, 90, 150, 500, 1000),
    busy_seconds=10.0,
    scenario_timeout=2400.0,
)
