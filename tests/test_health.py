"""labelsync's own active checks, against real HTTP servers on loopback addresses."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import trustme

from labelsync.core.model import ActiveHealth, Member, Pool, PoolSettings, PoolShape
from labelsync.membership.health import ActiveChecker, status_matches
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")

FAST = {"interval": "100ms", "timeout": "1s"}


class HealthServer:
    """A loopback HTTP server whose answer a test flips; it counts what it served."""

    def __init__(self, host: str = "127.0.0.2", context: ssl.SSLContext | None = None) -> None:
        self.status = 200
        self.body = b"ok"
        self.delay = 0.0
        self.served: list[int] = []  # status of every answer, in order
        self.headers: list[dict[str, str]] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    status, body, delay = owner.status, owner.body, owner.delay
                    owner.served.append(status)
                    owner.headers.append(dict(self.headers.items()))
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.address = f"{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def flip(self, status: int, body: bytes | None = None) -> int:
        """Answer `status` from now on; returns how many answers were served before."""
        with self._lock:
            self.status = status
            if body is not None:
                self.body = body
            return len(self.served)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server() -> Iterator[HealthServer]:
    backend = HealthServer()
    try:
        yield backend
    finally:
        backend.close()


@dataclass
class Changes:
    events: list[tuple[str, str, bool, str]] = field(default_factory=list)
    served_at_event: list[int] = field(default_factory=list)
    server: HealthServer | None = None

    def __call__(self, pool_id: str, address: str, healthy: bool, reason: str) -> None:
        self.events.append((pool_id, address, healthy, reason))
        self.served_at_event.append(len(self.server.served) if self.server else 0)


@pytest.fixture
async def changes(server: HealthServer) -> AsyncIterator[tuple[ActiveChecker, Changes]]:
    recorded = Changes(server=server)
    checker = ActiveChecker(on_change=recorded)
    try:
        yield checker, recorded
    finally:
        await checker.aclose()


def make_pool(
    address: str,
    *,
    pool_id: str = "labelsync-h",
    scheme: str = "http",
    skip_verify: bool = False,
    server_name: str | None = None,
    **active: Any,
) -> Pool:
    check = ActiveHealth(**{"path": "/health", **FAST, **active})
    settings = PoolSettings(
        scheme=scheme, tls_skip_verify=skip_verify, tls_server_name=server_name, active=check
    )
    shape = PoolShape(id=pool_id, hosts=("h.test",), path=None, settings=settings, retries=None)
    return Pool(shape=shape, members=(member(address),))


def member(address: str) -> Member:
    return Member(address=address, container_id=address, container_name=address)


async def served_at_least(server: HealthServer, count: int) -> None:
    async def enough() -> bool:
        return len(server.served) >= count

    await eventually(enough, timeout=10, message=f"{count} checks to reach the server")


async def event_count(recorded: Changes, count: int) -> None:
    async def enough() -> bool:
        return len(recorded.events) >= count

    await eventually(enough, timeout=10, message=f"{count} health change(s)")


# -- flipping ------------------------------------------------------------------------------


async def test_member_leaves_after_fails_failures_and_returns_after_passes_successes(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    pool = make_pool(server.address, fails=3, passes=2)
    checker.update([pool])
    await served_at_least(server, 1)
    assert checker.is_healthy(pool.id, pool.members[0])

    before = server.flip(503)
    await event_count(recorded, 1)
    assert recorded.events[0][:3] == (pool.id, server.address, False)
    assert "status 503, expected 200" in recorded.events[0][3]
    assert recorded.served_at_event[0] - before == 3  # exactly `fails` failed checks
    assert not checker.is_healthy(pool.id, pool.members[0])

    before = server.flip(200)
    await event_count(recorded, 2)
    assert recorded.events[1][:3] == (pool.id, server.address, True)
    assert recorded.served_at_event[1] - before == 2  # exactly `passes` good checks
    assert checker.is_healthy(pool.id, pool.members[0])


async def test_a_new_member_is_healthy_until_its_checks_fail(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    server.flip(500)
    pool = make_pool(server.address, fails=2)
    assert checker.is_healthy(pool.id, pool.members[0])  # never seen: healthy
    checker.update([pool])
    assert checker.is_healthy(pool.id, pool.members[0])  # not failed yet: healthy
    await event_count(recorded, 1)
    assert not checker.is_healthy(pool.id, pool.members[0])


# -- what counts as passing ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "status", "passes"),
    [(2, 204, True), (2, 302, False), (200, 204, False), (3, 302, True), (503, 503, True)],
)
async def test_expected_status_is_an_exact_code_or_a_class_digit(
    expected: int, status: int, passes: bool
) -> None:
    assert status_matches(status, expected) is passes


async def test_status_class_2xx_accepts_204_and_exact_200_does_not(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    server.flip(204)
    as_class = make_pool(server.address, pool_id="labelsync-class", expect_status=2)
    exact = make_pool(server.address, pool_id="labelsync-exact", expect_status=200)
    checker.update([as_class, exact])
    await event_count(recorded, 1)
    await served_at_least(server, 6)
    assert [e[0] for e in recorded.events] == ["labelsync-exact"]
    assert "status 204, expected 200" in recorded.events[0][3]
    assert checker.is_healthy("labelsync-class", as_class.members[0])


async def test_body_must_match_the_regular_expression(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    server.flip(200, b"db: up\nstatus: ok")
    pool = make_pool(server.address, body=r"status: ok$")
    checker.update([pool])
    await served_at_least(server, 2)
    assert not recorded.events
    server.flip(200, b"db: down\nstatus: degraded")
    await event_count(recorded, 1)
    assert recorded.events[0][2] is False
    assert "body does not match" in recorded.events[0][3]


async def test_headers_and_port_override_reach_the_member(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    port = int(server.address.rsplit(":", 1)[1])
    # The member serves on port 1 (nothing listens there); its checks go to `port`.
    pool = make_pool("127.0.0.2:1", port=port, headers=(("X-Check", "labelsync"),))
    checker.update([pool])
    await served_at_least(server, 2)
    assert server.headers[0]["X-Check"] == "labelsync"
    assert server.headers[0]["Host"] == f"127.0.0.2:{port}"
    assert not recorded.events


async def test_a_check_slower_than_its_timeout_fails(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    server.delay = 2.0
    pool = make_pool(server.address, timeout="200ms", interval="200ms")
    checker.update([pool])
    await event_count(recorded, 1)
    assert "no answer within 0.2s" in recorded.events[0][3]


async def test_a_refused_connection_fails(changes: tuple[ActiveChecker, Changes]) -> None:
    checker, recorded = changes
    with socket_bound_but_closed() as address:
        pool = make_pool(address)
        checker.update([pool])
        await event_count(recorded, 1)
    assert recorded.events[0][2] is False
    assert "ConnectError" in recorded.events[0][3]


# -- lifecycle -----------------------------------------------------------------------------


async def test_members_that_leave_stop_being_probed_and_are_forgotten(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, _ = changes
    server.flip(500)
    pool = make_pool(server.address, fails=1)
    checker.update([pool])
    await served_at_least(server, 2)
    checker.update([])
    stopped_at = len(server.served)
    await _sleep(0.5)  # five intervals: a running probe would have been served again
    assert len(server.served) <= stopped_at + 1  # at most the one in flight
    assert checker.is_healthy(pool.id, pool.members[0])
    assert checker.states() == {}


async def test_pools_without_active_checks_are_not_probed(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, _ = changes
    shape = PoolShape(
        id="labelsync-none", hosts=("n.test",), path=None, settings=PoolSettings(), retries=None
    )
    checker.update([Pool(shape=shape, members=(member(server.address),))])
    await _sleep(0.3)
    assert server.served == []
    assert checker.states() == {}


async def test_a_changed_check_keeps_the_verdict(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    server.flip(500)
    checker.update([make_pool(server.address)])
    await event_count(recorded, 1)
    checker.update([make_pool(server.address, path="/other", passes=3)])
    pool = make_pool(server.address, path="/other", passes=3)
    assert not checker.is_healthy(pool.id, pool.members[0])
    before = server.flip(200)
    await event_count(recorded, 2)
    assert recorded.served_at_event[1] - before == 3


# -- https ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator[HealthServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("backend.test").configure_cert(context)
    backend = HealthServer(context=context)
    try:
        yield backend
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("skip_verify", "server_name", "healthy"),
    [(True, None, True), (False, "backend.test", True), (False, None, False)],
)
async def test_https_checks_verify_against_server_name_unless_told_to_skip(
    ca: trustme.CA,
    tls_server: HealthServer,
    skip_verify: bool,
    server_name: str | None,
    healthy: bool,
) -> None:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    recorded = Changes(server=tls_server)
    checker = ActiveChecker(on_change=recorded, verify_context=context)
    pool = make_pool(
        tls_server.address, scheme="https", skip_verify=skip_verify, server_name=server_name
    )
    try:
        checker.update([pool])
        if healthy:
            await served_at_least(tls_server, 2)
            assert not recorded.events
        else:
            await event_count(recorded, 1)
            assert "certificate" in recorded.events[0][3].lower()
    finally:
        await checker.aclose()


# -- helpers -------------------------------------------------------------------------------


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


@contextlib.contextmanager
def socket_bound_but_closed() -> Iterator[str]:
    """A loopback address on which nothing accepts: bound, never listening."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.3", 0))
        yield f"127.0.0.3:{bound.getsockname()[1]}"
