"""The resolver reachability check blames the resolver only for answers that came
through a route: a TLS listener's 400 to plain HTTP or a redirect says nothing about it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from loguru import logger

from labelsync.core.model import ContainerInfo, Pool
from labelsync.core.pools import build_desired
from labelsync.loop import reachability
from labelsync.loop.reachability import ReachabilityCheck, send_probe
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
    assert "ERROR" not in levels, records
    warning = next(message for level, message in records if level == "WARNING")
    assert warning.startswith("could not confirm that Caddy reaches labelsync's resolver")
    # The plain probe met TLS and was sent again over TLS to the same port.
    assert f"through https://127.0.0.1:{tls_only_listener}/ got" in warning, warning


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
