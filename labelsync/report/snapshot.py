"""Building the daemon's `Snapshot`, and the `LiveView` that keeps it current.

`LiveView` computes the snapshot at most once per change (a sync, a Docker stream
change, a health flip), from what the loop and the membership channel already hold: no
container is parsed again (the loop's parse memo answers), and nothing goes through a
dict on its way. The loop's objects are read through the report's ports (`ports.py`);
the records are `views.py`'s, their JSON form `snapshot_json.py`'s.

The names of those modules are importable from here too, where they lived before.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Iterable, Mapping, Sequence

from labelsync import __version__
from labelsync.core.engines import EngineState
from labelsync.core.explain import ContainerVerdict, explain_all
from labelsync.core.model import (
    ContainerInfo,
    DesiredState,
    Member,
    MemberHealth,
    Membership,
    Pool,
    Route,
)
from labelsync.core.names import pool_id
from labelsync.core.pool_traffic import PoolTraffic, pool_traffic, traffic_overview
from labelsync.core.traffic import TrafficBook
from labelsync.report.ports import (
    AdminCounters,
    HealthListener,
    HealthSource,
    LoopState,
    ObservedLoop,
)
from labelsync.report.snapshot_json import STATE_VERSION
from labelsync.report.views import (
    CheckView,
    EndpointView,
    MemberView,
    PoolView,
    Snapshot,
    stale_sources,
)
from labelsync.settings import Settings, effective_settings

__all__ = [
    "STATE_VERSION",
    "AdminCounters",
    "CheckView",
    "EndpointView",
    "HealthListener",
    "HealthSource",
    "LiveView",
    "LoopState",
    "MemberView",
    "ObservedLoop",
    "PoolView",
    "Snapshot",
    "build_snapshot",
    "now_iso",
    "stale_sources",
]


def build_snapshot(
    loops: Sequence[ObservedLoop],
    *,
    settings: Settings,
    health: HealthSource | None = None,
    started_at: str | None = None,
    traffic: TrafficBook | None = None,
    counted: CountedPools | None = None,
    engines: Sequence[EngineState] = (),
) -> Snapshot:
    """The daemon's view now. Pools and members come from the first loop (every loop
    builds the same desired state from the one Docker listing); their traffic from
    `traffic`, what every Caddy counted (through `counted`, which keeps it while
    neither changes); `engines`, each Docker engine as last seen when there are several."""
    first = loops[0] if loops else None
    desired = first.state.desired if first is not None else None
    pools_traffic = (counted or CountedPools()).of(desired, traffic)
    containers = {c.id: c for c in (first.state.containers if first is not None else ())}
    withheld = _withheld(first, containers.values()) if first is not None else {}
    verdicts = health.states() if health is not None else None
    in_json = first.json_pools if first is not None else frozenset()
    dynamic = settings.upstreams == "dynamic"
    pools = tuple(
        _pool_view(
            pool,
            verdicts,
            withheld.get(pool.id, ()),
            containers,
            Membership.RESOLVER if dynamic and pool.id not in in_json else Membership.JSON,
            pools_traffic.get(pool.id) if pools_traffic is not None else None,
        )
        for pool in (desired.pools if desired is not None else ())
    )
    problems = desired.problems if desired is not None else ()
    explained = _verdicts(first, containers.values(), desired, settings)
    listed = {verdict.name for verdict in explained}
    return Snapshot(
        pid=os.getpid(),
        version=__version__,
        started_at=started_at,
        written_at=now_iso(),
        upstreams=settings.upstreams,
        caddy_server=settings.caddy_server,
        metrics_listen=settings.metrics_listen,
        docker_up=bool(loops) and all(loop.state.docker_up for loop in loops),
        endpoints=tuple(_endpoint_view(loop) for loop in loops),
        pools=pools,
        problems=problems,
        problem_count=len(problems),
        probes=health.probes if health is not None else None,
        shared_settings=effective_settings(settings),
        containers=explained,
        other_problems=tuple(p for p in problems if p.container not in listed),
        traffic=traffic_overview(traffic) if traffic is not None else None,
        engines=tuple(engines),
    )


class CountedPools:
    """Each pool's traffic (`core/pool_traffic.py`), worked out again only when the book
    or the pools changed: the snapshot is rebuilt every second, the book every 5 s."""

    def __init__(self) -> None:
        self._of: tuple[DesiredState, int] | None = None
        self._counted: dict[str, PoolTraffic] | None = None

    def of(
        self, desired: DesiredState | None, traffic: TrafficBook | None
    ) -> dict[str, PoolTraffic] | None:
        if traffic is None or desired is None:
            return None
        known = self._of
        if known is None or known[0] is not desired or known[1] != traffic.version:
            hosts = {pool.id: pool.shape.hosts for pool in desired.pools}
            self._counted = pool_traffic(hosts, traffic)
            self._of = (desired, traffic.version)
        return self._counted


def _verdicts(
    loop: ObservedLoop | None,
    containers: Iterable[ContainerInfo],
    desired: DesiredState | None,
    settings: Settings,
) -> tuple[ContainerVerdict, ...]:
    """Why each container is (not) routed; routes from the loop's parse memo (a stopped
    container has no address to parse: its verdict says it is not running)."""
    if loop is None:
        return ()

    def routes_of(container: ContainerInfo) -> Sequence[Route]:
        running = container.is_up
        return loop.routes_of(container) if running else ()

    return tuple(
        explain_all(
            containers,
            desired,
            prefix=settings.label_prefix,
            default_network=settings.network,
            routes_of=routes_of,
            refused=loop.state.refused,
        )
    )


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def _endpoint_view(loop: ObservedLoop) -> EndpointView:
    state = loop.state
    return EndpointView(
        admin=loop.caddy.endpoint,
        caddy_up=state.caddy_up,
        last_apply_ok=state.last_apply_ok,
        last_error=state.last_error,
        synced=state.synced.is_set(),
        admin_requests=loop.caddy.requests_sent,
        admin_bytes=loop.caddy.bytes_sent,
        admin_writes=state.admin_writes,
    )


def _pool_view(
    pool: Pool,
    verdicts: Mapping[tuple[str, str], MemberHealth] | None,
    withheld: Sequence[MemberView],
    containers: Mapping[str, ContainerInfo],
    membership: Membership,
    traffic: PoolTraffic | None = None,
) -> PoolView:
    settings = pool.shape.settings
    members = []
    for member in pool.members:
        verdict = None if verdicts is None else verdicts.get((pool.id, member.address))
        check = None
        if verdict is not None:
            check = CheckView(verdict.healthy if verdict.checked else None, verdict.reason)
        container = containers.get(member.container_id)
        members.append(
            _member_view(member, member.container_name, member.container_id, container, check)
        )
    passive = settings.passive
    return PoolView(
        id=pool.id,
        hosts=pool.shape.hosts,
        path=pool.shape.path,
        policy=settings.lb_policy,
        split=settings.split,
        active_check=settings.active.path if settings.active else None,
        passive=None if passive is None else (passive.max_fails, passive.fail_duration),
        members=(*members, *withheld),
        membership=membership,
        traffic=traffic,
    )


def _member_view(
    source: Member | Route,
    name: str,
    container_id: str,
    container: ContainerInfo | None,
    check: CheckView | None,
    *,
    in_pool: bool = True,
) -> MemberView:
    return MemberView(
        address=source.address,
        container=name,
        container_id=container_id,
        origin=source.origin,
        weight=source.weight,
        track=source.track,
        in_pool=in_pool,
        check=check,
        container_state=container.state if container is not None else None,
        docker_health=container.health if container is not None else None,
        engine=container.engine if container is not None else None,
    )


def _withheld(
    loop: ObservedLoop, containers: Iterable[ContainerInfo]
) -> dict[str, list[MemberView]]:
    """Running or paused containers that are *not* members (Docker health not `healthy`,
    paused), by the id of the pool their labels put them in: status lists them with why."""
    withheld: dict[str, list[MemberView]] = {}
    for container in containers:
        if not container.is_up or container.is_serving:
            continue
        for route in loop.routes_of(container):
            withheld.setdefault(pool_id(route.hosts, route.path), []).append(
                _member_view(route, container.name, container.id, container, None, in_pool=False)
            )
    return withheld


class LiveView:
    """The current `Snapshot`, computed at most once per change.

    `engines` gives each Docker engine's state when labelsync reads several (the
    `EngineSet`'s `states`); an engine changes on a listing (a sync) or an engine-up/down
    event, after which the observers call `changed()`."""

    def __init__(
        self,
        loops: Sequence[ObservedLoop],
        *,
        settings: Settings,
        health: HealthSource | None = None,
        traffic: TrafficBook | None = None,
        engines: Callable[[], tuple[EngineState, ...]] | None = None,
    ) -> None:
        self.loops = list(loops)
        self._settings = settings
        self.health = health
        self.traffic = traffic
        self.engines = engines
        self._counted = CountedPools()
        self.started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self._current: Snapshot | None = None

    @property
    def settings(self) -> Settings:
        """The live settings (SIGHUP replaces the loops' settings)."""
        return self.loops[0].settings if self.loops else self._settings

    def changed(self) -> None:
        """Something the snapshot shows may have changed: compute it again when asked."""
        self._current = None

    def snapshot(self) -> Snapshot:
        if self._current is None:
            self._current = build_snapshot(
                self.loops,
                settings=self.settings,
                health=self.health,
                started_at=self.started_at,
                traffic=self.traffic,
                counted=self._counted,
                engines=self.engines() if self.engines is not None else (),
            )
        return self._current
