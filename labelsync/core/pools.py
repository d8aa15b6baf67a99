"""Routes of all containers -> pools: aggregation, conflicts, member order, split weights.

Every route with the same (hosts, path) is one pool. Member keys belong to each route;
pool keys come from the oldest member, and every key the members disagree on is
reported once per pool. Everything here is deterministic: the same routes in any order
give equal pools and problems.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

from labelsync.core import defaults
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
    Track,
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
    canary_total = sum(r.weight for r in routes if r.track == Track.CANARY)
    stable_total = sum(r.weight for r in routes if r.track != Track.CANARY)
    if split <= 0 or canary_total == 0 or stable_total == 0:
        return None
    weights = [
        split * r.weight * stable_total
        if r.track == Track.CANARY
        else (100 - split) * r.weight * canary_total
        for r in routes
    ]
    divisor = math.gcd(*weights)
    return [w // divisor for w in weights]


def build_pools(
    routes: Iterable[Route],
    *,
    dynamic: bool,
    prefix: str = defaults.LABEL_PREFIX,
) -> tuple[tuple[Pool, ...], tuple[Problem, ...]]:
    """Group routes into pools, sorted as their Caddy routes must appear."""
    groups: dict[PoolKey, list[Route]] = {}
    for route in routes:
        groups.setdefault((route.hosts, route.path), []).append(route)
    built: dict[PoolKey, tuple[Pool, list[Problem]]] = {}
    for key, members in groups.items():
        pool_problems: list[Problem] = []
        built[key] = (
            _build_pool(key[0], key[1], members, dynamic, prefix, pool_problems),
            pool_problems,
        )
    order = sorted(built, key=_key_order)
    pools = tuple(built[key][0] for key in order)
    problems = [problem for key in order for problem in built[key][1]]
    return pools, tuple(sorted(problems, key=_problem_order))


Parsed = tuple[list[Route], list[Problem]]
_Context = tuple[str, str | None, bool]  # prefix, default network, dynamic


@dataclasses.dataclass(slots=True)
class _Entry:
    """What one container gave the last build."""

    container: ContainerInfo  # equal to the listed one (the newest object seen)
    withdrawn: bool
    running: bool
    problems: list[Problem]  # its label problems (reported while it runs)
    keys: tuple[PoolKey, ...]  # the pools its routes are in


class ParseMemo:
    """The last build, kept so that the next one redoes only what a change touched.

    A loop that rebuilds every few milliseconds from a listing of thousands of
    containers re-parses only the containers that changed (a container equal to, or the
    very object of, the last one seen under its id gives the same routes), rebuilds only
    the pools those containers are or were in, and places new pools into the previous
    order; when nothing changed it returns the previous result itself. Pools a build did
    not touch are the very objects of the previous build (`RenderMemo` and the
    membership channel then compare them by identity). A hit returns exactly what
    building would (the property tests compare with builds from scratch).
    """

    def __init__(self) -> None:
        # container id -> parse key -> (routes, problems); dropped when the id leaves
        self._parsed: dict[str, dict[tuple[object, ...], Parsed]] = {}
        self._context: _Context | None = None
        self._entries: dict[str, _Entry] = {}
        self._withdrawn: frozenset[str] = frozenset()
        # pool key -> container id -> that container's routes in the pool
        self._members: dict[PoolKey, dict[str, list[Route]]] = {}
        self._built: dict[PoolKey, tuple[Pool, list[Problem]]] = {}
        self._order: list[PoolKey] = []
        self._pools: list[Pool] = []  # the built pools, in `_order`
        self._pool_problems: dict[PoolKey, list[Problem]] = {}  # pools with problems
        self._problems: dict[str, list[Problem]] = {}  # running containers with problems
        self._result: DesiredState | None = None

    def parse(
        self,
        container: ContainerInfo,
        *,
        prefix: str,
        default_network: str | None,
        shape_only: bool,
    ) -> Parsed:
        key = (
            container.name,
            container.created,
            tuple(container.labels.items()),
            tuple(container.networks.items()),
            container.exposed_ports,
            container.host_network,
            container.engine,
            container.published,
            container.reach,
            container.host_address,
            prefix,
            default_network,
            shape_only,
        )
        known = self._parsed.get(container.id)
        found = known.get(key) if known is not None else None
        if found is None:
            found = parse_container(
                container, prefix=prefix, default_network=default_network, shape_only=shape_only
            )
            if known is None or len(known) >= 4:  # a record that keeps changing its labels
                known = self._parsed[container.id] = {}
            known[key] = found
        return found

    def build(
        self,
        listing: list[ContainerInfo] | tuple[ContainerInfo, ...],
        context: _Context,
        withdrawn: Collection[str],
    ) -> DesiredState | None:
        """`build_desired` from the last build and what changed since; None when the
        listing holds one id twice (then the caller builds afresh)."""
        by_id = {container.id: container for container in listing}
        if len(by_id) != len(listing):
            self._forget_build()
            for container_id in self._parsed.keys() - by_id.keys():
                del self._parsed[container_id]
            return None
        if context != self._context:
            self._forget_build()
            self._context = context
        held = frozenset(withdrawn)
        changed = self._changed(by_id, held)
        removed = self._entries.keys() - by_id.keys()
        if not changed and not removed and self._result is not None:
            return self._result
        touched: set[PoolKey] = set()
        for container_id in removed:
            touched.update(self._withdraw(container_id))
            self._parsed.pop(container_id, None)
        prefix, default_network, dynamic = context
        for container in changed:
            touched.update(self._take_in(container, held, prefix, default_network))
        self._rebuild(touched, dynamic, prefix)
        pool_problems = [p for problems in self._pool_problems.values() for p in problems]
        container_problems = [p for problems in self._problems.values() for p in problems]
        self._result = DesiredState(
            pools=tuple(self._pools),
            problems=tuple(sorted({*container_problems, *pool_problems}, key=_problem_order)),
        )
        return self._result

    def _changed(
        self, by_id: dict[str, ContainerInfo], held: frozenset[str]
    ) -> list[ContainerInfo]:
        """The listed containers that differ from what the last build saw of them (new,
        another record, or withdrawn or not unlike then). An equal record replaces the
        one seen, so that it is compared by identity next time."""
        entries = self._entries
        candidates = [
            c for cid, c in by_id.items() if (e := entries.get(cid)) is None or e.container is not c
        ]
        if held != self._withdrawn:
            candidates.extend(by_id[cid] for cid in held ^ self._withdrawn if cid in by_id)
            self._withdrawn = held
        changed: list[ContainerInfo] = []
        for container in candidates:
            entry = entries.get(container.id)
            if (
                entry is not None
                and entry.withdrawn == (container.id in held)
                and (entry.container is container or entry.container == container)
            ):
                entry.container = container  # the same: compared by identity next time
                continue
            changed.append(container)
        return changed

    def _take_in(
        self,
        container: ContainerInfo,
        held: frozenset[str],
        prefix: str,
        default_network: str | None,
    ) -> set[PoolKey]:
        """Put a changed container's routes into their pools in place of its old ones;
        the keys of the pools that were or are now its."""
        touched = set(self._withdraw(container.id))
        flags = _RouteFlags.of(container, held)
        running = flags.running
        found, problems = self.parse(
            container, prefix=prefix, default_network=default_network, shape_only=not running
        )
        grouped: dict[PoolKey, list[Route]] = {}
        for route in found:
            grouped.setdefault((route.hosts, route.path), []).append(flags.on(route))
        for key, routes in grouped.items():
            self._members.setdefault(key, {})[container.id] = routes
            touched.add(key)
        self._entries[container.id] = _Entry(
            container, container.id in held, running, problems, tuple(grouped)
        )
        if running and problems:
            self._problems[container.id] = problems
        return touched

    def _withdraw(self, container_id: str) -> tuple[PoolKey, ...]:
        """Take a container's routes out of its pools; the keys of those pools."""
        entry = self._entries.pop(container_id, None)
        if entry is None:
            return ()
        self._problems.pop(container_id, None)
        for key in entry.keys:
            members = self._members[key]
            del members[container_id]
            if not members:
                del self._members[key]
        return entry.keys

    def _rebuild(self, touched: set[PoolKey], dynamic: bool, prefix: str) -> None:
        """Build the touched pools again; keep the order (and the pools in it) sorted."""
        gone = False
        order, pools = self._order, self._pools
        for key in touched:
            members = self._members.get(key)
            if members is None:
                if self._built.pop(key, None) is not None:
                    self._pool_problems.pop(key, None)
                    gone = True
                continue
            routes = [route for routes in members.values() for route in routes]
            problems: list[Problem] = []
            pool = _build_pool(key[0], key[1], routes, dynamic, prefix, problems)
            previous = self._built.get(key)
            if previous is None or previous[0] != pool:
                index = bisect.bisect_left(order, _key_order(key), key=_key_order)
                if previous is None:
                    order.insert(index, key)
                    pools.insert(index, pool)
                else:
                    pools[index] = pool
            else:
                pool = previous[0]  # the very object: later stages compare by identity
            self._built[key] = (pool, problems)
            if problems:
                self._pool_problems[key] = problems
            else:
                self._pool_problems.pop(key, None)
        if gone:
            kept = [(k, p) for k, p in zip(order, pools, strict=True) if k in self._built]
            self._order, self._pools = [k for k, _ in kept], [p for _, p in kept]

    def _forget_build(self) -> None:
        self._context = None
        self._entries = {}
        self._withdrawn = frozenset()
        self._members = {}
        self._built = {}
        self._order = []
        self._pools = []
        self._pool_problems = {}
        self._problems = {}
        self._result = None


@dataclass(frozen=True)
class _RouteFlags:
    """What a container's state makes of its routes (the `Route` fields of these names)."""

    running: bool
    serving: bool
    draining: bool
    starting: bool

    @classmethod
    def of(cls, container: ContainerInfo, withdrawn: Collection[str]) -> _RouteFlags:
        """`withdrawn`: the containers leaving (a kill or stop event came)."""
        leaving = container.id in withdrawn
        return cls(
            running=container.is_up,
            serving=container.is_serving and not leaving,
            draining=container.is_serving and leaving,
            starting=container.state == "created",
        )

    def on(self, route: Route) -> Route:
        return replace(
            route,
            running=self.running,
            serving=self.serving,
            draining=self.draining,
            starting=self.starting,
        )


def build_desired(
    containers: Iterable[ContainerInfo],
    *,
    prefix: str = defaults.LABEL_PREFIX,
    default_network: str | None = None,
    dynamic: bool = True,
    withdrawn: Collection[str] = (),
    memo: ParseMemo | None = None,
) -> DesiredState:
    """The pools the containers describe, with every problem found on the way.

    Every listed container shapes its pools, stopped ones included, so a crash or a
    health flip changes membership only; members are the serving containers whose
    id is not `withdrawn` (leaving: killed or stopping, before Docker's listing says so).
    `memo` (kept by a caller that builds again and again) redoes only what changed
    since its last build; the result is the same with or without it.
    """
    listing = containers if isinstance(containers, list | tuple) else list(containers)
    if memo is not None:
        found = memo.build(listing, (prefix, default_network, dynamic), withdrawn)
        if found is not None:
            return found
    parse = memo.parse if memo is not None else parse_container
    routes: list[Route] = []
    problems: list[Problem] = []
    for container in listing:
        flags = _RouteFlags.of(container, withdrawn)
        running = flags.running
        found_routes, found_problems = parse(
            container, prefix=prefix, default_network=default_network, shape_only=not running
        )
        routes.extend(flags.on(r) for r in found_routes)
        if running:  # a stopped container's label problems are reported when it runs
            problems.extend(found_problems)
    pools, pool_problems = build_pools(routes, dynamic=dynamic, prefix=prefix)
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
    members = tuple(_member(r, weight) for r, weight in zip(ordered, weights, strict=True))
    retries = resolve_retries(settings.lb_retries, len(members), dynamic=dynamic)
    shape = PoolShape(id=identifier, hosts=hosts, path=path, settings=settings, retries=retries)
    draining = tuple(
        _member(r) for r in sorted((r for r in unique if r.draining), key=_selection_order)
    )
    awaiting = not members and all(r.starting for r in unique)
    return Pool(shape=shape, members=members, draining=draining, awaiting_start=awaiting)


def _member(route: Route, weight: int = 1) -> Member:
    return Member(
        address=route.address,
        container_id=route.container_id,
        container_name=route.container_name,
        weight=weight,
        track=route.track,
        origin=route.origin,
    )


def _unverifiable_tls(identifier: str, oldest: Route, prefix: str) -> list[Problem]:
    """https members are dialled by a resolver name in dynamic mode: say what to set.

    Caddy sends that name (`10-0-0-5.3f2a9b1c0d4e.ip4.labelsync.internal`) as SNI and checks the
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


def _key_order(key: PoolKey) -> tuple[bool, int, str, bool, tuple[str, ...]]:
    """Paths before catch-alls, longer paths first, exact hosts before wildcards (unique:
    the key is the pool's hosts and path)."""
    hosts, path = key
    wildcard = any(h.startswith("*.") for h in hosts)
    return (path is None, -len(path or ""), path or "", wildcard, hosts)


def _problem_order(problem: Problem) -> tuple[str, str, str, str, str]:
    return (problem.container, problem.key, problem.severity, problem.message, problem.value or "")
