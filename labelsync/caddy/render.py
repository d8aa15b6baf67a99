"""Pools -> Caddy JSON: one route per pool, addressed by the pool's stable `@id`.

The output is plain data, built the same way every time: the same pools give
byte-identical JSON (with sorted keys), so `diff` sees no change where there is none.
Durations are always written as strings, because Caddy reads an integer duration
as nanoseconds.

Two upstream modes:

* `static`: members are written into the route (`upstreams`), and Caddy runs the
  active health checks.
* `dynamic` (default): the route holds only the pool's shape; Caddy asks
  labelsync's resolver for the members (SRV records under `pool_dns_name`), and
  labelsync probes members itself. Membership changes then change no Caddy config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

from labelsync.core import defaults
from labelsync.core.durations import normalize_duration
from labelsync.core.endpoints import caddy_unix_address, unix_socket_path
from labelsync.core.model import (
    DEFAULT_COOKIE_NAME,
    JSON,
    ActiveHealth,
    DesiredState,
    PassiveHealth,
    Pool,
    PoolSettings,
)
from labelsync.core.names import WEIGHTED_POLICY, is_weighted, pool_dns_name
from labelsync.core.route_shape import DYNAMIC_MEMBERS, STATIC_MEMBERS

# Dynamic mode, a pool that retries and sets no `lb.try_interval`: the pause before a
# retry. Caddy looks the pool up afresh for a retry, but a member killed a moment ago can
# refuse connections at once, before labelsync has seen Docker's event and dropped it
# from the resolver's answer; without a pause, every retry lands inside that window.
DYNAMIC_TRY_INTERVAL = "50ms"


@dataclass(frozen=True)
class RenderOptions:
    """How pools are written into Caddy's JSON (from the settings of the same names)."""

    upstreams: Literal["dynamic", "static"] = defaults.UPSTREAMS
    resolver: str = defaults.RESOLVER_LISTEN
    """host:port at which Caddy reaches labelsync's resolver (dynamic mode)."""
    resolver_refresh: str = defaults.RESOLVER_REFRESH
    """How often Caddy re-reads a pool's members (dynamic mode)."""
    stream_close_delay: str = defaults.STREAM_CLOSE_DELAY
    """How long upgraded connections (websockets) outlive a Caddy reload."""
    dial_timeout: str | None = None
    """Dial timeout of pools that set none (`timeout.dial`); None: Caddy's default (3s)."""
    json_pools: frozenset[str] = frozenset()
    """Dynamic mode: the pools outside the dynamic budget, whose members are written
    into the JSON (labelsync still runs their active checks); see membership/budget.py."""


def selection_policy(settings: PoolSettings) -> str:
    """The Caddy selection policy of a pool when members are written into the JSON.

    A canary split is carried by member weights, so it needs `weighted_round_robin`.
    """
    return WEIGHTED_POLICY if is_weighted(settings) else settings.lb_policy


def dynamic_policy(settings: PoolSettings) -> str:
    """The Caddy selection policy of a pool whose members come from the resolver.

    Caddy cannot hold a weight list for members it does not know, so weighted pools
    (and canary splits) become `round_robin` and the resolver repeats each SRV target
    as many times as its weight. `first` stays `first`: the resolver encodes member
    order as SRV priority, and Caddy keeps the answer in priority order.
    """
    policy = selection_policy(settings)
    if policy == WEIGHTED_POLICY:
        return "round_robin"
    return policy


def render_route(pool: Pool, options: RenderOptions) -> JSON:
    """The Caddy route of one pool: match its hosts and path, proxy to its members."""
    shape = pool.shape
    match: JSON = {"host": list(shape.hosts)}
    if shape.path:
        match["path"] = [shape.path]
    return {
        "@id": shape.id,
        "match": [match],
        "handle": [_reverse_proxy(pool, options)],
        "terminal": True,
    }


class _Rendered(NamedTuple):
    """A pool's route as last rendered, and what it was rendered from."""

    pool: Pool
    base: RenderOptions  # the options but `json_pools`
    in_json: bool  # the pool was in `json_pools`
    route: JSON


class RenderMemo:
    """The route each pool rendered to last time, to reuse while the pool is the same.

    Pools a build did not touch are the very objects of the previous build (see
    `ParseMemo`), so a sync renders only the pools a change touched. A hit returns the
    same JSON object as before: callers must not mutate rendered routes (nothing does;
    `apply_operations` copies what it changes).
    """

    def __init__(self) -> None:
        self._routes: dict[str, _Rendered] = {}
        self.base: RenderOptions | None = None  # the options of the last render_routes

    def routes(self, pools: Sequence[Pool], options: RenderOptions) -> list[JSON]:
        """`render_route` of each pool, reusing the routes of pools rendered before and
        unchanged since; forgets the pools not among `pools`."""
        base = replace(options, json_pools=frozenset())
        if self.base == base:
            base = self.base  # the same object: each pool's entry then compares by identity
        self.base = base
        routes = [self.route(pool, options, base) for pool in pools]
        if len(self._routes) > len(routes):
            self.forget_others({pool.id for pool in pools})
        return routes

    def route(self, pool: Pool, options: RenderOptions, base: RenderOptions | None = None) -> JSON:
        """`render_route(pool, options)`; `base` is `options` without `json_pools` (what
        the entry is compared with: only this pool's own channel matters)."""
        base = base or replace(options, json_pools=frozenset())
        in_json = pool.id in options.json_pools
        entry = self._routes.get(pool.id)
        if (
            entry is not None
            and entry.in_json == in_json
            and (entry.base is base or entry.base == base)
            and (entry.pool is pool or entry.pool == pool)
        ):
            return entry.route
        route = render_route(pool, options)
        self._routes[pool.id] = _Rendered(pool, base, in_json, route)
        return route

    def forget_others(self, pool_ids: set[str]) -> None:
        for pool_id in [i for i in self._routes if i not in pool_ids]:
            del self._routes[pool_id]


def render_routes(
    desired: DesiredState, options: RenderOptions, *, memo: RenderMemo | None = None
) -> list[JSON]:
    """labelsync's routes, in the order they must appear in the server.

    With `memo`, pools rendered before and unchanged since are not rendered again.
    """
    if memo is None:
        return [render_route(pool, options) for pool in desired.pools]
    return memo.routes(desired.pools, options)


def render_server(listen: Sequence[str], auto_https: str, routes: list[JSON]) -> JSON:
    """The server object labelsync creates when its server does not exist yet.

    `auto_https` is the setting: `on` (Caddy's default), `off`, or `disable_redirects`.
    """
    server: JSON = {"listen": list(listen), "routes": routes}
    if auto_https == "off":
        server["automatic_https"] = {"disable": True}
    elif auto_https == "disable_redirects":
        server["automatic_https"] = {"disable_redirects": True}
    elif auto_https != "on":
        raise ValueError(f"auto_https must be on, off or disable_redirects, not {auto_https!r}")
    return server


def render_config(
    desired: DesiredState,
    options: RenderOptions,
    *,
    server_name: str = defaults.CADDY_SERVER,
    listen: Sequence[str] = defaults.LISTEN,
    auto_https: str = defaults.AUTO_HTTPS,
) -> JSON:
    """A whole Caddy config holding only labelsync's server (`labelsync render`)."""
    server = render_server(listen, auto_https, render_routes(desired, options))
    return {"apps": {"http": {"servers": {server_name: server}}}}


def _reverse_proxy(pool: Pool, options: RenderOptions) -> JSON:
    settings = pool.shape.settings
    checks_by_labelsync = options.upstreams == "dynamic"
    # Outside the dynamic budget a pool of the dynamic mode carries its members in the
    # JSON, as in static mode, but labelsync keeps running its active checks.
    dynamic = checks_by_labelsync and pool.id not in options.json_pools
    handler: JSON = {"handler": "reverse_proxy"}
    if dynamic:
        handler[DYNAMIC_MEMBERS] = {
            "source": "srv",
            "name": pool_dns_name(pool.id),
            "refresh": normalize_duration(options.resolver_refresh),
            "resolver": _resolver(options),
        }
        # The members as of this write, dialled by IP: Caddy falls back to them when
        # the resolver does not answer (labelsync stopped or restarting), so routes
        # keep serving without labelsync. `diff` never writes for this list alone.
        # No `grace_period`: with one, Caddy answers a failed lookup with the member
        # *names* of its last answer, which only labelsync's resolver can resolve.
        handler[STATIC_MEMBERS] = [{"dial": member.address} for member in pool.members]
    elif pool.members:
        handler[STATIC_MEMBERS] = [{"dial": member.address} for member in pool.members]
    handler["load_balancing"] = _load_balancing(pool, dynamic=dynamic)
    health_checks: JSON = {}
    if settings.active is not None and not checks_by_labelsync:
        # In dynamic mode labelsync probes members itself: Caddy runs no active
        # checks on dynamic upstreams, and its check state would not survive reloads.
        health_checks["active"] = _active_health(settings.active)
    if settings.passive is not None:
        health_checks["passive"] = _passive_health(settings.passive)
    if health_checks:
        handler["health_checks"] = health_checks
    handler["transport"] = _transport(settings, options, dynamic=dynamic)
    handler["stream_close_delay"] = normalize_duration(options.stream_close_delay)
    return handler


def caddy_resolver_address(address: str) -> str:
    """The resolver address as Caddy's `resolver.addresses` takes it: `udp/host:port`, or
    `unix//path` for `unix:///path` (Caddy dials a unix stream socket there)."""
    socket_path = unix_socket_path(address)
    if socket_path is not None:
        return caddy_unix_address(socket_path)
    return f"udp/{address}"


def _resolver(options: RenderOptions) -> JSON:
    return {"addresses": [caddy_resolver_address(options.resolver)]}


def _load_balancing(pool: Pool, *, dynamic: bool) -> JSON:
    settings = pool.shape.settings
    policy = dynamic_policy(settings) if dynamic else selection_policy(settings)
    selection: JSON = {"policy": policy}
    if policy == "cookie":
        selection["name"] = settings.lb_key or DEFAULT_COOKIE_NAME
    elif policy == "header" and settings.lb_key:
        selection["field"] = settings.lb_key
    elif policy == "query" and settings.lb_key:
        selection["key"] = settings.lb_key
    elif policy == "random_choose":
        selection["choose"] = settings.lb_choose
    elif policy == WEIGHTED_POLICY:
        # One weight per upstream, in upstream order: Caddy pairs them by index.
        selection["weights"] = [member.weight for member in pool.members]
    load_balancing: JSON = {"selection_policy": selection}
    if pool.shape.retries:
        load_balancing["retries"] = pool.shape.retries
    if settings.lb_try_duration:
        load_balancing["try_duration"] = normalize_duration(settings.lb_try_duration)
    if settings.lb_try_interval:
        load_balancing["try_interval"] = normalize_duration(settings.lb_try_interval)
    elif dynamic and pool.shape.retries:
        load_balancing["try_interval"] = DYNAMIC_TRY_INTERVAL
    return load_balancing


def _active_health(active: ActiveHealth) -> JSON:
    check: JSON = {
        "uri": active.path,
        "interval": normalize_duration(active.interval),
        "timeout": normalize_duration(active.timeout),
        "expect_status": active.expect_status,
        "passes": active.passes,
        "fails": active.fails,
    }
    if active.port is not None:
        check["port"] = active.port
    if active.body:
        check["expect_body"] = active.body
    if active.headers:
        headers: dict[str, list[str]] = {}
        for name, value in active.headers:
            headers.setdefault(name, []).append(value)
        check["headers"] = headers
    return check


def _passive_health(passive: PassiveHealth) -> JSON:
    check: JSON = {
        "fail_duration": normalize_duration(passive.fail_duration),
        "max_fails": passive.max_fails,
    }
    if passive.unhealthy_latency is not None:
        latency = normalize_duration(passive.unhealthy_latency)
        if latency != "0s":  # 0 means off, which is Caddy's default
            check["unhealthy_latency"] = latency
    if passive.unhealthy_status:
        check["unhealthy_status"] = list(passive.unhealthy_status)
    return check


def _transport(settings: PoolSettings, options: RenderOptions, *, dynamic: bool) -> JSON:
    transport: JSON = {"protocol": "http"}
    if settings.scheme == "https":
        tls: JSON = {}
        if settings.tls_skip_verify:
            tls["insecure_skip_verify"] = True
        if settings.tls_server_name:
            tls["server_name"] = settings.tls_server_name
        transport["tls"] = tls
    elif settings.scheme == "h2c":
        transport["versions"] = ["h2c", "2"]
    if settings.timeout_dial:
        transport["dial_timeout"] = normalize_duration(settings.timeout_dial)
    elif options.dial_timeout:
        # Caddy's 3 s default is what a request waits when a member vanished from its
        # network (killed: no RST, no ARP answer) before the retry; see docs/deployments.md,
        # "A killed replica stalls no request".
        transport["dial_timeout"] = normalize_duration(options.dial_timeout)
    if settings.timeout_response_header:
        transport["response_header_timeout"] = normalize_duration(settings.timeout_response_header)
    if dynamic:
        # SRV targets are member names only the resolver knows.
        transport["resolver"] = _resolver(options)
    return transport
