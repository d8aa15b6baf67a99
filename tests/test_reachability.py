"""The resolver reachability check blames the resolver only for answers that came
through a route: a TLS listener's 400 to plain HTTP or a redirect says nothing about it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from loguru import logger

from labelsync.app import reachability
from labelsync.app.reachability import ReachabilityCheck, send_probe
from labelsync.core.model import ContainerInfo, DesiredState, Pool
from labelsync.core.pools import build_desired
from labelsync.settings import Settings

# What Go's net/http writes, raw, when a TLS listener receives plain HTTP.
GO_TLS_LISTENER_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)


@pytest.fixture
async def tls_only_listener() -> AsyncIterator[int]:
    """A loopback port that answers any plain request like a TLS listener does."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.read(1)
            if first == b"\x16":  # a TLS ClientHello: hang up, as for a failed handshake
                return
            await reader.readuntil(b"\r\n\r\n")
            writer.write(GO_TLS_LISTENER_ANSWER)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port
    server.close()
    await server.wait_closed()


async def test_a_tls_listeners_400_did_not_reach_caddys_routes(tls_only_listener: int) -> None:
    outcome = await send_probe(f"http://127.0.0.1:{tls_only_listener}", "app.localhost", "/")
    assert not outcome.reached_caddy
    assert outcome.wants_tls
    assert "TLS listener answering plain HTTP" in outcome.detail


@dataclass
class SilentResolver:
    """A resolver nobody asks: no pool query ever arrives."""

    pool_queries: int = 0
    bound_address: str = "127.0.0.1:1"


async def test_no_error_blaming_the_resolver_for_the_listeners_answer(
    tls_only_listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # labelsync itself reaches its resolver: the ERROR would say Caddy runs elsewhere.
    monkeypatch.setattr(reachability, "resolver_answers_at", lambda address: True)
    container = ContainerInfo(
        id="c1",
        name="web-1",
        created=1.0,
        labels={"labelsync.host": "app.localhost", "labelsync.address": "127.0.0.1:9"},
    )
    desired = build_desired([container])
    check = ReachabilityCheck(
        SilentResolver(),  # type: ignore[arg-type]
        Settings(resolver_listen="127.0.0.1:1"),
        "http://127.0.0.1:2019",
        wait_seconds=0.2,
    )
    records: list[tuple[str, str]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])))
    try:
        confirmed = await check.run(desired, [f"127.0.0.1:{tls_only_listener}"])
    finally:
        logger.remove(sink)
    assert confirmed is False
    levels = [level for level, _ in records]
    assert "ERROR" not in levels and "WARNING" not in levels, records
    # labelsync connected to the listener: Caddy shares its network namespace, so the
    # loopback address is not suspect and the outcome is only "not confirmed yet".
    info = next(message for level, message in records if "not confirmed yet" in message)
    # The plain probe met TLS and was sent again over TLS to the same port.
    assert f"through https://127.0.0.1:{tls_only_listener}/ got" in info, info


def _unconfirmed_check(resolver_listen: str) -> tuple[ReachabilityCheck, DesiredState]:
    container = ContainerInfo(
        id="c1",
        name="web-1",
        created=1.0,
        labels={"labelsync.host": "app.localhost", "labelsync.address": "127.0.0.1:9"},
    )
    check = ReachabilityCheck(
        SilentResolver(),  # type: ignore[arg-type]
        Settings(resolver_listen=resolver_listen),
        "unix:///nonexistent/caddy-admin.sock",  # a wildcard listener means 127.0.0.1
        wait_seconds=0.2,
    )
    return check, build_desired([container])


async def _levels_of_run(check: ReachabilityCheck, desired: DesiredState) -> list[str]:
    records: list[str] = []
    sink = logger.add(lambda m: records.append(m.record["level"].name))
    try:
        # Nothing listens on this port: labelsync cannot connect to "Caddy" at all.
        assert await check.run(desired, [f":{_free_port()}"]) is False
    finally:
        logger.remove(sink)
    return records


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_compose_layout_is_not_a_false_alarm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caddy in its own container, admin API and resolver on unix sockets in shared
    volumes (examples/compose.yaml): labelsync cannot send a request through Caddy's
    listener, but nothing suggests the resolver address is wrong."""
    monkeypatch.setattr(reachability, "resolver_answers_at", lambda address: True)
    check, desired = _unconfirmed_check("unix:///run/labelsync-dns/dns.sock")
    levels = await _levels_of_run(check, desired)
    assert "WARNING" not in levels and "ERROR" not in levels, levels


async def test_a_loopback_resolver_caddy_cannot_be_reached_beside_warns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A loopback resolver address, and no connection to Caddy's listener: Caddy likely
    runs in another network namespace, where that address is not labelsync."""
    monkeypatch.setattr(reachability, "resolver_answers_at", lambda address: True)
    check, desired = _unconfirmed_check("127.0.0.1:8053")
    assert "WARNING" in await _levels_of_run(check, desired)


async def test_the_first_lookup_after_an_unconfirmed_check_is_logged() -> None:
    resolver = SilentResolver()
    records: list[str] = []
    sink = logger.add(lambda m: records.append(m.record["message"]))
    try:
        waiting = asyncio.create_task(
            reachability.log_first_lookup(resolver, Settings())  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.1)
        assert not waiting.done()
        resolver.pool_queries += 1
        await asyncio.wait_for(waiting, 3)
    finally:
        logger.remove(sink)
    assert any(message.startswith("Caddy reaches the resolver") for message in records)


async def test_the_probe_goes_to_a_pool_whose_member_serves(
    tls_only_listener: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica still starting (its first check not passed) would count the probe as a
    failure in Caddy's passive checks: the probe waits for, and takes, a pool that serves."""
    monkeypatch.setattr(reachability, "resolver_answers_at", lambda address: True)
    starting, serving = (
        ContainerInfo(
            id=f"c{i}",
            name=name,
            created=float(i),
            labels={"labelsync.host": f"{name}.localhost", "labelsync.address": "127.0.0.1:9"},
        )
        for i, name in enumerate(("starting", "serving"))
    )
    desired = build_desired([starting, serving])
    ready_after = asyncio.get_running_loop().time() + 0.3
    asked: list[str] = []

    def ready(pool: Pool) -> bool:
        asked.append(pool.shape.hosts[0])
        return pool.shape.hosts[0] == "serving.localhost" and (
            asyncio.get_running_loop().time() >= ready_after
        )

    check = ReachabilityCheck(
        SilentResolver(),  # type: ignore[arg-type]
        Settings(resolver_listen="127.0.0.1:1"),
        "http://127.0.0.1:2019",
        wait_seconds=0.2,
    )
    records: list[str] = []
    sink = logger.add(lambda m: records.append(m.record["message"]))
    try:
        await check.run(desired, [f"127.0.0.1:{tls_only_listener}"], ready)
    finally:
        logger.remove(sink)
    assert asked.count("serving.localhost") > 1  # it waited for the pool to serve
    assert any("a request for serving.localhost" in message for message in records), records
