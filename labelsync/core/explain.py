"""Why a container is, or is not, routed — and what to change. Pure.

One answer for `labelsync explain CONTAINER`, the dashboard and `status --json`: every
container that carries labels under the prefix gets a verdict per route its labels
declare (the default route and each `route.<name>`), each with the reasons it does not
serve and the fix. The reasons, in the order they are checked:

- `enable=false` (switched off on purpose);
- the container is not running (exited, created, restarting, dead) or is paused;
- Docker's HEALTHCHECK says `starting` or `unhealthy`;
- a label problem dropped the route (bad value, no port, wrong or ambiguous network,
  host network without `address`, a pool conflict): the ERROR lines, with their hints;
- it parsed but is not a member of its pool (leaving: a kill/stop event came first).

The label problems are the ones the build reported (`DesiredState.problems`: those of
running containers, as the log has them); the routes come from the loop's parse memo in
the daemon (`routes_of`), so nothing is parsed twice. The daemon's snapshot holds these
verdicts; the status report adds the pool member's
health (labelsync's active check, Caddy's passive count) with `judge_verdict`, so a route
that is in its pool but failing its checks reads `unhealthy` with why.

Unknown keys and keys without effect (WARNINGs) never drop a route, but a container
whose labels declare no route at all (a typo in `host`) is explained by them.

When labelsync reads several Docker engines, a verdict names its container's engine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from labelsync.core import defaults
from labelsync.core import label_values as v
from labelsync.core.labels import ROUTE_KEY, is_known_key, parse_container
from labelsync.core.model import (
    JSON,
    ContainerInfo,
    DesiredState,
    HealthStatus,
    Origin,
    Problem,
    Route,
    Severity,
)
from labelsync.core.names import pool_id


class VerdictStatus(StrEnum):
    """Whether a route serves; summed up over its routes, whether a container does."""

    ROUTED = "routed"
    UNHEALTHY = "unhealthy"  # in its pool, but the member fails its checks
    NOT_ROUTED = "not routed"
    REFUSED = "refused by Caddy"  # a route's pool is quarantined (loop/quarantine.py)
    PARTLY_ROUTED = "partly routed"  # a container some of whose routes serve


# The members by the short names the callers use.
ROUTED, UNHEALTHY, NOT_ROUTED = (
    VerdictStatus.ROUTED,
    VerdictStatus.UNHEALTHY,
    VerdictStatus.NOT_ROUTED,
)
REFUSED = VerdictStatus.REFUSED

RoutesOf = Callable[[ContainerInfo], Sequence[Route]]  # a container's parsed routes


@dataclass(frozen=True)
class Reason:
    why: str
    fix: str | None = None


@dataclass(frozen=True)
class RouteVerdict:
    route: str  # "" for the default route, else the name of `route.<name>`
    status: VerdictStatus  # not PARTLY_ROUTED
    pool: str | None = None  # the pool id, when the route parsed
    hosts: tuple[str, ...] = ()
    path: str | None = None
    address: str | None = None  # the member address, when known
    reasons: tuple[Reason, ...] = ()


@dataclass(frozen=True)
class ContainerVerdict:
    id: str
    name: str
    state: str
    docker_health: str | None
    routes: tuple[RouteVerdict, ...]
    problems: tuple[Problem, ...] = ()
    reasons: tuple[Reason, ...] = field(default=())  # when no route is declared at all
    engine: str | None = None  # its Docker engine, when labelsync reads several

    @property
    def status(self) -> VerdictStatus:
        return summary_status([r.status for r in self.routes])


def summary_status(statuses: Sequence[VerdictStatus]) -> VerdictStatus:
    """routed when every declared route serves; not routed when none does (or none is
    declared), unhealthy when every route is in its pool but failing its checks; else
    `partly routed`."""
    if not statuses:
        return NOT_ROUTED
    if all(s == ROUTED for s in statuses):
        return ROUTED
    if all(s in (NOT_ROUTED, REFUSED) for s in statuses):
        return NOT_ROUTED
    if all(s == UNHEALTHY for s in statuses):
        return UNHEALTHY
    return VerdictStatus.PARTLY_ROUTED


def carries_labels(container: ContainerInfo, prefix: str) -> bool:
    base = prefix + "."
    return any(key.startswith(base) for key in container.labels)


def declared_routes(labels: Mapping[str, str], prefix: str) -> list[str]:
    """The routes the labels declare (each one with a `host`, inherited or its own), as
    `parse_container` sees them: "" for the default route, then the named ones, sorted."""
    base = prefix + "."
    ours = {k[len(base) :] for k in labels if k.startswith(base)}
    names: set[str] = set()
    own_host: set[str] = set()
    for key in ours:
        if not key.startswith(ROUTE_KEY):
            continue
        name, _, rel = key[len(ROUTE_KEY) :].partition(".")
        if name and is_known_key(rel):
            names.add(name)
            if rel == "host":
                own_host.add(name)
    default_host = "host" in ours
    routes = [""] if default_host else []
    routes += sorted(n for n in names if default_host or n in own_host)
    return routes


def _declared_hosts(labels: Mapping[str, str], route: str, prefix: str) -> tuple[str, ...]:
    """The hosts a route that did not parse was meant for, when its `host` is valid."""
    own = f"{prefix}.{ROUTE_KEY}{route}.host" if route else None
    raw = labels.get(own) if own else None
    if raw is None:
        raw = labels.get(f"{prefix}.host")
    try:
        hosts = v.parse_hosts(raw) if raw is not None else ()
    except v.LabelValueError:
        return ()
    return tuple(hosts) if isinstance(hosts, tuple) else ()


def _fix_for_state(container: ContainerInfo) -> Reason | None:
    name = container.name
    if container.state == "paused":
        return Reason("container is paused", f"docker unpause {name}")
    if container.state != "running":
        return Reason(f"container is {container.state}, not running", f"docker start {name}")
    if container.health == "starting":
        return Reason(
            "Docker health check: starting (it joins once Docker calls it healthy)",
            "wait for the HEALTHCHECK's first pass, or check its start period",
        )
    if container.health == "unhealthy":
        return Reason(
            "Docker health check: unhealthy",
            f"see why with: docker inspect --format '{{{{json .State.Health}}}}' {name}",
        )
    return None


def _problem_concerns(problem: Problem, route: str, prefix: str) -> bool:
    """Whether an ERROR about `problem.key` can drop `route` (a default-route key is
    inherited by every named route; a named route's key concerns that route only)."""
    named = f"{prefix}.{ROUTE_KEY}"
    if not problem.key.startswith(named):
        return True
    name = problem.key[len(named) :].partition(".")[0]
    return name == route


def _problem_reason(problem: Problem) -> Reason:
    if not problem.key:
        return Reason(problem.message)
    if problem.value is None:
        return Reason(f"{problem.key}: {problem.message}")
    return Reason(f"{problem.key}={problem.value!r}: {problem.message}")


def _enable_reason(container: ContainerInfo, route: str, prefix: str) -> Reason | None:
    keys = [f"{prefix}.{ROUTE_KEY}{route}.enable"] if route else []
    keys.append(f"{prefix}.enable")
    for key in keys:
        if key in container.labels:
            try:
                enabled = v.parse_bool(container.labels[key])
            except v.LabelValueError:
                return None  # reported as a label problem
            if enabled:
                return None
            return Reason(f"switched off: {key}={container.labels[key]!r}", f"remove {key}")
    return None


def explain_container(
    container: ContainerInfo,
    desired: DesiredState | None,
    *,
    prefix: str = defaults.LABEL_PREFIX,
    default_network: str | None = None,
    routes_of: RoutesOf | None = None,
    problems: Sequence[Problem] | None = None,
    refused: Mapping[str, str] | None = None,
) -> ContainerVerdict:
    """The verdict for one container (call it only for one that `carries_labels`).

    `desired` is what the loop built from the same listing (None: nothing built yet);
    `routes_of` gives the container's routes (default: parse its labels); `problems` are
    the container's label problems (default: those of `desired` that name it);
    `refused` maps the pools whose route Caddy refused (quarantined) to Caddy's reason.
    """
    if routes_of is not None:
        routes = list(routes_of(container))
    else:
        routes, _ = parse_container(
            container,
            prefix=prefix,
            default_network=default_network,
            shape_only=not container.is_up,
        )
    if problems is None:
        found = desired.problems if desired is not None else ()
        problems = [p for p in found if p.container == container.name]
    problems = tuple(problems)
    facts = _Facts(
        container,
        desired,
        prefix,
        errors=tuple(p for p in problems if p.severity is Severity.ERROR),
        state_reason=_fix_for_state(container),
        refused=refused or {},
    )
    parsed = {r.route_name: r for r in routes}
    verdicts = tuple(
        _route_verdict(facts, name, parsed.get(name))
        for name in declared_routes(container.labels, prefix)
    )
    return ContainerVerdict(
        id=container.id,
        name=container.name,
        state=container.state,
        docker_health=container.health,
        routes=verdicts,
        problems=problems,
        reasons=() if verdicts else _no_route_reasons(problems, prefix),
        engine=container.engine,
    )


@dataclass(frozen=True)
class _Facts:
    """What the verdicts on the routes of one container are drawn from."""

    container: ContainerInfo
    desired: DesiredState | None
    prefix: str
    errors: tuple[Problem, ...]  # the container's label problems that drop routes
    state_reason: Reason | None  # why the container does not serve, if it does not
    refused: Mapping[str, str]  # pool id -> Caddy's reason, for the quarantined pools


def _route_verdict(facts: _Facts, name: str, route: Route | None) -> RouteVerdict:
    """The verdict on one declared route; `route` is None when it did not parse."""
    reasons = _reasons_against(facts, name, route)
    if route is None:
        hosts = _declared_hosts(facts.container.labels, name, facts.prefix)
        return RouteVerdict(name, NOT_ROUTED, hosts=hosts, reasons=tuple(reasons))
    identifier = pool_id(route.hosts, route.path)
    pool = facts.desired.pool(identifier) if facts.desired is not None else None
    member = pool is not None and any(
        m.container_id == facts.container.id and m.address == route.address for m in pool.members
    )
    refusal = facts.refused.get(identifier)
    if refusal is not None:
        reasons.append(
            Reason(
                f"Caddy refused this pool's route: {refusal}",
                "change the label Caddy's reason names; until the labels change, Caddy "
                "keeps the route it had (or none)",
            )
        )
    if not member and not reasons:
        reasons.append(
            Reason("not a member of its pool: leaving (a kill or stop event came first)")
            if facts.desired is not None
            else Reason("labelsync has not synced yet")
        )
    return RouteVerdict(
        name,
        REFUSED if refusal is not None else (ROUTED if member else NOT_ROUTED),
        pool=identifier,
        hosts=route.hosts,
        path=route.path,
        address=route.address or None,
        reasons=tuple(reasons),
    )


def _reasons_against(facts: _Facts, name: str, route: Route | None) -> list[Reason]:
    """Why a declared route does not serve, before its pool is looked at: switched off;
    else the container's state, and the label errors that concern the route when it did
    not parse (or its container is not up, and so was not built)."""
    switched_off = _enable_reason(facts.container, name, facts.prefix)
    if switched_off is not None:
        return [switched_off]
    reasons = [facts.state_reason] if facts.state_reason is not None else []
    if route is None or not facts.container.is_up:
        concern = [p for p in facts.errors if _problem_concerns(p, name, facts.prefix)]
        reasons += [_problem_reason(p) for p in concern]
    if route is None and not reasons:
        reasons.append(Reason("the route did not parse (see the label problems)"))
    return reasons


def _no_route_reasons(problems: Sequence[Problem], prefix: str) -> tuple[Reason, ...]:
    """Why labels declare no route: no `host`, and whatever else is wrong with them (a
    typo in `host` is an unknown key)."""
    host_key = f"{prefix}.host"
    return (
        Reason(f"no route: {host_key} is not set", f"set {host_key}"),
        *(_problem_reason(p) for p in problems if p.key and p.key != host_key),
    )


def explain_all(
    containers: Iterable[ContainerInfo],
    desired: DesiredState | None,
    *,
    prefix: str = defaults.LABEL_PREFIX,
    default_network: str | None = None,
    routes_of: RoutesOf | None = None,
    refused: Mapping[str, str] | None = None,
) -> list[ContainerVerdict]:
    """Verdicts for every container carrying labels under the prefix, by name."""
    by_name: dict[str, list[Problem]] = {}
    for problem in desired.problems if desired is not None else ():
        by_name.setdefault(problem.container, []).append(problem)
    return sorted(
        (
            explain_container(
                c,
                desired,
                prefix=prefix,
                default_network=default_network,
                routes_of=routes_of,
                problems=by_name.get(c.name, []),
                refused=refused,
            )
            for c in containers
            if carries_labels(c, prefix) and c.origin is Origin.CONTAINER
        ),
        key=lambda verdict: (verdict.name, verdict.id),
    )


# -- JSON, and the member's health on top ----------------------------------------------------


def reason_json(reason: Reason) -> JSON:
    return {"why": reason.why, "fix": reason.fix}


def problem_json(problem: Problem) -> JSON:
    return {
        "severity": problem.severity.value,
        "container": problem.container,
        "key": problem.key or None,
        "value": problem.value,
        "message": problem.message,
        "text": str(problem),
    }


def verdict_json(verdict: ContainerVerdict) -> JSON:
    """A verdict as JSON; `engine` only when labelsync reads several Docker engines."""
    payload: JSON = {
        "id": verdict.id,
        "name": verdict.name,
        "state": verdict.state,
        "docker_health": verdict.docker_health,
        "status": verdict.status,
        "reasons": [reason_json(r) for r in verdict.reasons],
        "routes": [route_json(r) for r in verdict.routes],
        "problems": [problem_json(p) for p in verdict.problems],
    }
    if verdict.engine is not None:
        payload["engine"] = verdict.engine
    return payload


def route_json(route: RouteVerdict) -> JSON:
    return {
        "route": route.route or None,
        "status": route.status,
        "pool": route.pool,
        "hosts": list(route.hosts),
        "path": route.path,
        "address": route.address,
        "reasons": [reason_json(x) for x in route.reasons],
    }


# (pool, address) -> the member's health, and why
HealthOf = Callable[[str, str], tuple[HealthStatus, str | None]]


def judge_route(
    route: RouteVerdict, health: HealthStatus | None, reason: str | None
) -> RouteVerdict:
    """A route with its pool member's judged health on top: a routed route whose member
    is unhealthy reads `unhealthy`, with why and what to look at."""
    if route.status != ROUTED or health != HealthStatus.UNHEALTHY:
        return route
    why = f"in its pool, but unhealthy: {reason or 'no reason given'}"
    fix = "make the service pass its health check (labelsync.health.*), or fix the backend"
    return replace(route, status=UNHEALTHY, reasons=(Reason(why, fix),))


def judge_verdict(verdict: ContainerVerdict, health_of: HealthOf) -> ContainerVerdict:
    """`judge_route` for every routed route of a container; `health_of(pool, address)`
    gives the member's (health, reason), (HealthStatus.UNKNOWN, None) when not found."""
    return replace(verdict, routes=_judge_routes(verdict.routes, health_of))


def _judge_routes(routes: Iterable[RouteVerdict], health_of: HealthOf) -> tuple[RouteVerdict, ...]:
    judged = []
    for route in routes:
        if route.status == ROUTED and route.pool and route.address:
            health, reason = health_of(route.pool, route.address)
            route = judge_route(route, health, reason)
        judged.append(route)
    return tuple(judged)


# -- read back (the state file is JSON; `status` runs in another process) ---------------------


def problem_from_json(payload: JSON) -> Problem:
    return Problem(
        Severity(payload["severity"]),
        str(payload["container"]),
        str(payload.get("key") or ""),
        payload.get("value"),
        str(payload["message"]),
    )


def _reasons_from_json(items: Iterable[JSON]) -> tuple[Reason, ...]:
    return tuple(Reason(str(r["why"]), r.get("fix")) for r in items)


def _route_from_json(payload: JSON) -> RouteVerdict:
    return RouteVerdict(
        route=str(payload.get("route") or ""),
        status=VerdictStatus(payload["status"]),
        pool=payload.get("pool"),
        hosts=tuple(payload.get("hosts") or ()),
        path=payload.get("path"),
        address=payload.get("address"),
        reasons=_reasons_from_json(payload.get("reasons") or ()),
    )


def verdict_from_json(payload: JSON) -> ContainerVerdict:
    """What `verdict_json` wrote, as the record again."""
    return ContainerVerdict(
        id=str(payload["id"]),
        name=str(payload["name"]),
        state=str(payload.get("state") or ""),
        docker_health=payload.get("docker_health"),
        routes=tuple(_route_from_json(r) for r in payload.get("routes") or ()),
        problems=tuple(problem_from_json(p) for p in payload.get("problems") or ()),
        reasons=_reasons_from_json(payload.get("reasons") or ()),
        engine=payload.get("engine"),
    )
