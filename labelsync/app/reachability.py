"""Does Caddy reach labelsync's resolver? One check after the first sync in dynamic mode.

Caddy is told to ask `udp/<LABELSYNC_RESOLVER_ADVERTISE>` for every pool's members. When
Caddy runs somewhere that address means something else (the default `127.0.0.1:8053`
with Caddy in another container), Caddy serves each dynamic pool only from the fallback
members of labelsync's last config write: scaling, crashes and health checks never reach
it, and nothing in labelsync's own logs says why. So once the first routes are written,
labelsync watches its resolver for a question about a published pool name.

Caddy looks a pool up only while it serves a request for it (measured on 2.11.7: no
query at all in 3 s without traffic), so when no traffic brings a query, labelsync sends
one HEAD request of its own through Caddy's listener for one pool's host. The listener
is read from the server's `listen` in Caddy's config; a wildcard host (`:80`) means the
admin endpoint's host. The request reaches a backend only when the resolver works, so it
goes to a pool with a member that serves (`ready`: one that passed its check, or has
none), waiting up to `READY_WAIT` for one: a request to a replica that does not listen
yet would count as a failure in Caddy's passive checks (with `max_fails=1`, 30 s out).

Outcomes, logged once per process:

- a query arrived: INFO;
- none arrived although Caddy answered the probe request, or labelsync's own query to
  the advertised address does not reach this resolver either: one ERROR naming
  `LABELSYNC_RESOLVER_ADVERTISE` / `LABELSYNC_RESOLVER_LISTEN` and what Caddy was told;
- none arrived and the probe got no answer through a route (no connection to Caddy's
  listener, a redirect to HTTPS, or the 400 a TLS listener gives plain HTTP, which has
  no `Server` header: every answer through a route has one): the check is inconclusive.
  That is a WARNING only when the evidence leans wrong: Caddy is told a loopback
  address and labelsync could not even connect to Caddy's listener, so the two likely
  run in different network namespaces, where a loopback address names something else.
  Otherwise (a unix socket in a shared volume, as the compose example does, or a
  listener labelsync reaches) it is INFO, and the check goes on waiting for Caddy's
  first lookup, which it logs at INFO when it comes. A plain-HTTP probe that met a TLS
  listener is sent again over TLS to the same port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import httpx
from dnslib import QTYPE, DNSRecord
from loguru import logger

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.listen import tcp_listener
from labelsync.caddy.render import caddy_resolver_address
from labelsync.core.durations import parse_duration
from labelsync.core.endpoints import (
    bracketed,
    is_unix,
    split_host_port,
    unix_socket_path,
    with_url_scheme,
)
from labelsync.core.model import DesiredState, Pool
from labelsync.core.names import member_target
from labelsync.loop.reconcile import SyncState
from labelsync.membership.resolver import Resolver
from labelsync.settings import Settings

USER_AGENT = "labelsync-reachability-check"
# A TEST-NET-1 address spelled as a member target: only labelsync's resolver answers
# this name with this address, so an answer proves the packet reached it.
SELF_CHECK_ADDRESS = "192.0.2.53"
PROBE_ROUNDS = 2
READY_WAIT = 10.0  # seconds to wait for a pool with a member that serves, before probing
_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]"}


@dataclass(frozen=True)
class ProbeOutcome:
    """What one probe request through Caddy's listener got."""

    url: str
    reached_caddy: bool  # an answer through one of the server's routes
    detail: str  # "HTTP 502", "redirect to https://...", "ConnectError: ..."
    wants_tls: bool = False  # plain HTTP sent to a listener that speaks TLS
    connected: bool = True  # a connection to the listener was made


def _is_loopback(address: str) -> bool:
    """True for a `host:port` whose host is a loopback address or `localhost`."""
    if is_unix(address):
        return False
    host = split_host_port(address).host
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listener_urls(listen: list[str], admin_endpoint: str) -> list[str]:
    """Base URLs (`http://host:port`) at which labelsync may reach Caddy's listener.

    Plain HTTP listeners come first; port 443 is tried over TLS. Unix and UDP
    (HTTP/3) listeners are skipped.
    """
    fallback_host = _admin_host(admin_endpoint)
    plain: list[str] = []
    secure: list[str] = []
    for address in listen:
        listener = tcp_listener(address)
        if listener is None:
            continue
        host, port = listener
        host = fallback_host if host in _WILDCARD_HOSTS else bracketed(host)
        if port == 443:
            secure.append(f"https://{host}:{port}")
        else:
            plain.append(f"http://{host}:{port}")
    return plain + secure


def _admin_host(admin_endpoint: str) -> str:
    if is_unix(admin_endpoint):
        return "127.0.0.1"
    return bracketed(httpx.URL(with_url_scheme(admin_endpoint)).host)


async def _ready_pool(desired: DesiredState, ready: Callable[[Pool], bool], until: float) -> Pool:
    """The first pool `ready` accepts, waiting until `until` (monotonic) for one; then
    the first pool."""
    probeable = [pool for pool in desired.pools if _probeable(pool)] or list(desired.pools)
    while True:
        for pool in probeable:
            if ready(pool):
                return pool
        if time.monotonic() >= until:
            return probeable[0]
        await asyncio.sleep(0.1)


def _probeable(pool: Pool) -> bool:
    """A pool in Caddy (not waiting for its first start) with members to reach."""
    return bool(pool.members) and not pool.awaiting_start


def probe_host_and_path(pool: Pool) -> tuple[str, str]:
    """A Host header and a path that pool's route matches."""
    host = pool.shape.hosts[0]
    if host.startswith("*."):
        host = "labelsync-probe" + host[1:]
    path = (pool.shape.path or "/").replace("*", "")
    return host, path if path.startswith("/") else f"/{path}"


async def send_probe(base_url: str, host: str, path: str) -> ProbeOutcome:
    """One HEAD request through Caddy for `host`; never raises."""
    url = f"{base_url}{path}"
    extensions = {"sni_hostname": host} if url.startswith("https:") else {}
    try:
        async with httpx.AsyncClient(
            verify=False, trust_env=False, follow_redirects=False, timeout=5.0
        ) as client:
            response = await client.head(
                url,
                headers={"Host": host, "User-Agent": USER_AGENT},
                extensions=extensions,
            )
    except httpx.HTTPError as exc:
        connected = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
        return ProbeOutcome(url, False, f"{type(exc).__name__}: {exc}", connected=connected)
    if response.is_redirect:
        location = response.headers.get("Location", "")
        return ProbeOutcome(url, False, f"HTTP {response.status_code} redirect to {location}")
    if "server" not in response.headers:
        # Caddy sets `Server` before any handler runs (a backend's answer carries its own
        # or Caddy's), so an answer without one came from the listener itself: Go's
        # "Client sent an HTTP request to an HTTPS server" (400), not a route.
        tls = response.status_code == 400 and url.startswith("http:")
        why = "a TLS listener answering plain HTTP" if tls else "not through a route"
        return ProbeOutcome(url, False, f"HTTP {response.status_code} ({why})", wants_tls=tls)
    return ProbeOutcome(url, True, f"HTTP {response.status_code}")


def resolver_answers_at(address: str, timeout: float = 1.0) -> bool:
    """True when a query sent to `address` (host:port, as Caddy is told) reaches this
    labelsync's resolver, seen from labelsync itself. Blocking."""
    name, _ = member_target(f"{SELF_CHECK_ADDRESS}:53")
    query = DNSRecord.question(name, "A")
    socket_path = unix_socket_path(address)
    if socket_path is not None:
        return _unix_resolver_answers(socket_path, query, timeout)
    host, port = split_host_port(address)
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
    except (OSError, ValueError):
        return False
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(sockaddr)
                sock.send(query.pack())
                reply = DNSRecord.parse(sock.recv(4096))
        except Exception:  # refused, timed out, or garbage: not our resolver there
            continue
        if reply.header.id == query.header.id and any(
            rr.rtype == QTYPE.A and str(rr.rdata) == SELF_CHECK_ADDRESS for rr in reply.rr
        ):
            return True
    return False


def _unix_resolver_answers(path: str, query: DNSRecord, timeout: float) -> bool:
    """`resolver_answers_at` for a unix socket: one raw message each way, as Go sends."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(query.pack())
            reply = DNSRecord.parse(sock.recv(4096))
    except Exception:  # refused, missing, timed out, or garbage: not our resolver there
        return False
    return reply.header.id == query.header.id and any(
        rr.rtype == QTYPE.A and str(rr.rdata) == SELF_CHECK_ADDRESS for rr in reply.rr
    )


class ReachabilityCheck:
    """Confirms, once, that Caddy asks the resolver for published pools."""

    def __init__(
        self,
        resolver: Resolver,
        settings: Settings,
        admin_endpoint: str,
        *,
        wait_seconds: float | None = None,
    ) -> None:
        self.resolver = resolver
        self.settings = settings
        self.admin_endpoint = admin_endpoint
        refresh_seconds = parse_duration(settings.resolver_refresh)
        # A few of Caddy's refresh intervals: it asks again only once its answer is stale.
        self.wait_seconds = wait_seconds or max(1.5, 4 * refresh_seconds)

    async def run(
        self,
        desired: DesiredState,
        listen: list[str],
        ready: Callable[[Pool], bool] = lambda pool: True,
    ) -> bool:
        """Check against `desired` (just written) and Caddy's server `listen`; log the
        outcome; True when Caddy was seen asking. The probe goes to a `ready` pool."""
        if not desired.pools:
            return True
        started = time.monotonic()
        baseline = self.resolver.pool_queries
        if await self._query_arrives(baseline, self.wait_seconds / 2):
            return self._confirmed(started)
        pool = await _ready_pool(desired, ready, started + READY_WAIT)
        if self.resolver.pool_queries > baseline:  # traffic came while we waited
            return self._confirmed(started)
        host, path = probe_host_and_path(pool)
        outcomes: list[ProbeOutcome] = []
        for _ in range(PROBE_ROUNDS):
            for base_url in listener_urls(listen, self.admin_endpoint):
                outcome = await send_probe(base_url, host, path)
                if outcome.wants_tls:  # that port answered: connected, whatever TLS says
                    secure = await send_probe("https:" + base_url.removeprefix("http:"), host, path)
                    outcome = replace(secure, connected=True)
                outcomes.append(outcome)
                if await self._query_arrives(baseline, self.wait_seconds):
                    return self._confirmed(started)
            if not any(o.reached_caddy for o in outcomes):
                break  # nothing reached Caddy's proxy: more rounds will not either
        waited = time.monotonic() - started
        self_reached = await asyncio.to_thread(resolver_answers_at, self.settings.resolver_address)
        self._report(waited, host, outcomes, self_reached)
        return False

    async def _query_arrives(self, baseline: int, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.resolver.pool_queries > baseline:
                return True
            await asyncio.sleep(0.05)
        return self.resolver.pool_queries > baseline

    def _confirmed(self, started: float) -> bool:
        took = time.monotonic() - started
        logger.info(
            f"Caddy reaches the resolver at {self.settings.resolver_address} "
            f"(first pool lookup {took:.1f}s after the routes were written)"
        )
        return True

    def _report(
        self, waited: float, host: str, outcomes: list[ProbeOutcome], self_reached: bool
    ) -> None:
        told = caddy_resolver_address(self.settings.resolver_address)
        advertise = self.settings.resolver_advertise
        advertised = (
            f"LABELSYNC_RESOLVER_ADVERTISE={advertise}"
            if advertise
            else "LABELSYNC_RESOLVER_ADVERTISE unset, so the listen address"
        )
        reached = [o for o in outcomes if o.reached_caddy]
        if reached:
            probe = f"a request for {host} through {reached[0].url} got {reached[0].detail}"
        elif outcomes:
            probe = f"a request for {host} through {outcomes[0].url} got {outcomes[0].detail}"
        else:
            probe = "no listener of Caddy's server to send a request through"
        listen = self.settings.resolver_listen
        where = (
            f"Caddy was told to ask {told} ({advertised}); the resolver listens on "
            f"{self.resolver.bound_address} (LABELSYNC_RESOLVER_LISTEN={listen})"
        )
        if not self_reached:
            why = (
                f"a query labelsync itself sent to {self.settings.resolver_address} did not "
                "reach its resolver either: that address is not this resolver"
            )
        elif reached:
            why = (
                f"labelsync itself reaches the resolver at {self.settings.resolver_address}, "
                "so Caddy runs where that address means something else (another container, "
                "host or network namespace)"
            )
        elif _is_loopback(self.settings.resolver_address) and not any(
            o.connected for o in outcomes
        ):
            logger.warning(
                f"could not confirm that Caddy reaches labelsync's resolver: no pool lookup "
                f"in {waited:.1f}s, and {probe}. {where}. Caddy is told a loopback address, "
                "but labelsync could not send a request through Caddy's listener: if they "
                "run in different containers or network namespaces, set "
                "LABELSYNC_RESOLVER_ADVERTISE to an address Caddy can reach"
            )
            return
        else:
            logger.info(
                f"Caddy's use of the resolver is not confirmed yet: no pool lookup in "
                f"{waited:.1f}s, and {probe}. {where}. labelsync logs Caddy's first lookup "
                "when it comes"
            )
            return
        logger.error(
            f"Caddy is not using labelsync's resolver: no lookup of any pool name arrived in "
            f"{waited:.1f}s after the routes were written ({probe}). {where}; {why}. Dynamic "
            "pools are served only by the members of labelsync's last config write (Caddy's "
            "fallback), blind to scaling and health, until LABELSYNC_RESOLVER_ADVERTISE names "
            "an address Caddy can reach where LABELSYNC_RESOLVER_LISTEN listens (compose: "
            "LABELSYNC_RESOLVER_LISTEN=0.0.0.0:8053, LABELSYNC_RESOLVER_ADVERTISE=labelsync:8053), "
            "or LABELSYNC_UPSTREAMS=static is used"
        )


async def check_after_first_sync(
    state: SyncState,
    caddy: CaddyAdmin,
    resolver: Resolver,
    settings: Settings,
    ready: Callable[[Pool], bool] = lambda pool: True,
) -> bool:
    """Wait for the first sync that wrote at least one pool, then run the check once
    (its probe request goes to a `ready` pool: see `ReachabilityCheck.run`); False when
    no lookup was seen."""
    while state.desired is None or not any(map(_probeable, state.desired.pools)):
        await asyncio.sleep(0.2)
    try:
        server, _ = await caddy.server(settings.caddy_server)
        listen = [str(a) for a in (server or {}).get("listen") or []]
        check = ReachabilityCheck(resolver, settings, caddy.endpoint)
        return await check.run(state.desired, listen, ready)
    except Exception:  # a diagnostic must never take the daemon down
        logger.opt(exception=True).warning("the resolver reachability check failed to run")
        return True


async def log_first_lookup(resolver: Resolver, settings: Settings) -> None:
    """After a check that saw no lookup: log Caddy's first one when a request brings it."""
    baseline = resolver.pool_queries
    while resolver.pool_queries <= baseline:
        await asyncio.sleep(1.0)
    logger.info(f"Caddy reaches the resolver at {settings.resolver_address} (its first lookup)")
