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
health (labelsync's active check, Caddy's passive count) with `judge_route`, so a route
that is in its pool but failing its checks reads `unhealthy` with why.

Unknown keys and keys without effect (WARNINGs) never drop a route, but a container
whose labels declare no route at all (a typo in `host`) is explained by them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from labelsync.core import label_values as v
from labelsync.core.labels import HEADER_KEY, KEYS, ROUTE_KEY, parse_container
from labelsync.core.model import (
    JSON,
    ContainerInfo,
    DesiredState,
    Problem,
    Route,
    Severity,
)
from labelsync.core.names import pool_id

ROUTED, UNHEALTHY, NOT_ROUTED = "routed", "unhealthy", "not routed"
REFUSED = "refused by Caddy"  # the pool's route is quarantined (loop/quarantine.py)

RoutesOf = Callable[[ContainerInfo], Sequence[Route]]  # a container's parsed routes


@dataclass(frozen=True)
class Reason:
    why: str
    fix: str | None = None


@dataclass(frozen=True)
class RouteVerdict:
    route: str  # "" for the default route, else the name of `route.<name>`
    status: str  # routed | unhealthy | not routed
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

    @property
    def status(self) -> str:
        return summary_status([r.status for r in self.routes])


def summary_status(statuses: Sequence[str]) -> str:
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
    return "partly routed"


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
        if name and (rel in KEYS or (rel.startswith(HEADER_KEY) and len(rel) > len(HEADER_KEY))):
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
    prefix: str = "labelsync",
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
    running = container.state in ("running", "paused")
    if routes_of is not None:
        routes = list(routes_of(container))
    else:
        routes, _ = parse_container(
            container, prefix=prefix, default_network=default_network, shape_only=not running
        )
    if problems is None:
        found = desired.problems if desired is not None else ()
        problems = [p for p in found if p.container == container.name]
    problems = tuple(problems)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    parsed = {r.route_name: r for r in routes}
    state_reason = _fix_for_state(container)
    verdicts = []
    for name in declared_routes(container.labels, prefix):
        reasons: list[Reason] = []
        route = parsed.get(name)
        switched_off = _enable_reason(container, name, prefix)
        if switched_off is not None:
            reasons.append(switched_off)
        elif state_reason is not None:
            reasons.append(state_reason)
        if switched_off is None:
            if route is None or not running:
                concern = [p for p in errors if _problem_concerns(p, name, prefix)]
                reasons += [_problem_reason(p) for p in concern]
            if route is None and not reasons:
                reasons.append(Reason("the route did not parse (see the label problems)"))
        if route is None:
            hosts = _declared_hosts(container.labels, name, prefix)
            verdicts.append(RouteVerdict(name, NOT_ROUTED, hosts=hosts, reasons=tuple(reasons)))
            continue
        identifier = pool_id(route.hosts, route.path)
        pool = desired.pool(identifier) if desired is not None else None
        member = pool is not None and any(
            m.container_id == container.id and m.address == route.address for m in pool.members
        )
        refusal = (refused or {}).get(identifier)
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
                if desired is not None
                else Reason("labelsync has not synced yet")
            )
        verdicts.append(
            RouteVerdict(
                name,
                REFUSED if refusal is not None else (ROUTED if member else NOT_ROUTED),
                pool=identifier,
                hosts=route.hosts,
                path=route.path,
                address=route.address or None,
                reasons=tuple(reasons),
            )
        )
    container_reasons: tuple[Reason, ...] = ()
    if not verdicts:
        host_key = f"{prefix}.host"
        container_reasons = tuple(
            [Reason(f"no route: {host_key} is not set", f"set {host_key}")]
            + [_problem_reason(p) for p in problems if p.key and p.key != host_key]
        )
    return ContainerVerdict(
        id=container.id,
        name=container.name,
        state=container.state,
        docker_health=container.health,
        routes=tuple(verdicts),
        problems=problems,
        reasons=container_reasons,
    )


def explain_all(
    containers: Iterable[ContainerInfo],
    desired: DesiredState | None,
    *,
    prefix: str = "labelsync",
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
            if carries_labels(c, prefix) and not c.id.startswith("static:")
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
    return {
        "id": verdict.id,
        "name": verdict.name,
        "state": verdict.state,
        "docker_health": verdict.docker_health,
        "status": verdict.status,
        "reasons": [reason_json(r) for r in verdict.reasons],
        "routes": [
            {
                "route": r.route or None,
                "status": r.status,
                "pool": r.pool,
                "hosts": list(r.hosts),
                "path": r.path,
                "address": r.address,
                "reasons": [reason_json(x) for x in r.reasons],
            }
            for r in verdict.routes
        ],
        "problems": [problem_json(p) for p in verdict.problems],
    }


def judge_route(route: JSON, health: str | None, reason: str | None) -> JSON:
    """A routed route (verdict JSON) with its pool member's judged health on top: an
    unhealthy member reads `unhealthy`, with why and what to look at."""
    if route.get("status") != ROUTED or health != "unhealthy":
        return route
    why = f"in its pool, but unhealthy: {reason or 'no reason given'}"
    fix = "make the service pass its health check (labelsync.health.*), or fix the backend"
    return {**route, "status": UNHEALTHY, "reasons": [{"why": why, "fix": fix}]}


HealthOf = Callable[[str, str], tuple[str, str | None]]


def judge_container(container: JSON, health_of: HealthOf) -> JSON:
    """`judge_route` for every route of a container (verdict JSON); `health_of(pool,
    address)` gives the member's (health, reason), ("unknown", None) when not found."""
    routes = []
    for route in container.get("routes") or []:
        if route.get("status") == ROUTED and route.get("pool") and route.get("address"):
            health, reason = health_of(str(route["pool"]), str(route["address"]))
            route = judge_route(route, health, reason)
        routes.append(route)
    return {**container, "routes": routes, "status": summary_status([r["status"] for r in routes])}


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


def verdict_from_json(payload: JSON) -> ContainerVerdict:
    """What `verdict_json` wrote, as the record again."""
    return ContainerVerdict(
        id=str(payload["id"]),
        name=str(payload["name"]),
        state=str(payload.get("state") or ""),
        docker_health=payload.get("docker_health"),
        routes=tuple(
            RouteVerdict(
                route=str(r.get("route") or ""),
                status=str(r["status"]),
                pool=r.get("pool"),
                hosts=tuple(r.get("hosts") or ()),
                path=r.get("path"),
                address=r.get("address"),
                reasons=_reasons_from_json(r.get("reasons") or ()),
            )
            for r in payload.get("routes") or ()
        ),
        problems=tuple(problem_from_json(p) for p in payload.get("problems") or ()),
        reasons=_reasons_from_json(payload.get("reasons") or ()),
    )
