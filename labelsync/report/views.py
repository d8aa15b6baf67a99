"""The daemon's live view as plain records: one `Snapshot` of pools, members, endpoints.

Everything that tells the outside how the daemon is doing reads the same `Snapshot`: the
state file (its JSON form, `snapshot_json.py`, read back by `labelsync status` in another
process), `/metrics`, `/healthz` and systemd's STATUS= line. `snapshot.py` builds it.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from dataclasses import dataclass

from labelsync.core.engines import EngineState
from labelsync.core.explain import ContainerVerdict
from labelsync.core.model import (
    JSON,
    STATIC_PREFIX,
    Membership,
    Origin,
    Problem,
    Severity,
    Track,
)
from labelsync.core.pool_traffic import PoolTraffic, TrafficOverview


def stale_sources(problems: Iterable[Problem]) -> tuple[Problem, ...]:
    """The problems that say a config source is not applied: an ERROR about a whole
    static file (`static:<path>`, no `[route]`), which cannot be read or parsed; the
    daemon keeps serving its last good version (sources/static.py)."""
    return tuple(
        p
        for p in problems
        if p.severity is Severity.ERROR
        and p.container.startswith(STATIC_PREFIX)
        and not p.container.endswith("]")
    )


def utc_time(seconds: float | None) -> str | None:
    """Wall-clock seconds as the warnings write a moment: `2026-01-01T12:00:00Z`."""
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def engine_warning(engine: EngineState) -> str:
    """What an engine that is out means, for `/healthz`, status and the dashboard: the
    daemon serves its containers as its last listing had them (sources/engines.py)."""
    since = utc_time(engine.since)
    return (
        f"Docker engine {engine.name} ({engine.endpoint}) is out"
        + (f" since {since}" if since else "")
        + f": {engine.reason or 'it does not answer'}; its {engine.containers} container(s) "
        "keep the state of its last listing"
    )


@dataclass(frozen=True)
class CheckView:
    """labelsync's active check of one member: None while it has no verdict yet."""

    healthy: bool | None
    reason: str


@dataclass(frozen=True)
class MemberView:
    address: str
    container: str | None
    container_id: str | None
    origin: Origin | None  # None: a member only Caddy's route knows (status_report.py)
    weight: int
    track: Track
    in_pool: bool  # False: the labels put it here, but it does not serve (see docker_health)
    check: CheckView | None
    container_state: str | None = None
    docker_health: str | None = None
    engine: str | None = None  # the container's Docker engine, when labelsync reads several


@dataclass(frozen=True)
class PoolView:
    id: str
    hosts: tuple[str, ...]
    path: str | None
    policy: str
    split: int
    active_check: str | None  # the health.path, when active checks are on
    passive: tuple[int, str] | None  # max_fails, fail_duration
    members: tuple[MemberView, ...]
    # How Caddy learns the members: the resolver (dynamic upstreams) or the route's JSON
    # (static mode, or a quiet pool outside the dynamic budget); see membership/budget.py.
    membership: Membership = Membership.RESOLVER
    # Requests, failures and latency since labelsync started, from Caddy's per-host
    # counters (core/pool_traffic.py); None while no Caddy counts per host.
    traffic: PoolTraffic | None = None


@dataclass(frozen=True)
class EndpointView:
    """One Caddy admin endpoint as its reconciler sees it."""

    admin: str
    caddy_up: bool
    last_apply_ok: bool
    last_error: str | None
    synced: bool
    admin_requests: int = 0
    admin_bytes: int = 0
    admin_writes: int = 0


@dataclass(frozen=True)
class Snapshot:
    """The daemon's live view at one moment."""

    pid: int
    version: str
    started_at: str | None
    written_at: str
    upstreams: str  # dynamic | static
    caddy_server: str
    metrics_listen: str | None
    docker_up: bool
    endpoints: tuple[EndpointView, ...]
    pools: tuple[PoolView, ...]
    problems: tuple[Problem, ...] = ()
    problem_count: int = 0  # len(problems) here; what the file said when read back
    probes: int | None = None  # active checks run so far (dynamic mode)
    shared_settings: JSON | None = None  # what `check` and `render` take from the daemon
    # Why each container with labels is (not) routed (core/explain.py), and the label
    # problems of no container listed there (the static file's).
    containers: tuple[ContainerVerdict, ...] = ()
    other_problems: tuple[Problem, ...] = ()
    # Whether Caddy counts requests per host, since when, and what no pool's numbers hold.
    traffic: TrafficOverview | None = None
    # Each Docker engine as last seen, when labelsync reads several (core/engines.py);
    # empty with one.
    engines: tuple[EngineState, ...] = ()

    @property
    def caddy_up(self) -> bool:
        return all(e.caddy_up for e in self.endpoints)

    @property
    def last_apply_ok(self) -> bool:
        return bool(self.endpoints) and all(e.last_apply_ok for e in self.endpoints)

    @property
    def last_error(self) -> str | None:
        return next((e.last_error for e in self.endpoints if e.last_error), None)

    @property
    def synced(self) -> bool:
        return bool(self.endpoints) and all(e.synced for e in self.endpoints)

    @property
    def dynamic(self) -> bool:
        return self.upstreams == "dynamic"

    @property
    def members(self) -> int:
        return sum(1 for pool in self.pools for member in pool.members if member.in_pool)

    @property
    def engines_out(self) -> tuple[EngineState, ...]:
        """The engines that do not answer; their containers keep their last listed state."""
        return tuple(engine for engine in self.engines if not engine.up)

    def engine_members(self) -> dict[str, int]:
        """Members (serving, in their pool) by engine, every engine listed; empty with one."""
        counts = dict.fromkeys((engine.name for engine in self.engines), 0)
        for pool in self.pools:
            for member in pool.members:
                if member.in_pool and member.engine is not None:
                    counts[member.engine] = counts.get(member.engine, 0) + 1
        return counts

    @property
    def stale(self) -> tuple[Problem, ...]:
        """Config sources the daemon cannot use, whose last good version it still serves."""
        return stale_sources(self.other_problems)

    def to_json(self) -> JSON:
        """The state file's form (version 1), as `labelsync status` reads it."""
        from labelsync.report.snapshot_json import snapshot_json  # it imports this module

        return snapshot_json(self)

    @classmethod
    def from_json(cls, payload: JSON) -> Snapshot:
        """Read back what `to_json` wrote (another process: the counters stay 0)."""
        from labelsync.report.snapshot_json import snapshot_from_json  # it imports this module

        return snapshot_from_json(payload)
