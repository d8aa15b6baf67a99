"""The state file's JSON form of a `Snapshot` (version 1), and reading it back.

`labelsync status` runs in another process: it reads what the daemon wrote with
`snapshot_json` through `snapshot_from_json` (`Snapshot.to_json`/`from_json`). What only
the daemon's memory holds (admin request and byte counts) reads back as 0. What a file of
an earlier version lacks reads back as the default (no engines, no member engine).
"""

from __future__ import annotations

from labelsync.core.engines import EngineState
from labelsync.core.explain import problem_from_json, problem_json, verdict_from_json, verdict_json
from labelsync.core.model import JSON, Membership, Origin, Track
from labelsync.core.traffic_json import (
    overview_from_json,
    overview_json,
    traffic_from_json,
    traffic_json,
)
from labelsync.report.views import CheckView, EndpointView, MemberView, PoolView, Snapshot

STATE_VERSION = 1


def snapshot_json(snapshot: Snapshot) -> JSON:
    """The state file's form (version 1), as `labelsync status` reads it."""
    return {
        "version": STATE_VERSION,
        "labelsync": snapshot.version,
        "pid": snapshot.pid,
        "started_at": snapshot.started_at,
        "written_at": snapshot.written_at,
        "upstreams": snapshot.upstreams,
        "caddy_server": snapshot.caddy_server,
        "caddy_admin": [e.admin for e in snapshot.endpoints],
        "metrics_listen": snapshot.metrics_listen,
        "docker_up": snapshot.docker_up,
        "caddy_up": [e.caddy_up for e in snapshot.endpoints],
        "last_apply_ok": snapshot.last_apply_ok,
        "last_error": snapshot.last_error,
        "synced": snapshot.synced,
        "problems": snapshot.problem_count,
        "pools": [_pool_json(pool) for pool in snapshot.pools],
        "settings": snapshot.shared_settings,
        "containers": [verdict_json(verdict) for verdict in snapshot.containers],
        "other_problems": [problem_json(problem) for problem in snapshot.other_problems],
        "traffic": None if snapshot.traffic is None else overview_json(snapshot.traffic),
        "engines": [engine_state_json(engine) for engine in snapshot.engines],
    }


def snapshot_from_json(payload: JSON) -> Snapshot:
    """Read back what `snapshot_json` wrote (another process: the counters stay 0)."""
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
    return Snapshot(
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
        traffic=overview_from_json(payload["traffic"]) if payload.get("traffic") else None,
        engines=tuple(engine_state_from_json(e) for e in payload.get("engines") or ()),
    )


def engine_state_json(engine: EngineState) -> JSON:
    """One Docker engine as last seen; `since` in wall-clock seconds."""
    return {
        "name": engine.name,
        "endpoint": engine.endpoint,
        "up": engine.up,
        "reason": engine.reason,
        "since": engine.since,
        "containers": engine.containers,
    }


def engine_state_from_json(payload: JSON) -> EngineState:
    since = payload.get("since")
    return EngineState(
        name=str(payload["name"]),
        endpoint=str(payload.get("endpoint") or ""),
        up=bool(payload.get("up")),
        reason=payload.get("reason"),
        since=None if since is None else float(since),
        containers=int(payload.get("containers") or 0),
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
        "traffic": None if pool.traffic is None else traffic_json(pool.traffic),
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
        "engine": member.engine,
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
        membership=Membership(pool.get("membership") or Membership.RESOLVER),
        traffic=traffic_from_json(pool["traffic"]) if pool.get("traffic") else None,
    )


def _member_from_json(member: JSON) -> MemberView:
    check = member.get("check")
    return MemberView(
        address=str(member["address"]),
        container=member.get("container"),
        container_id=member.get("container_id"),
        origin=Origin(member.get("origin") or Origin.CONTAINER),
        weight=int(member.get("weight") or 1),
        track=Track(member.get("track") or Track.STABLE),
        in_pool=bool(member.get("in_pool", True)),
        check=None
        if not check
        else CheckView(healthy=check.get("healthy"), reason=str(check.get("reason") or "")),
        container_state=member.get("container_state"),
        docker_health=member.get("docker_health"),
        engine=member.get("engine"),
    )
