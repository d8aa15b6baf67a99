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
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]
import trustme
from hypothesis import given, settings
from hypothesis import strategies as st

from labelsync.core.label_values import LabelValueError, compile_body_pattern, parse_regex
from labelsync.core.model import ActiveHealth, Member, Pool, PoolSettings, PoolShape
from labelsync.membership.health import ActiveChecker, probe_spec, status_matches
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


def reason_of(checker: ActiveChecker, pool: Pool) -> str:
    return checker.states()[(pool.id, pool.members[0].address)].reason


async def eventually_reason(checker: ActiveChecker, pool: Pool, text: str) -> None:
    async def found() -> bool:
        key = (pool.id, pool.members[0].address)
        return key in checker.states() and text in reason_of(checker, pool)

    await eventually(found, timeout=10, message=f"a check failing with {text!r}")


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
    await event_count(recorded, 1)  # joined: `passes` checks passed
    assert recorded.events[0][:3] == (pool.id, server.address, True)
    assert recorded.served_at_event[0] == 2
    assert checker.is_healthy(pool.id, pool.members[0])

    before = server.flip(503)
    await event_count(recorded, 2)
    assert recorded.events[1][:3] == (pool.id, server.address, False)
    assert "status 503, expected 200" in recorded.events[1][3]
    assert recorded.served_at_event[1] - before == 3  # exactly `fails` failed checks
    assert not checker.is_healthy(pool.id, pool.members[0])

    before = server.flip(200)
    await event_count(recorded, 3)
    assert recorded.events[2][:3] == (pool.id, server.address, True)
    assert recorded.served_at_event[2] - before == 2  # exactly `passes` good checks
    assert checker.is_healthy(pool.id, pool.members[0])


async def test_a_new_member_is_pending_and_checked_again_soon_until_it_passes(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    """A replica that does not answer yet (an app still starting) is held out of the
    answer, without a flip, and asked again within a fraction of a second, not an
    interval later; its first pass lets it in."""
    checker, recorded = changes
    server.flip(500)
    pool = make_pool(server.address, interval="30s")
    assert checker.is_healthy(pool.id, pool.members[0])  # never seen: no verdict
    checker.update([pool])
    assert not checker.is_healthy(pool.id, pool.members[0])  # pending
    await served_at_least(server, 3)  # 0.1 s, 0.2 s later: not 30 s
    (state,) = checker.states().values()
    assert state.pending and state.checked  # reported as failing, with why
    assert "status 500" in state.reason
    assert checker.is_starting(pool.id, pool.members[0])  # not for long: no alarm yet
    assert not recorded.events
    server.flip(200)
    await event_count(recorded, 1)
    assert recorded.events[0][2] is True
    assert checker.is_healthy(pool.id, pool.members[0])
    assert not checker.states()[(pool.id, server.address)].pending


async def test_the_members_of_labelsyncs_first_listing_start_healthy(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    """Replicas up before labelsync looked are not held back while it checks them (a
    restart of labelsync would otherwise hide every member until its first check)."""
    checker, _ = changes
    pool = make_pool(server.address)
    checker.update([pool], initial=True)
    assert checker.is_healthy(pool.id, pool.members[0])
    newcomer = replace(pool, members=(*pool.members, member("127.0.0.2:9")))
    checker.update([newcomer])
    assert checker.is_healthy(pool.id, pool.members[0])
    assert not checker.is_healthy(pool.id, newcomer.members[1])  # pending


async def test_a_new_container_at_a_known_address_starts_pending(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    """Docker hands a dead container's IP to the next one: the verdict belongs to the
    container, so its successor at the same address earns its own."""
    checker, recorded = changes
    pool = make_pool(server.address)
    checker.update([pool])
    await event_count(recorded, 1)
    server.flip(500)
    successor = replace(pool, members=(replace(pool.members[0], container_id="next"),))
    checker.update([successor])
    assert checker.is_healthy(pool.id, pool.members[0]) is True  # forgotten: no verdict
    assert not checker.is_healthy(pool.id, successor.members[0])  # pending


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
    assert [e[:3] for e in recorded.events] == [("labelsync-class", server.address, True)]
    assert checker.is_healthy("labelsync-class", as_class.members[0])
    assert not checker.is_healthy("labelsync-exact", exact.members[0])
    assert "status 204, expected 200" in reason_of(checker, exact)


async def test_body_must_match_the_regular_expression(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    server.flip(200, b"db: up\nstatus: ok")
    pool = make_pool(server.address, body=r"status: ok$")
    checker.update([pool])
    await event_count(recorded, 1)
    assert recorded.events[0][2] is True
    server.flip(200, b"db: down\nstatus: degraded")
    await event_count(recorded, 2)
    assert recorded.events[1][2] is False
    assert "body does not match" in recorded.events[1][3]


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
    assert [e[2] for e in recorded.events] == [True]  # joined, never left


async def test_a_check_slower_than_its_timeout_fails(
    server: HealthServer, changes: tuple[ActiveChecker, Changes]
) -> None:
    checker, recorded = changes
    server.delay = 2.0
    pool = make_pool(server.address, timeout="200ms", interval="200ms")
    checker.update([pool])
    await served_at_least(server, 1)
    await eventually_reason(checker, pool, "no answer within 0.2s")
    assert not checker.is_healthy(pool.id, pool.members[0])
    assert not recorded.events  # pending all along: never joined


async def test_a_refused_connection_fails(changes: tuple[ActiveChecker, Changes]) -> None:
    checker, recorded = changes
    with socket_bound_but_closed() as address:
        pool = make_pool(address)
        checker.update([pool])
        await eventually_reason(checker, pool, "ConnectError")
    assert not checker.is_healthy(pool.id, pool.members[0])
    assert not recorded.events


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
    checker.update([make_pool(server.address)])
    await event_count(recorded, 1)  # joined
    server.flip(500)
    await event_count(recorded, 2)  # left
    checker.update([make_pool(server.address, path="/other", passes=3)])
    pool = make_pool(server.address, path="/other", passes=3)
    assert not checker.is_healthy(pool.id, pool.members[0])
    before = server.flip(200)
    await event_count(recorded, 3)
    assert recorded.served_at_event[2] - before == 3


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
            await event_count(recorded, 1)
            assert recorded.events[0][2] is True
        else:
            await eventually_reason(checker, pool, "CERTIFICATE")
            assert not checker.is_healthy(pool.id, pool.members[0])
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


# -- health.body is RE2, as validated ------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "body"),
    [(r"\pL+", "héllo".encode()), (r"ok\s*\z", b"db: up\nstatus: ok\n"), (r"(?i)^OK", b"ok")],
)
async def test_a_body_matching_an_re2_only_pattern_passes(
    server: HealthServer, changes: tuple[ActiveChecker, Changes], pattern: str, body: bytes
) -> None:
    checker, recorded = changes
    server.flip(200, body)
    pool = make_pool(server.address, body=pattern, fails=1)
    checker.update([pool])
    await served_at_least(server, 3)
    assert [e[2] for e in recorded.events] == [True]  # joined, never left
    assert [state.reason for state in checker.states().values()] == ["passing"]


async def test_a_body_pattern_go_refuses_fails_without_contacting_the_member(
    server: HealthServer,
) -> None:
    checker = ActiveChecker()
    try:
        spec = probe_spec(make_pool(server.address, body="(?=ok)ok"), member(server.address))
        assert spec is not None
        failure = await checker.probe(spec)
    finally:
        await checker.aclose()
    assert failure is not None
    assert "not a Go (RE2) regular expression" in failure
    assert server.served == []


# Fragments RE2 and Go accept, RE2 accepts but Go does not (`\C`), and only Python's `re`
# accepts (possessive, lookahead, backreference, `\Z`), plus pieces that unbalance.
FRAGMENTS = (
    r"\z", r"\pL", r"\pL+", r"\d", "(?i)", "[a-z]+", r"\C", "a++", "(?=x)", r"\1", r"\Z",
    "ok", r"\s*", "^", "$", "(", ")", "|", ".", "?", "*", "é", r"\\",
)  # fmt: skip


@pytest.fixture(scope="module")
def body_server() -> Iterator[HealthServer]:
    backend = HealthServer()
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(scope="module")
async def body_checker() -> AsyncIterator[ActiveChecker]:
    checker = ActiveChecker()
    try:
        yield checker
    finally:
        await checker.aclose()


@settings(max_examples=200, deadline=None)
@given(
    pattern=st.lists(st.sampled_from(FRAGMENTS), max_size=6).map("".join),
    body=st.text(alphabet="aZé0x ok\n", max_size=12),
)
async def test_a_body_pattern_the_validator_accepts_is_searched_like_re2(
    body_server: HealthServer, body_checker: ActiveChecker, pattern: str, body: str
) -> None:
    try:
        parse_regex(pattern)
    except LabelValueError:
        return  # the label is refused: no check is ever built from it
    compile_body_pattern(pattern)  # the checker's compile accepts what the validator did
    body_server.flip(200, body.encode())
    spec = probe_spec(make_pool(body_server.address, body=pattern), member(body_server.address))
    assert spec is not None
    failure = await body_checker.probe(spec)
    assert failure is None or "regular expression" not in failure
    if re2.search(pattern, body) is not None:
        assert failure is None
    else:
        assert failure is not None and failure.startswith("body does not match")
