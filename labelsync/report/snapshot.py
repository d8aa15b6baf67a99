"""One typed snapshot of the daemon's live view, and the `LiveView` that keeps it current.

Everything that tells the outside how the daemon is doing reads the same `Snapshot`: the
state file (its JSON form, read back by `labelsync status` in another process),
`/metrics`, `/healthz` and systemd's STATUS= line. `LiveView` computes it at most once
per change (a sync, a Docker stream change, a health flip), from what the loop and the
membership channel already hold: no container is parsed again (the loop's parse memo
answers), and nothing goes through a dict on its way.

The report layer does not import the loop: it states what it reads as Protocols, which
the loop's objects satisfy.
"""

from __future__ import annotations

import asyncio
import datetime
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from labelsync import __version__
from labelsync.core.explain import (
    ContainerVerdict,
    explain_all,
    problem_from_json,
    problem_json,
    verdict_from_json,
    verdict_json,
)
from labelsync.core.model import (
    JSON,
    ContainerInfo,
    DesiredState,
    Member,
    MemberHealth,
    Pool,
    Problem,
    Route,
)
from labelsync.core.names import pool_id
from labelsync.settings import Settings, effective_settings

STATE_VERSION = 1

HealthListener = Callable[[str, str, bool, str], None]  # pool id, address, healthy, reason


# -- what the report layer reads ------------------------------------------------------------


class LoopState(Protocol):
    """What one reconciler knows (its `SyncState`)."""

    docker_up: bool
    caddy_up: bool
    last_apply_ok: bool
    last_error: str | None
    admin_writes: int
    desired: DesiredState | None
    containers: tuple[ContainerInfo, ...]
    synced: asyncio.Event

    @property
    def refused(self) -> Mapping[str, str]:  # pool id -> why Caddy refused it (quarantined)
        ...


class AdminCounters(Protocol):
    """The Caddy admin client of one endpoint, as far as it counts what it sent."""

    @property
    def endpoint(self) -> str: ...
    @property
    def requests_sent(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...


class ObservedLoop(Protocol):
    """One reconciler: its state, its Caddy, its (live) settings, its parse memo."""

    @property
    def state(self) -> LoopState: ...
    @property
    def caddy(self) -> AdminCounters: ...
    @property
    def settings(self) -> Settings: ...

    def routes_of(self, container: ContainerInfo) -> Sequence[Route]: ...


class HealthSource(Protocol):
    """labelsync's own active checks (dynamic mode)."""

    def states(self) -> Mapping[tuple[str, str], MemberHealth]: ...
    @property
    def probes(self) -> int: ...
    @property
    def on_health_change(self) -> list[HealthListener]: ...


# -- the snapshot ---------------------------------------------------------------------------


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
    origin: str  # "container" | "static"
    weight: int
    track: str
    in_pool: bool  # False: the labels put it here, but it does not serve (see docker_health)
    check: CheckView | None
    container_state: str | None = None
    docker_health: str | None = None


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
    # How Caddy learns the members: "resolver" (dynamic upstreams) or "json" (static
    # mode, or a quiet pool outside the dynamic budget); see membership/budget.py.
    membership: str = "resolver"


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

    def to_json(self) -> JSON:
        """The state file's form (version 1), as `labelsync status` reads it."""
        return {
            "version": STATE_VERSION,
            "labelsync": self.version,
            "pid": self.pid,
            "started_at": self.started_at,
            "written_at": self.written_at,
            "upstreams": self.upstreams,
            "caddy_server": self.caddy_server,
            "caddy_admin": [e.admin for e in self.endpoints],
            "metrics_listen": self.metrics_listen,
            "docker_up": self.docker_up,
            "caddy_up": [e.caddy_up for e in self.endpoints],
            "last_apply_ok": self.last_apply_ok,
            "last_error": self.last_error,
            "synced": self.synced,
            "problems": self.problem_count,
            "pools": [_pool_json(pool) for pool in self.pools],
            "settings": self.shared_settings,
            "containers": [verdict_json(verdict) for verdict in self.containers],
            "other_problems": [problem_json(problem) for problem in self.other_problems],
        }

    @classmethod
    def from_json(cls, payload: JSON) -> Snapshot:
        """Read back what `to_json` wrote (another process: the counters stay 0)."""
        admins = list(payload.get("caddy_admin") or [])
        caddy_up = list(payload.get("caddy_up") or [])
        ok = bool(payload.get("last_apply_ok"))
        error = payload.get("last_error")
        synced = bool(payload.get("synced"))
        endpoints = tuple(
            EndpointView(
                admin=str(admin),
                caddy_up=bool(caddy_up[i]) if i < len(caddy_up) else False,
                last_apply_ok=ok,
                last_error=error if i == 0 else None,
                synced=synced,
            )
            for i, admin in enumerate(admins)
        )
        return cls(
            pid=int(payload.get("pid") or 0),
            version=str(payload.get("labelsync") or ""),
            started_at=payload.get("started_at"),
            written_at=str(payload.get("written_at") or ""),
            upstreams=str(payload.get("upstreams") or "dynamic"),
            caddy_server=str(payload.get("caddy_server") or ""),
            metrics_listen=payload.get("metrics_listen"),
            docker_up=bool(payload.get("docker_up")),
            endpoints=endpoints,
            pools=tuple(_pool_from_json(pool) for pool in payload.get("pools") or ()),
            problem_count=int(payload.get("problems") or 0),
            shared_settings=payload.get("settings"),
            containers=tuple(verdict_from_json(c) for c in payload.get("containers") or ()),
            other_problems=tuple(problem_from_json(p) for p in payload.get("other_problems") or ()),
        )


def _pool_json(pool: PoolView) -> JSON:
    passive = pool.passive
    return {
        "id": pool.id,
        "hosts": list(pool.hosts),
        "path": pool.path,
        "policy": pool.policy,
        "split": pool.split,
        "active_check": pool.active_check,
        "passive": None
        if passive is None
        else {"max_fails": passive[0], "fail_duration": passive[1]},
        "members": [_member_json(member) for member in pool.members],
        "membership": pool.membership,
    }


def _member_json(member: MemberView) -> JSON:
    check = member.check
    return {
        "address": member.address,
        "container": member.container,
        "container_id": member.container_id,
        "origin": member.origin,
        "weight": member.weight,
        "track": member.track,
        "in_pool": member.in_pool,
        "check": None if check is None else {"healthy": check.healthy, "reason": check.reason},
        "container_state": member.container_state,
        "docker_health": member.docker_health,
    }


def _pool_from_json(pool: JSON) -> PoolView:
    passive = pool.get("passive")
    return PoolView(
        id=str(pool["id"]),
        hosts=tuple(pool.get("hosts") or ()),
        path=pool.get("path"),
        policy=str(pool.get("policy") or "random"),
        split=int(pool.get("split") or 0),
        active_check=pool.get("active_check"),
        passive=None if not passive else (int(passive["max_fails"]), str(passive["fail_duration"])),
        members=tuple(_member_from_json(member) for member in pool.get("members") or ()),
        membership=str(pool.get("membership") or "resolver"),
    )


def _member_from_json(member: JSON) -> MemberView:
    check = member.get("check")
    return MemberView(
        address=str(member["address"]),
        container=member.get("container"),
        container_id=member.get("container_id"),
        origin=str(member.get("origin") or "container"),
        weight=int(member.get("weight") or 1),
        track=str(member.get("track") or "stable"),
        in_pool=bool(member.get("in_pool", True)),
        check=None
        if not check
        else CheckView(healthy=check.get("healthy"), reason=str(check.get("reason") or "")),
        container_state=member.get("container_state"),
        docker_health=member.get("docker_health"),
    )


# -- building it ----------------------------------------------------------------------------


def build_snapshot(
    loops: Sequence[ObservedLoop],
    *,
    settings: Settings,
    health: HealthSource | None = None,
    started_at: str | None = None,
) -> Snapshot:
    """The daemon's view now. Pools and members come from the first loop (every loop
    builds the same desired state from the one Docker listing)."""
    first = loops[0] if loops else None
    desired = first.state.desired if first is not None else None
    containers = {c.id: c for c in (first.state.containers if first is not None else ())}
    withheld = _withheld(first, containers.values()) if first is not None else {}
    verdicts = health.states() if health is not None else None
    # The loop's pools outside the dynamic budget (a plain attribute, read if present).
    in_json: frozenset[str] = getattr(first, "json_pools", frozenset())
    dynamic = settings.upstreams == "dynamic"
    pools = tuple(
        _pool_view(
            pool,
            verdicts,
            withheld.get(pool.id, ()),
            containers,
            "resolver" if dynamic and pool.id not in in_json else "json",
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
    )


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
        running = container.state in ("running", "paused")
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
    membership: str,
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
    )


def _withheld(
    loop: ObservedLoop, containers: Iterable[ContainerInfo]
) -> dict[str, list[MemberView]]:
    """Running or paused containers that are *not* members (Docker health not `healthy`,
    paused), by the id of the pool their labels put them in: status lists them with why."""
    withheld: dict[str, list[MemberView]] = {}
    for container in containers:
        if container.state not in ("running", "paused") or container.is_serving:
            continue
        for route in loop.routes_of(container):
            withheld.setdefault(pool_id(route.hosts, route.path), []).append(
                _member_view(route, container.name, container.id, container, None, in_pool=False)
            )
    return withheld


class LiveView:
    """The current `Snapshot`, computed at most once per change."""

    def __init__(
        self,
        loops: Sequence[ObservedLoop],
        *,
        settings: Settings,
        health: HealthSource | None = None,
    ) -> None:
        self.loops = list(loops)
        self._settings = settings
        self.health = health
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
                self.loops, settings=self.settings, health=self.health, started_at=self.started_at
            )
        return self._current
