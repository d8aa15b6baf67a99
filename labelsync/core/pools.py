"""Routes of all containers -> pools: aggregation, conflicts, member order, split weights.

Every route with the same (hosts, path) is one pool. Member keys belong to each route;
pool keys come from the oldest member, and every key the members disagree on is
reported once per pool. Everything here is deterministic: the same routes in any order
give equal pools and problems.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Iterable, Mapping

from labelsync.core.labels import UNSET, parse_container, pool_key_values
from labelsync.core.model import (
    RETRIES_AUTO,
    ContainerInfo,
    DesiredState,
    Member,
    Pool,
    PoolKey,
    PoolSettings,
    PoolShape,
    Problem,
    Route,
    Severity,
)
from labelsync.core.names import WEIGHTED_POLICY, pool_id

DYNAMIC_AUTO_RETRIES = 2


def resolve_retries(setting: int | str, member_count: int, *, dynamic: bool) -> int | None:
    """How many times a pool retries a failed request; None = leave Caddy's default (0).

    An explicit count is used as given. `auto` with static members retries N - 1 times,
    so a request may try every member once. With dynamic membership `auto` is a constant
    (2): a retry waits `lb.try_interval`, by which time a resolver refresh has dropped a
    dead member, so a couple of retries cover a replica dying; and the pool's JSON must
    not change when it scales, or every scale-up would reload Caddy.
    """
    if setting != RETRIES_AUTO:
        count = int(setting)
    elif dynamic:
        count = DYNAMIC_AUTO_RETRIES
    else:
        count = member_count - 1
    return count if count > 0 else None


def split_weights(routes: list[Route], split: int) -> list[int] | None:
    """Effective weights so canary members together get `split` percent, or None.

    canary_i = split * w_i * W_stable and stable_j = (100 - split) * w_j * W_canary,
    divided by their gcd: 10% with 2 stable + 1 canary gives 9, 9, 2. None when there is
    nothing to split (split 0, no canary, no stable, or a side weighing 0).
    """
    canary_total = sum(r.weight for r in routes if r.track == "canary")
    stable_total = sum(r.weight for r in routes if r.track != "canary")
    if split <= 0 or canary_total == 0 or stable_total == 0:
        return None
    weights = [
        split * r.weight * stable_total
        if r.track == "canary"
        else (100 - split) * r.weight * canary_total
        for r in routes
    ]
    divisor = math.gcd(*weights)
    return [w // divisor for w in weights]


def build_pools(
    routes: Iterable[Route],
    *,
    dynamic: bool,
    prefix: str = "labelsync",
    memo: ParseMemo | None = None,
) -> tuple[tuple[Pool, ...], tuple[Problem, ...]]:
    """Group routes into pools, sorted as their Caddy routes must appear.

    With `memo`, a pool whose routes are the same as in the memo's previous build is
    taken from it, not built again, and the order is reused when the set of pools is.
    """
    groups: dict[PoolKey, list[Route]] = {}
    for route in routes:
        groups.setdefault((route.hosts, route.path), []).append(route)
    built: dict[PoolKey, tuple[Pool, list[Problem]]] = {}
    for key, members in groups.items():
        found = memo.pool(key, members, dynamic, prefix) if memo is not None else None
        if found is None:
            pool_problems: list[Problem] = []
            found = (
                _build_pool(key[0], key[1], members, dynamic, prefix, pool_problems),
                pool_problems,
            )
            if memo is not None:
                memo.keep_pool(key, members, dynamic, prefix, found)
        built[key] = found
    order = memo.pool_order(built) if memo is not None else None
    if order is None:
        order = sorted(built, key=lambda k: _caddy_order(built[k][0]))
        if memo is not None:
            memo.keep_pool_order(order)
    pools = tuple(built[key][0] for key in order)
    problems = [problem for key in order for problem in built[key][1]]
    return pools, tuple(sorted(problems, key=_problem_order))


Parsed = tuple[list[Route], list[Problem]]


_FlagKey = tuple[bool, bool, str, str | None]  # running, serving, prefix, default network


@dataclasses.dataclass(frozen=True, slots=True)
class _Flagged:
    container: ContainerInfo
    flags: _FlagKey
    parsed: list[Route]  # as parsed, before the flags
    routes: list[Route]  # with `running` and `serving` set
    problems: list[Problem]


@dataclasses.dataclass(frozen=True, slots=True)
class _Built:
    routes: list[Route]
    dynamic: bool
    prefix: str
    result: tuple[Pool, list[Problem]]


class ParseMemo:
    """What the previous build made of each container and each pool, to reuse.

    A loop that rebuilds every few milliseconds from a listing of thousands of
    containers re-parses only the containers that changed and rebuilds only the pools
    whose routes changed: a container equal to (or the very object of) the last one seen
    under its id gives the same routes, and a pool given the same routes gives the same
    pool. Every key holds all that the result depends on, so a hit returns exactly
    what building would (the property tests compare with builds from scratch); entries
    not used by a build are dropped.
    """

    def __init__(self) -> None:
        self._previous: dict[tuple[object, ...], Parsed] = {}
        self._current: dict[tuple[object, ...], Parsed] = {}
        self._flagged: dict[str, _Flagged] = {}  # by container id
        self._flagged_next: dict[str, _Flagged] = {}
        self._pools: dict[PoolKey, _Built] = {}
        self._pools_next: dict[PoolKey, _Built] = {}
        self._order: list[PoolKey] = []
        self._order_keys: frozenset[PoolKey] = frozenset()

    def parse(
        self,
        container: ContainerInfo,
        *,
        prefix: str,
        default_network: str | None,
        shape_only: bool,
    ) -> Parsed:
        key = (
            container.id,
            container.name,
            container.created,
            tuple(container.labels.items()),
            tuple(container.networks.items()),
            container.exposed_ports,
            container.host_network,
            prefix,
            default_network,
            shape_only,
        )
        found = self._previous.get(key) or self._current.get(key)
        if found is None:
            found = parse_container(
                container, prefix=prefix, default_network=default_network, shape_only=shape_only
            )
        self._current[key] = found
        return found

    def routes(
        self,
        container: ContainerInfo,
        flags: _FlagKey,
    ) -> tuple[list[Route], list[Problem]]:
        """The container's routes with `running` and `serving` set, and its problems."""
        entry = self._flagged.get(container.id)
        if entry is not None and (entry.container is container or entry.container == container):
            if entry.flags == flags:
                self._flagged_next[container.id] = entry
                return entry.routes, entry.problems
            if entry.flags[0] == flags[0] and entry.flags[2:] == flags[2:]:
                parsed: Parsed | None = (entry.parsed, entry.problems)  # only `serving` moved
            else:
                parsed = None
        else:
            parsed = None
        running, serving, prefix, default_network = flags
        if parsed is None:
            parsed = self.parse(
                container, prefix=prefix, default_network=default_network, shape_only=not running
            )
        found, problems = parsed
        routes = [dataclasses.replace(r, running=running, serving=serving) for r in found]
        self._flagged_next[container.id] = _Flagged(container, flags, found, routes, problems)
        return routes, problems

    def pool(
        self, key: PoolKey, routes: list[Route], dynamic: bool, prefix: str
    ) -> tuple[Pool, list[Problem]] | None:
        entry = self._pools.get(key)
        # List equality compares identical routes by identity first: cheap when unchanged.
        if entry is None or entry.dynamic != dynamic or entry.prefix != prefix:
            return None
        if entry.routes != routes:
            return None
        self._pools_next[key] = entry
        return entry.result

    def keep_pool(
        self,
        key: PoolKey,
        routes: list[Route],
        dynamic: bool,
        prefix: str,
        built: tuple[Pool, list[Problem]],
    ) -> None:
        self._pools_next[key] = _Built(routes, dynamic, prefix, built)

    def pool_order(self, built: Mapping[PoolKey, object]) -> list[PoolKey] | None:
        """The previous build's order when it had exactly these pools (order depends
        on hosts and path only, which the keys are)."""
        if len(built) != len(self._order) or self._order_keys != built.keys():
            return None
        return self._order

    def keep_pool_order(self, order: list[PoolKey]) -> None:
        self._order = order
        self._order_keys = frozenset(order)

    def finish_build(self) -> None:
        self._previous, self._current = self._current, {}
        self._flagged, self._flagged_next = self._flagged_next, {}
        self._pools, self._pools_next = self._pools_next, {}


def build_desired(
    containers: Iterable[ContainerInfo],
    *,
    prefix: str = "labelsync",
    default_network: str | None = None,
    dynamic: bool = True,
    withdrawn: Collection[str] = (),
    memo: ParseMemo | None = None,
) -> DesiredState:
    """The pools the containers describe, with every problem found on the way.

    Every listed container shapes its pools, stopped ones included, so a crash or a
    health flip changes membership only; members are the serving containers whose
    id is not `withdrawn` (leaving: killed or stopping, before Docker's listing says so).
    `memo` (kept by a caller that builds again and again) skips re-parsing containers
    that did not change; the result is the same with or without it.
    """
    memo = memo or ParseMemo()
    routes: list[Route] = []
    problems: list[Problem] = []
    for container in containers:
        running = container.state in ("running", "paused")
        serving = container.is_serving and container.id not in withdrawn
        found, found_problems = memo.routes(container, (running, serving, prefix, default_network))
        routes.extend(found)
        if running:  # a stopped container's label problems are reported when it runs
            problems.extend(found_problems)
    pools, pool_problems = build_pools(routes, dynamic=dynamic, prefix=prefix, memo=memo)
    memo.finish_build()
    all_problems = sorted({*problems, *pool_problems}, key=_problem_order)
    return DesiredState(pools=pools, problems=tuple(all_problems))


def _age(route: Route) -> tuple[bool, float, str, str, str, str]:
    """Precedence for pool keys: running containers first, then the oldest."""
    return (
        not route.running,
        route.created,
        route.container_name,
        route.container_id,
        route.route_name,
        route.address,
    )


def _selection_order(route: Route) -> tuple[float, float, str, str, str]:
    """`first` order: `order` if set, else creation time; ties by age and name."""
    preference = route.order if route.order is not None else route.created
    return (preference, route.created, route.container_name, route.container_id, route.address)


def _build_pool(
    hosts: tuple[str, ...],
    path: str | None,
    routes: list[Route],
    dynamic: bool,
    prefix: str,
    problems: list[Problem],
) -> Pool:
    identifier = pool_id(hosts, path)
    by_age = sorted(routes, key=_age)
    kept: dict[str, Route] = {}
    for route in by_age:
        # By id, not identity: a listing may hold one record twice (the memo then gives
        # both the same route objects), and that is reported like two equal records.
        first = kept.get(route.container_id)
        if first is None:
            kept[route.container_id] = route
        else:
            problems.append(
                Problem(
                    Severity.WARNING,
                    route.container_name,
                    "",
                    None,
                    f"routes {_route_label(first)} and {_route_label(route)} both serve pool "
                    f"{identifier}; keeping {_route_label(first)}",
                )
            )
    unique = list(kept.values())  # still oldest first
    settings = unique[0].settings
    problems.extend(_conflicts(identifier, unique, prefix))
    if dynamic and unique[0].running:
        problems.extend(_unverifiable_tls(identifier, unique[0], prefix))
    ordered = sorted((r for r in unique if r.serving), key=_selection_order)
    weights = split_weights(ordered, settings.split)
    if weights is None:
        weights = [r.weight for r in ordered]
    else:
        settings = dataclasses.replace(settings, lb_policy=WEIGHTED_POLICY)
    members = tuple(
        Member(
            address=r.address,
            container_id=r.container_id,
            container_name=r.container_name,
            weight=weight,
            track=r.track,
            origin=r.origin,
        )
        for r, weight in zip(ordered, weights, strict=True)
    )
    retries = resolve_retries(settings.lb_retries, len(members), dynamic=dynamic)
    shape = PoolShape(id=identifier, hosts=hosts, path=path, settings=settings, retries=retries)
    return Pool(shape=shape, members=members)


def _unverifiable_tls(identifier: str, oldest: Route, prefix: str) -> list[Problem]:
    """https members are dialled by a resolver name in dynamic mode: say what to set.

    Caddy sends that name (`10-0-0-5.ip4.labelsync.internal`) as SNI and checks the
    member's certificate against it, which no certificate names.
    """
    settings = oldest.settings
    if settings.scheme != "https" or settings.tls_skip_verify or settings.tls_server_name:
        return []
    return [
        Problem(
            Severity.WARNING,
            oldest.container_name,
            f"{prefix}.tls.server_name",
            None,
            f"pool {identifier} is https: with dynamic upstreams Caddy checks each member's "
            f"certificate against a name of labelsync's resolver, so requests will fail; set "
            f"{prefix}.tls.server_name to a name in the certificate, or "
            f"{prefix}.tls.skip_verify=true",
        )
    ]


def _route_label(route: Route) -> str:
    return repr(route.route_name) if route.route_name else "(default)"


def _conflicts(identifier: str, routes: list[Route], prefix: str) -> list[Problem]:
    """One WARNING per pool key the members disagree on; the oldest (first) route wins."""
    if all(r.settings == routes[0].settings for r in routes[1:]):
        return []  # the usual case, and the cheap way to see it
    flat = [pool_key_values(r.settings) for r in routes]
    keys = sorted({key for values in flat for key in values})
    problems: list[Problem] = []
    for key in keys:
        applicable = [
            (r, values) for r, values in zip(routes, flat, strict=True) if _applies(key, r.settings)
        ]
        seen: dict[str, list[str]] = {}
        for route, values in applicable:
            names = seen.setdefault(values.get(key, UNSET), [])
            if route.container_name not in names:
                names.append(route.container_name)
        if len(seen) < 2:
            continue
        winner_route, winner_values = applicable[0]
        winner = winner_values.get(key, UNSET)
        losers = sorted({n for value, names in seen.items() if value != winner for n in names})
        summary = "; ".join(f"{value!r} from {', '.join(names)}" for value, names in seen.items())
        problems.append(
            Problem(
                Severity.WARNING,
                ", ".join(losers),
                f"{prefix}.{key}",
                None,
                f"members of pool {identifier} disagree ({summary}); using {winner!r} "
                f"of the oldest member {winner_route.container_name!r}",
            )
        )
    return problems


def _applies(key: str, settings: PoolSettings) -> bool:
    """Sub-keys of a health check are compared only between members that have one."""
    if key.startswith("health.passive."):
        return settings.passive is not None
    if key.startswith("health.") and key not in ("health.path", "health.passive"):
        return settings.active is not None
    return True


def _caddy_order(pool: Pool) -> tuple[bool, int, str, bool, tuple[str, ...]]:
    """Paths before catch-alls, longer paths first, exact hosts before wildcards."""
    path = pool.shape.path
    hosts = pool.shape.hosts
    wildcard = any(h.startswith("*.") for h in hosts)
    return (path is None, -len(path or ""), path or "", wildcard, hosts)


def _problem_order(problem: Problem) -> tuple[str, str, str, str, str]:
    return (problem.container, problem.key, problem.severity, problem.message, problem.value or "")
