"""The status report: members judged healthy, unhealthy or unknown, as a table or JSON.

Pure: takes the daemon's `Snapshot` (live in the daemon, or read back from its state
file by `labelsync.app.status`) and what Caddy's admin API answered, and merges them.
A member's health is the verdict of every source
that has one: any failing source makes it `unhealthy` (all failing reasons are given),
else any passing one `healthy`, else `unknown` with what is pending. The sources:
Docker's `HEALTHCHECK` and a paused container; labelsync's own active check (dynamic
mode); Caddy's active check (static mode); Caddy's passive failure count against the
pool's `max_fails`. Counts that Caddy did not report stay None: null in JSON, `-` in the
table. Each pool's requests, failures and latency since labelsync started come from the
daemon's snapshot (Caddy counts per host: core/pool_traffic.py); per member Caddy keeps
no total, so `total_requests` stays null. When labelsync reads several Docker engines, the
report lists them (up or out, since when and why, their containers and members) and each
member's engine; an engine that is out is a warning, as a stale static file is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from labelsync.core.caddy_metrics import MetricsState
from labelsync.core.engines import EngineState
from labelsync.core.explain import VerdictStatus, judge_verdict, problem_json, verdict_json
from labelsync.core.model import JSON, HealthStatus, Membership, Origin, Track
from labelsync.core.names import (
    has_instance,
    is_owned,
    member_address_of,
    member_target,
)
from labelsync.core.pool_traffic import PoolTraffic, TrafficOverview, describe
from labelsync.core.route_shape import is_dynamic, static_members
from labelsync.core.traffic_json import overview_json, traffic_json
from labelsync.report.views import MemberView, PoolView, Snapshot, engine_warning, utc_time

REPORT_VERSION = 1
CADDY_PASSIVE_MAX_FAILS = 1  # Caddy's default when passive checks are on


@dataclass(frozen=True)
class MemberStatus:
    container: str | None  # container name; None when only Caddy knows the member
    origin: Origin | None  # None when only Caddy knows the member
    address: str
    health: HealthStatus
    reason: str | None
    active_requests: int | None
    failures: int | None
    total_requests: int | None = None  # Caddy counts per host, not per upstream: no totals
    caddy_upstream: str | None = None  # the address as Caddy names it, when it reports it
    engine: str | None = None  # its container's Docker engine, when labelsync reads several


@dataclass(frozen=True)
class PoolStatus:
    id: str
    hosts: tuple[str, ...]
    path: str | None
    policy: str | None
    upstreams: str | None  # dynamic | static
    members: tuple[MemberStatus, ...]
    note: str | None = None
    caddy_policy: str | None = None  # what Caddy's route holds, when it is not `policy`
    # How Caddy learns the members (dynamic upstreams, or in the route: static mode, or a
    # quiet pool outside the dynamic budget); None when unknown.
    membership: Membership | None = None
    traffic: PoolTraffic | None = None  # the daemon's count of its hosts; None: not counted


@dataclass(frozen=True)
class StatusReport:
    caddy_admin: str
    caddy_server: str
    daemon: JSON | None  # pid, mode, Docker/Caddy reachability; None when not running
    pools: tuple[PoolStatus, ...]
    notes: tuple[str, ...] = ()
    # Every container with labels, routed or not and why (`core.explain`, judged with
    # its members' health here); label problems of no listed container (static file).
    containers: tuple[JSON, ...] = ()
    other_problems: tuple[JSON, ...] = ()
    # Config sources the daemon cannot use and whose last good version it serves (a
    # static file that cannot be read or parsed): the text of their problem, with since when.
    warnings: tuple[str, ...] = ()
    traffic: TrafficOverview | None = None  # whether and since when requests are counted
    # Each Docker engine as last seen and its members, when labelsync reads several.
    engines: tuple[EngineState, ...] = ()
    engine_members: Mapping[str, int] = field(default_factory=dict)

    @property
    def engine_warnings(self) -> tuple[str, ...]:
        """The engines that are out: the daemon serves their last listing, as it serves a
        stale static file's last good version."""
        return tuple(engine_warning(engine) for engine in self.engines if not engine.up)


# -- judging health ------------------------------------------------------------------------


@dataclass
class _Signals:
    """Verdicts from every source that has one: True, False, or None (no verdict yet)."""

    found: list[tuple[bool | None, str]] = field(default_factory=list)

    def add(self, verdict: bool | None, reason: str) -> None:
        self.found.append((verdict, reason))

    def judge(self) -> tuple[HealthStatus, str | None]:
        failing = [why for verdict, why in self.found if verdict is False]
        if failing:
            return HealthStatus.UNHEALTHY, "; ".join(failing)
        passing = [why for verdict, why in self.found if verdict is True]
        if passing:
            return HealthStatus.HEALTHY, "; ".join(passing)
        pending = [why for verdict, why in self.found if verdict is None]
        why = "; ".join(pending) if pending else "no health check configured"
        return HealthStatus.UNKNOWN, why


@dataclass(frozen=True)
class _PoolFacts:
    """One pool as the sources describe it, before judging."""

    id: str
    hosts: tuple[str, ...]
    path: str | None
    policy: str | None
    dynamic: bool | None
    caddy_active: bool  # Caddy runs the active checks (static mode)
    labelsync_active: bool  # labelsync runs them (dynamic mode)
    passive: tuple[int, str] | None  # max_fails, fail_duration
    members: Sequence[MemberView] | None  # None: unknown
    caddy_policy: str | None = None  # Caddy's, where the labels' policy is carried otherwise
    membership: Membership | None = None
    traffic: PoolTraffic | None = None


def _route_facts(route: JSON) -> _PoolFacts:
    match = (route.get("match") or [{}])[0]
    handler: JSON = next(
        (h for h in route.get("handle") or [] if h.get("handler") == "reverse_proxy"), {}
    )
    checks = handler.get("health_checks") or {}
    passive = checks.get("passive")
    selection = (handler.get("load_balancing") or {}).get("selection_policy") or {}
    dynamic = is_dynamic(route)
    members = None
    if not dynamic:
        members = [_caddy_member(u["dial"]) for u in static_members(route) or [] if "dial" in u]
    return _PoolFacts(
        id=str(route["@id"]),
        hosts=tuple(match.get("host") or ()),
        path=(match.get("path") or [None])[0],
        policy=selection.get("policy", "random"),
        dynamic=dynamic,
        caddy_active="active" in checks,
        labelsync_active=False,
        membership=Membership.RESOLVER if dynamic else Membership.JSON,
        passive=None
        if passive is None
        else (
            int(passive.get("max_fails") or CADDY_PASSIVE_MAX_FAILS),
            str(passive.get("fail_duration") or "0s"),
        ),
        members=members,
    )


def _caddy_member(address: str) -> MemberView:
    """A member only Caddy knows of (static mode, labelsync not running)."""
    return MemberView(
        address=address,
        container=None,
        container_id=None,
        origin=None,  # neither a container nor the static file: only Caddy's route
        weight=1,
        track=Track.STABLE,
        in_pool=True,
        check=None,
    )


def _state_facts(pool: PoolView, dynamic: bool) -> _PoolFacts:
    active = pool.active_check is not None
    return _PoolFacts(
        id=pool.id,
        hosts=pool.hosts,
        path=pool.path,
        policy=pool.policy,
        dynamic=dynamic,
        caddy_active=active and not dynamic,
        labelsync_active=active and dynamic,
        passive=pool.passive,
        members=pool.members,
        membership=pool.membership if dynamic else Membership.JSON,
        traffic=pool.traffic,
    )


def _merge(caddy: _PoolFacts | None, state: _PoolFacts | None) -> _PoolFacts:
    if caddy is None:
        assert state is not None
        return state
    if state is None:
        return caddy
    # Caddy says how the route behaves; the daemon says who the members are.
    return _PoolFacts(
        id=caddy.id,
        hosts=caddy.hosts or state.hosts,
        path=caddy.path,
        policy=state.policy or caddy.policy,
        # A canary split or weights in dynamic mode: Caddy holds round_robin over SRV
        # targets repeated by weight; both are true, so both are said.
        caddy_policy=caddy.policy if state.policy and caddy.policy != state.policy else None,
        dynamic=caddy.dynamic,
        caddy_active=caddy.caddy_active,
        # labelsync checks every pool whose checks Caddy does not run: all of them in
        # dynamic mode, the quiet ones outside the budget included.
        labelsync_active=state.labelsync_active and not caddy.caddy_active,
        passive=caddy.passive,
        members=state.members,
        membership=caddy.membership,
        traffic=state.traffic,
    )


def _upstream_index(upstreams: Sequence[JSON]) -> dict[tuple[bool, str], JSON]:
    """Caddy's upstreams by (dynamic, key): SRV targets end with a dot. A dynamic one is
    keyed by its name (`10-0-0-5.3f2a9b1c0d4e.ip4...:8080`), which names one container:
    Caddy lists the names of containers gone for up to an hour, on the same IPs. Names
    without a container (from before they had one, or host names) by member address."""
    index: dict[tuple[bool, str], JSON] = {}
    for entry in upstreams:
        address = str(entry.get("address") or "")
        host, _, port = address.rpartition(":")
        if host.endswith(".") and port.isdigit():
            key = address if has_instance(host) else member_address_of(host, int(port))
            index[(True, key.lower())] = entry
        else:
            index[(False, address.lower())] = entry
    return index


def _dynamic_key(fact: MemberView) -> str:
    """The key of a member's entry in `_upstream_index`: its SRV target and port."""
    try:
        target, port = member_target(fact.address, fact.container_id or "")
    except ValueError:
        return fact.address
    return f"{target}:{port}" if has_instance(target) else fact.address


def _judge_member(
    fact: MemberView,
    pool: _PoolFacts,
    counts: JSON | None,
    caddy_health: Mapping[str, bool] | None,
) -> tuple[HealthStatus, str | None]:
    signals = _Signals()
    if fact.container_state == "paused":
        signals.add(False, "container paused")
    docker = fact.docker_health
    if docker == "unhealthy":
        signals.add(False, "Docker health check: unhealthy")
    elif docker == "starting":
        signals.add(None, "Docker health check: starting")
    elif docker == "healthy":
        signals.add(True, "Docker health check: healthy")
    if pool.labelsync_active:
        verdict = fact.check.healthy if fact.check is not None else None
        reason = (fact.check.reason if fact.check is not None else "") or "not checked yet"
        if verdict is True:
            signals.add(True, "active check passing")
        elif verdict is False:
            signals.add(False, f"active check failing: {reason}")
        else:
            signals.add(None, f"active check: {reason}")
    if pool.caddy_active:
        address = str(counts["address"]) if counts else fact.address
        known = None if caddy_health is None else caddy_health.get(address)
        if known is None:
            signals.add(None, "Caddy's active check: not reported")
        else:
            signals.add(known, f"Caddy's active check {'passing' if known else 'failing'}")
    if pool.passive is not None and counts is not None:
        max_fails, window = pool.passive
        fails = int(counts.get("fails") or 0)
        if fails >= max_fails:
            signals.add(False, f"{fails} failed request(s) within {window} (max_fails {max_fails})")
        else:
            signals.add(True, f"passive: {fails}/{max_fails} failures")
    if not fact.in_pool and not signals.found:
        signals.add(False, "not serving")
    return signals.judge()


def _member_status(
    fact: MemberView,
    pool: _PoolFacts,
    index: Mapping[tuple[bool, str], JSON],
    caddy_health: Mapping[str, bool] | None,
) -> MemberStatus:
    address = fact.address
    dynamic = bool(pool.dynamic)
    counts = index.get((dynamic, (_dynamic_key(fact) if dynamic else address).lower()))
    if counts is None and dynamic:  # a name from before names carried the container
        counts = index.get((True, address.lower()))
    health, reason = _judge_member(fact, pool, counts, caddy_health)
    return MemberStatus(
        container=fact.container if fact.origin is Origin.CONTAINER else None,
        origin=fact.origin,
        address=address,
        health=health,
        reason=reason,
        active_requests=None if counts is None else int(counts.get("num_requests") or 0),
        failures=None if counts is None else int(counts.get("fails") or 0),
        caddy_upstream=None if counts is None else str(counts.get("address")),
        engine=fact.engine,
    )


def build_report(
    *,
    caddy_admin: str,
    caddy_server: str,
    routes: Sequence[JSON] | None,
    upstreams: Sequence[JSON],
    caddy_health: Mapping[str, bool] | None,
    snapshot: Snapshot | None,
    notes: Sequence[str] = (),
) -> StatusReport:
    """Merge Caddy's view and the daemon's snapshot into one report (pure).

    `routes` are the routes of labelsync's server in Caddy (None: not read, use the
    state's pools alone); `caddy_health` maps Caddy's upstream addresses to its active
    check verdicts (None when not read).
    """
    pools = _pool_statuses(routes, upstreams, caddy_health, snapshot)
    others = snapshot.other_problems if snapshot is not None else ()
    stale = snapshot.stale if snapshot is not None else ()
    return StatusReport(
        caddy_admin,
        caddy_server,
        _daemon(snapshot),
        pools,
        tuple(notes),
        containers=_judged_containers(pools, snapshot),
        other_problems=tuple(problem_json(p) for p in others),
        warnings=tuple(str(p) for p in stale),
        traffic=snapshot.traffic if snapshot is not None else None,
        engines=snapshot.engines if snapshot is not None else (),
        engine_members=snapshot.engine_members() if snapshot is not None else {},
    )


def _pool_statuses(
    routes: Sequence[JSON] | None,
    upstreams: Sequence[JSON],
    caddy_health: Mapping[str, bool] | None,
    snapshot: Snapshot | None,
) -> tuple[PoolStatus, ...]:
    """Every pool, judged: Caddy's in the order of its routes, then those only the
    daemon's snapshot has."""
    from_caddy, from_state = _facts(routes, snapshot)
    order = list(from_caddy) + [pid for pid in from_state if pid not in from_caddy]
    index = _upstream_index(upstreams)
    return tuple(
        _pool_status(
            _merge(from_caddy.get(pid), from_state.get(pid)),
            index,
            caddy_health,
            missing_in_caddy=routes is not None and pid not in from_caddy,
        )
        for pid in order
    )


def _pool_status(
    facts: _PoolFacts,
    index: Mapping[tuple[bool, str], JSON],
    caddy_health: Mapping[str, bool] | None,
    *,
    missing_in_caddy: bool,
) -> PoolStatus:
    """One pool with its members judged; `missing_in_caddy`: Caddy's routes were read and
    none is this pool's."""
    note = None
    if missing_in_caddy:
        note = "not in Caddy's config (yet)"
    if facts.members is None:
        note = "members unknown: labelsync is not running, and its resolver serves them"
    members = tuple(
        _member_status(fact, facts, index, caddy_health) for fact in facts.members or ()
    )
    return PoolStatus(
        id=facts.id,
        hosts=facts.hosts,
        path=facts.path,
        policy=facts.policy,
        upstreams=None if facts.dynamic is None else ("dynamic" if facts.dynamic else "static"),
        members=members,
        note=note,
        caddy_policy=facts.caddy_policy,
        membership=facts.membership,
        traffic=facts.traffic,
    )


def _daemon(snapshot: Snapshot | None) -> JSON | None:
    """What the report says of the daemon itself; None when it is not running."""
    if snapshot is None:
        return None
    return {
        "pid": snapshot.pid,
        "upstreams": snapshot.upstreams,
        "docker_up": snapshot.docker_up,
        "caddy_up": bool(snapshot.endpoints) and snapshot.caddy_up,
        "last_apply_ok": snapshot.last_apply_ok,
        "last_error": snapshot.last_error,
        "updated": snapshot.written_at,
    }


def _judged_containers(pools: Sequence[PoolStatus], snapshot: Snapshot | None) -> tuple[JSON, ...]:
    """Why each container is (not) routed (`core.explain`), its members' health as
    judged in `pools`."""
    health = {
        (pool.id, m.address.lower()): (m.health, m.reason) for pool in pools for m in pool.members
    }

    def health_of(pool: str, address: str) -> tuple[HealthStatus, str | None]:
        return health.get((pool, address.lower()), (HealthStatus.UNKNOWN, None))

    verdicts = snapshot.containers if snapshot is not None else ()
    traffic = {pool.id: pool.traffic for pool in pools if pool.traffic is not None}
    return tuple(
        _with_traffic(verdict_json(judge_verdict(v, health_of)), traffic) for v in verdicts
    )


def _with_traffic(verdict: JSON, traffic: Mapping[str, PoolTraffic]) -> JSON:
    """A verdict's JSON with each route's pool traffic (without the sparkline), for
    `explain`; null where the pool is not counted."""
    for route in verdict["routes"]:
        counted = traffic.get(route["pool"] or "")
        route["traffic"] = None if counted is None else traffic_json(counted, series=False)
    return verdict


# -- output ----------------------------------------------------------------------------------


def report_json(report: StatusReport) -> JSON:
    """The stable JSON form of `status --json` (documented in docs/operations.md). With
    several Docker engines, `engines` and each member's `engine` too (with one, neither)."""
    several = bool(report.engines)
    body: JSON = {
        "version": REPORT_VERSION,
        "caddy": {"admin": report.caddy_admin, "server": report.caddy_server},
        "daemon": report.daemon,
        "pools": [
            {
                "id": pool.id,
                "hosts": list(pool.hosts),
                "path": pool.path,
                "policy": pool.policy,
                "caddy_policy": pool.caddy_policy,
                "upstreams": pool.upstreams,
                "membership": pool.membership,
                "note": pool.note,
                "members": [_member_json(m, several) for m in pool.members],
                "traffic": None if pool.traffic is None else traffic_json(pool.traffic),
            }
            for pool in report.pools
        ],
        "notes": list(report.notes),
        "containers": list(report.containers),
        "other_problems": list(report.other_problems),
        "warnings": [*report.warnings, *report.engine_warnings],
        "traffic": None if report.traffic is None else overview_json(report.traffic),
    }
    if several:
        body["engines"] = [_engine_json(e, report.engine_members) for e in report.engines]
    return body


def _member_json(member: MemberStatus, several: bool) -> JSON:
    body: JSON = {
        "container": member.container,
        "origin": member.origin,
        "address": member.address,
        "health": member.health,
        "reason": member.reason,
        "active_requests": member.active_requests,
        "failures": member.failures,
        "total_requests": member.total_requests,
        "caddy_upstream": member.caddy_upstream,
    }
    if several:
        body["engine"] = member.engine
    return body


def _engine_json(engine: EngineState, members: Mapping[str, int]) -> JSON:
    return {
        "name": engine.name,
        "endpoint": engine.endpoint,
        "up": engine.up,
        "reason": engine.reason,
        "since": utc_time(engine.since),
        "containers": engine.containers,
        "members": members.get(engine.name, 0),
    }


COLOURS = {
    HealthStatus.HEALTHY: "\x1b[32m",
    HealthStatus.UNHEALTHY: "\x1b[31m",
    HealthStatus.UNKNOWN: "\x1b[33m",
}
RESET = "\x1b[0m"
HEADER = ("MEMBER", "ADDRESS", "HEALTH", "ACTIVE", "FAILS", "TOTAL", "WHY")


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _daemon_line(report: StatusReport) -> str:
    where = f"Caddy {report.caddy_admin}, server {report.caddy_server!r}"
    daemon = report.daemon
    if daemon is None:
        return f"{where}; labelsync is not running"
    parts = [
        f"Docker {'up' if daemon['docker_up'] else 'DOWN'}",
        f"Caddy {'up' if daemon['caddy_up'] else 'DOWN'}",
        f"last apply {'ok' if daemon['last_apply_ok'] else 'FAILED'}",
    ]
    line = f"{where}; labelsync pid {daemon['pid']} ({daemon['upstreams']}): {', '.join(parts)}"
    if daemon.get("last_error"):
        line += f"\n  last error: {daemon['last_error']}"
    for warning in report.warnings:
        line += f"\n  STALE: {warning}"
    for engine in report.engines:
        line += f"\n  {_engine_line(engine, report.engine_members.get(engine.name, 0))}"
    return line


def _engine_line(engine: EngineState, members: int) -> str:
    """One Docker engine, when labelsync reads several: up, or OUT since when and why."""
    counts = f"{engine.containers} container(s), {members} member(s)"
    if engine.up:
        return f"engine {engine.name} ({engine.endpoint}): up, {counts}"
    since = utc_time(engine.since)
    out = "OUT" + (f" since {since}" if since else "")
    why = engine.reason or "it does not answer"
    return f"engine {engine.name} ({engine.endpoint}): {out}: {why}; {counts}, as last listed"


def render_table(report: StatusReport, *, colour: bool = False) -> str:
    """The human form: one block per pool, columns aligned across the whole output."""
    rows: list[list[tuple[str, ...]]] = []
    for pool in report.pools:
        rows.append(
            [
                (
                    m.container or ("(static)" if m.origin is Origin.STATIC else "-"),
                    m.address,
                    m.health,
                    _cell(m.active_requests),
                    _cell(m.failures),
                    _cell(m.total_requests),
                    m.reason or "",
                )
                for m in pool.members
            ]
        )
    widths = [len(h) for h in HEADER]
    for block in rows:
        for row in block:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    numeric = {3, 4, 5}

    def line(row: tuple[str, ...], health: HealthStatus | None = None) -> str:
        cells = []
        for i, cell in enumerate(row):
            text = cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            if colour and i == 2 and health in COLOURS:
                text = f"{COLOURS[health]}{text}{RESET}"
            cells.append(text)
        return "  " + "  ".join(cells).rstrip()

    out = [_daemon_line(report), *_counting_lines(report.traffic)]
    if not report.pools:
        out.append("no pools")
    for pool, block in zip(report.pools, rows, strict=True):
        out.append("")
        out.extend(_pool_head(pool, report))
        if not block:
            if pool.note is None:
                out.append("  (no members)")
            continue
        out.append(line(HEADER))
        out.extend(line(row, m.health) for row, m in zip(block, pool.members, strict=True))
    out.extend(_not_routed_lines(report))
    out.extend(_problem_lines(report))
    notes = [*report.notes, *(report.traffic.notes if report.traffic is not None else ())]
    out.extend(f"note: {note}" for note in notes)
    return "\n".join(out) + "\n"


def _pool_head(pool: PoolStatus, report: StatusReport) -> list[str]:
    """A pool's lines above its members: target, policy, mode and id; its note; its
    traffic."""
    target = ", ".join(pool.hosts) + (pool.path or "")
    mode = f", {pool.upstreams}" if pool.upstreams else ""
    if pool.upstreams == "static" and (report.daemon or {}).get("upstreams") == "dynamic":
        mode += " (outside the dynamic budget: members in Caddy's JSON)"
    policy = pool.policy or "-"
    if pool.caddy_policy:
        policy += f" (Caddy: {pool.caddy_policy})"
    lines = [f"{target}  policy {policy}{mode}  [{pool.id}]"]
    if pool.note:
        lines.append(f"  ({pool.note})")
    if pool.traffic is not None:
        lines.append(f"  traffic: {describe(pool.traffic)}")
        if pool.traffic.note:
            lines.append(f"  ({pool.traffic.note})")
    return lines


def _counting_lines(traffic: TrafficOverview | None) -> list[str]:
    """Under the daemon line: since when requests are counted, when they are."""
    if traffic is None or traffic.since is None or traffic.state is not MetricsState.ON:
        return []
    return [
        f"  requests counted since {traffic.since} from Caddy's per-host counters (read "
        f"every {traffic.interval_seconds:g} s; latency quantiles are bucket estimates)"
    ]


def _not_routed_lines(report: StatusReport) -> list[str]:
    """Containers with labels that do not serve (or only partly), one line each with the
    first reason: `labelsync explain NAME` gives all of them and the fixes."""
    lines = []
    for container in report.containers:
        if container.get("status") == VerdictStatus.ROUTED:
            continue
        whys = [r["why"] for r in container.get("reasons") or ()]
        for route in container.get("routes") or ():
            if route.get("status") != VerdictStatus.ROUTED:
                whys += [r["why"] for r in route.get("reasons") or ()]
        first = whys[0] if whys else "see labelsync explain"
        more = f" (+{len(whys) - 1} more)" if len(whys) > 1 else ""
        lines.append(f"  {container['name']}  {container['status']}: {first}{more}")
    if not lines:
        return []
    return ["", "not routed (labelsync explain NAME says why and what to change):", *lines]


def _problem_lines(report: StatusReport) -> list[str]:
    """Every label problem (pool conflicts and the static file's included), as `--json`
    has them: each container's, then those of no listed container."""
    problems = [p for c in report.containers for p in c.get("problems") or ()]
    problems += report.other_problems
    if not problems:
        return []
    errors = sum(1 for p in problems if p["severity"] == "error")
    head = f"problems ({errors} error(s), {len(problems) - errors} warning(s)):"
    return ["", head, *(f"  {p['severity']}: {p['text']}" for p in problems)]


def _facts(
    routes: Sequence[JSON] | None, snapshot: Snapshot | None
) -> tuple[dict[str, _PoolFacts], dict[str, _PoolFacts]]:
    """Each pool as Caddy's owned routes describe it, and as the daemon's snapshot does."""
    dynamic = snapshot is not None and snapshot.dynamic
    from_state = {p.id: _state_facts(p, dynamic) for p in (snapshot.pools if snapshot else ())}
    owned = [r for r in routes or () if is_owned(r.get("@id"))]
    return {str(r["@id"]): _route_facts(r) for r in owned}, from_state


def caddy_runs_active_checks(routes: Sequence[JSON] | None, snapshot: Snapshot | None) -> bool:
    """True when Caddy runs active checks for one of labelsync's pools (static mode), by
    Caddy's routes where they were read, else by the daemon's snapshot."""
    from_caddy, from_state = _facts(routes, snapshot)
    return any(f.caddy_active for f in (from_caddy if routes is not None else from_state).values())
