"""A real Caddy whose pool members come from labelsync's resolver (`dynamic_upstreams`).

Scenario: the default upstream mode. Membership changes (scaling, crashes, health flips)
must reach Caddy through DNS alone, with no admin write (each write reloads Caddy).
Backends are plain HTTP servers on loopback addresses 127.0.0.2-4, answering their name.
"""

from __future__ import annotations

import ssl
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from labelsync.core.model import Member, Pool, PoolSettings, PoolShape
from labelsync.membership.resolver import Resolver
from labelsync.membership.srv_records import srv_answers
from tests.support.caddy import CaddyProcess
from tests.support.loopback import LoopbackBackend
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

POOL_NAME = "5eed5eed5eed5eed.pool.labelsync.internal"
HOST = "dynamic.test"


@pytest.fixture(scope="module")
def backends() -> Iterator[dict[str, LoopbackBackend]]:
    started = {name: LoopbackBackend(name, f"127.0.0.{i}") for i, name in enumerate("abc", 2)}
    try:
        yield started
    finally:
        for backend in started.values():
            backend.close()


@pytest.fixture
async def resolver() -> AsyncIterator[Resolver]:
    server = Resolver("127.0.0.1:0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def pool_of(
    backends: dict[str, LoopbackBackend],
    names: str,
    *,
    policy: str = "round_robin",
    weights: dict[str, int] | None = None,
) -> Pool:
    """A pool of the named backends ("ab" = a then b), as labelsync's core builds it."""
    settings = PoolSettings(lb_policy=policy)
    shape = PoolShape(id="labelsync-dyn", hosts=(HOST,), path=None, settings=settings, retries=None)
    members = tuple(
        Member(
            address=backends[name].address,
            container_id=name,
            container_name=name,
            weight=(weights or {}).get(name, 1),
        )
        for name in names
    )
    return Pool(shape=shape, members=members)


def publish(
    resolver: Resolver, pool: Pool, healthy: Callable[[Member], bool] | None = None
) -> None:
    resolver.update({POOL_NAME: srv_answers(pool, healthy=healthy or (lambda _: True))})


class Proxy:
    """A private Caddy with one dynamic-upstreams route for `HOST`."""

    def __init__(
        self, caddy: CaddyProcess, resolver: Resolver, policy: str, tls: dict[str, Any] | None
    ) -> None:
        self.caddy = caddy
        config = caddy.base_config()
        dns = {"addresses": [f"udp/{resolver.bound_address}"]}
        handler: dict[str, Any] = {
            "handler": "reverse_proxy",
            "dynamic_upstreams": {
                "source": "srv",
                "name": POOL_NAME,
                "refresh": "100ms",
                "resolver": dns,
                "grace_period": "1s",
            },
            "transport": {"protocol": "http", "resolver": dns},
            "load_balancing": {"selection_policy": {"policy": policy}},
        }
        if tls is not None:
            handler["transport"]["tls"] = tls
        route = {"@id": "labelsync-dyn", "match": [{"host": [HOST]}], "handle": [handler]}
        config["apps"]["http"]["servers"]["labelsync"]["routes"] = [route]
        caddy.admin("POST", "/load", config)
        self.client = httpx.AsyncClient(base_url=caddy.http_url, trust_env=False, timeout=10)

    async def answer(self) -> str:
        """Who answered one request: a backend's name, or the status code."""
        response = await self.client.get("/", headers={"Host": HOST})
        return response.text.strip() if response.status_code == 200 else str(response.status_code)

    async def answers(self, count: int) -> list[str]:
        return [await self.answer() for _ in range(count)]

    async def settles_on(self, expected: Callable[[list[str]], bool], count: int = 8) -> None:
        async def settled() -> bool:
            return expected(await self.answers(count))

        await eventually(settled, timeout=10, interval=0.1, message="Caddy to follow the resolver")

    def etag(self) -> str:
        return self.caddy.admin("GET", "/config/").headers["Etag"]


MakeProxy = Callable[..., Proxy]


@pytest.fixture
async def make_proxy(
    caddy_factory: Callable[[], CaddyProcess], resolver: Resolver
) -> AsyncIterator[MakeProxy]:
    made: list[Proxy] = []

    def make(policy: str, tls: dict[str, Any] | None = None) -> Proxy:
        proxy = Proxy(caddy_factory(), resolver, policy, tls)
        made.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in made:
            await proxy.client.aclose()


async def test_round_robin_cycles_through_every_member(
    backends: dict[str, LoopbackBackend], resolver: Resolver, make_proxy: MakeProxy
) -> None:
    publish(resolver, pool_of(backends, "abc"))
    proxy = make_proxy("round_robin")
    assert Counter(await proxy.answers(9)) == {"a": 3, "b": 3, "c": 3}


async def test_membership_changes_reach_caddy_without_a_config_write(
    backends: dict[str, LoopbackBackend], resolver: Resolver, make_proxy: MakeProxy
) -> None:
    publish(resolver, pool_of(backends, "ab"))
    proxy = make_proxy("round_robin")
    assert set(await proxy.answers(4)) == {"a", "b"}
    etag = proxy.etag()

    publish(resolver, pool_of(backends, "c"))  # a rolling update: a and b replaced by c
    await proxy.settles_on(lambda seen: set(seen) == {"c"})
    publish(resolver, pool_of(backends, "ca"))  # scaled up again
    await proxy.settles_on(lambda seen: set(seen) == {"a", "c"})

    assert proxy.etag() == etag


async def test_first_follows_priority_and_moves_on_when_a_member_is_withheld(
    backends: dict[str, LoopbackBackend], resolver: Resolver, make_proxy: MakeProxy
) -> None:
    pool = pool_of(backends, "bac", policy="first")
    publish(resolver, pool)
    proxy = make_proxy("first")
    assert set(await proxy.answers(6)) == {"b"}

    down = {backends["b"].address}
    publish(resolver, pool, healthy=lambda m: m.address not in down)  # b fails its check
    await proxy.settles_on(lambda seen: set(seen) == {"a"})
    down = set()
    publish(resolver, pool, healthy=lambda m: m.address not in down)  # b passes again
    await proxy.settles_on(lambda seen: set(seen) == {"b"})


@pytest.mark.parametrize(("weights", "requests"), [({"a": 3, "b": 1}, 40), ({"a": 9, "b": 1}, 100)])
async def test_repeated_targets_split_traffic_in_proportion(
    backends: dict[str, LoopbackBackend],
    resolver: Resolver,
    make_proxy: MakeProxy,
    weights: dict[str, int],
    requests: int,
) -> None:
    # A weighted pool (or a canary split) becomes round_robin over repeated SRV records.
    publish(resolver, pool_of(backends, "ab", policy="weighted_round_robin", weights=weights))
    proxy = make_proxy("round_robin")
    total = sum(weights.values())
    expected = {name: requests * weight // total for name, weight in weights.items()}
    assert Counter(await proxy.answers(requests)) == expected


async def test_a_pool_that_loses_every_member_stops_reaching_the_old_ones(
    backends: dict[str, LoopbackBackend], resolver: Resolver, make_proxy: MakeProxy
) -> None:
    publish(resolver, pool_of(backends, "a"))
    proxy = make_proxy("round_robin")
    assert await proxy.answer() == "a"
    publish(resolver, pool_of(backends, ""))
    await proxy.settles_on(lambda seen: set(seen) == {"502"})
    publish(resolver, pool_of(backends, "b"))
    await proxy.settles_on(lambda seen: set(seen) == {"b"})


async def test_caddy_keeps_serving_while_the_resolver_restarts(
    backends: dict[str, LoopbackBackend], resolver: Resolver, make_proxy: MakeProxy
) -> None:
    # labelsync restarting: its resolver is gone for a while, then back with news.
    publish(resolver, pool_of(backends, "ab"))
    proxy = make_proxy("round_robin")
    assert set(await proxy.answers(4)) == {"a", "b"}
    address = resolver.bound_address
    await resolver.stop()
    assert set(await proxy.answers(20)) == {"a", "b"}  # the last answer, kept by grace_period

    restarted = Resolver(address)
    await restarted.start()
    try:
        publish(restarted, pool_of(backends, "c"))
        await proxy.settles_on(lambda seen: set(seen) == {"c"})
    finally:
        await restarted.stop()


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        ({"server_name": "backend.test"}, "tls"),
        ({"insecure_skip_verify": True}, "tls"),
        ({}, "502"),  # SNI and verification would use the SRV target name
    ],
)
async def test_https_members_need_a_server_name_or_skip_verify(
    resolver: Resolver, make_proxy: MakeProxy, tmp_path: Path, tls: dict[str, Any], expected: str
) -> None:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("backend.test").configure_cert(context)
    backend = LoopbackBackend("tls", "127.0.0.4", context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        resolver.update(
            {POOL_NAME: srv_answers(pool_of({"t": backend}, "t"), healthy=lambda _: True)}
        )
        trust = (
            {}
            if "insecure_skip_verify" in tls
            else {"ca": {"provider": "file", "pem_files": [str(ca_file)]}}
        )
        proxy = make_proxy("round_robin", {**trust, **tls})
        assert await proxy.answer() == expected
    finally:
        backend.close()
