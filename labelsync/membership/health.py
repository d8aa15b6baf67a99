"""labelsync's own active health checks, for pools whose members the resolver serves.

In dynamic upstream mode Caddy never learns the members, so it cannot probe them; and
probe state kept in Caddy would be forgotten on every config reload anyway. Here each
(pool, member) pair gets one task that probes the member's own address on the pool's
`settings.active` schedule; the verdicts live in this process and so outlive any
Caddy reload. The owner asks `is_healthy` when it builds SRV answers and re-publishes
when `on_change` reports a flip.

Semantics follow Caddy's active checks: a GET of `path` on the member (or on
`health.port`), no redirects followed, the expected status as an exact code or a class
digit (2 = any 2xx), an optional regular expression searched anywhere in the body with RE2
(Go's regexp syntax, as Caddy's `expect_body`; compiled by `compile_body_pattern`, the
helper that also validates the `health.body` label), `passes` / `fails` consecutive
results to flip. `h2c` members are probed over HTTP/1.1.

Where it differs from Caddy, on purpose: a new member is *pending*, out of the answer,
until `passes` checks in a row pass, and is checked again within a fraction of a second
until then (Caddy counts a new upstream healthy at once). A replica that listens a
moment after its container starts thus gets no request before it listens, and none of
the refused connections that would count against it in Caddy's passive checks; with a
30 s interval it would otherwise wait half a minute. A member that passed is healthy
until it fails `fails` checks in a row. A pool whose members are all pending or
unhealthy is answered with its replicas still draining, or else with all of its members
(`srv_records.py`): the checks never empty a pool.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx
from loguru import logger

from labelsync.core.durations import parse_duration
from labelsync.core.label_values import LabelValueError, compile_body_pattern
from labelsync.core.model import Member, MemberHealth, Pool

OnChange = Callable[[str, str, bool, str], None]  # pool id, member address, healthy, reason
MemberKey = tuple[str, str, str]  # pool id, member address, container id

# A new member is answered once its first check passes; until then it is checked every
# 0.1 s for its first 3 s (an app that listens a second after its container started
# joins about then, not an interval on), then at twice the last wait, at most 2 s, and
# never less often than the pool's interval.
PENDING_WAIT = 0.1
PENDING_FAST_SECONDS = 3.0
PENDING_LONGEST_WAIT = 2.0
PENDING_REASON = "waiting for its first passing check"
# A pending member that failed this many checks (3 s of them) is no longer "starting":
# a pool of such members is reported as down.
STARTING_FAILURES = int(PENDING_FAST_SECONDS / PENDING_WAIT)

# Bodies are read up to this size for the `health.body` match: a check is not a download.
BODY_LIMIT = 1 << 20
USER_AGENT = "labelsync-health-check"


@dataclass(frozen=True)
class ProbeSpec:
    """Everything one member's check needs; a change restarts its probe task."""

    url: str
    interval: float  # seconds
    timeout: float
    expect_status: int  # exact code, or a class digit (2 = 2xx)
    body: str | None
    headers: tuple[tuple[str, str], ...]
    passes: int
    fails: int
    verify: bool
    server_name: str | None


def probe_spec(pool: Pool, member: Member) -> ProbeSpec | None:
    """The check of `member` in `pool`, or None when the pool has no active check."""
    settings = pool.shape.settings
    active = settings.active
    if active is None:
        return None
    host, _, port = member.address.rpartition(":")
    if active.port is not None:
        port = str(active.port)
    scheme = "https" if settings.scheme == "https" else "http"
    path = active.path if active.path.startswith("/") else f"/{active.path}"
    return ProbeSpec(
        url=f"{scheme}://{host}:{port}{path}",
        interval=parse_duration(active.interval),
        timeout=parse_duration(active.timeout),
        expect_status=active.expect_status,
        body=active.body,
        headers=active.headers,
        passes=max(1, active.passes),
        fails=max(1, active.fails),
        verify=not settings.tls_skip_verify,
        server_name=settings.tls_server_name,
    )


def member_key(pool_id: str, member: Member) -> MemberKey:
    """Whose verdict: one container at one address, in one pool."""
    return pool_id, member.address, member.container_id


def status_matches(status: int, expected: int) -> bool:
    """An exact code, or a class digit: 2 accepts 200-299 (0 accepts 2xx too)."""
    if expected <= 0:
        expected = 2
    if expected < 10:
        return status // 100 == expected
    return status == expected


def _describe_expected(expected: int) -> str:
    return f"{expected if expected > 0 else 2}xx" if expected < 10 else str(expected)


class ActiveChecker:
    """Probe tasks for every (pool, member) whose pool has `settings.active`.

    checker = ActiveChecker(on_change=lambda pool, member, healthy, why: ...)
    checker.update(desired.pools)      # from a running event loop
    checker.is_healthy(pool.id, member)
    await checker.aclose()
    """

    def __init__(
        self, *, on_change: OnChange | None = None, verify_context: ssl.SSLContext | None = None
    ) -> None:
        """`verify_context` replaces the system trust store for verified https checks
        (a private CA)."""
        self._on_change = on_change
        self._verify_context = verify_context
        self._specs: dict[MemberKey, ProbeSpec] = {}
        self._tasks: dict[MemberKey, asyncio.Task[None]] = {}
        self._states: dict[MemberKey, MemberHealth] = {}
        self._clients: dict[bool, httpx.AsyncClient] = {}
        self.probes = 0  # checks run, for metrics

    def update(self, pools: Iterable[Pool], *, initial: bool = False) -> None:
        """Probe exactly the members of these pools, with their pools' checks.

        Members that stay keep their state; a member whose check changed keeps its
        verdict and restarts its counters; members that left are forgotten. A member is
        its container and its address: a new container on a dead one's IP starts afresh.
        A new member waits for its first passing check (`MemberHealth.pending`), but for
        those of an `initial` update (labelsync's first listing: replicas that were up
        before it looked), which start healthy, as Caddy's upstreams do.
        """
        wanted: dict[MemberKey, ProbeSpec] = {}
        for pool in pools:
            for member in pool.members:
                spec = probe_spec(pool, member)
                if spec is not None:
                    wanted[member_key(pool.id, member)] = spec
        for key in list(self._tasks):
            if wanted.get(key) != self._specs.get(key):
                self._tasks.pop(key).cancel()
                self._specs.pop(key, None)
                if key not in wanted:
                    self._states.pop(key, None)
        for key, spec in wanted.items():
            if key in self._tasks:
                continue
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = (
                    MemberHealth()
                    if initial
                    else MemberHealth(healthy=False, reason=PENDING_REASON, pending=True)
                )
            state.successes = state.failures = 0
            self._specs[key] = spec
            pool_id, address, _ = key
            self._tasks[key] = asyncio.get_running_loop().create_task(
                self._probe_forever(key, spec), name=f"health {pool_id} {address}"
            )

    def is_healthy(self, pool_id: str, member: Member) -> bool:
        """The member's verdict; True for members without a check. False for a member
        that has not passed its first check yet (pending) or failed its last ones."""
        state = self._states.get(member_key(pool_id, member))
        return True if state is None else state.healthy

    def is_starting(self, pool_id: str, member: Member) -> bool:
        """True for a new member whose first check has not passed yet, and that has not
        failed for long either (an app still starting, not a broken check)."""
        state = self._states.get(member_key(pool_id, member))
        return state is not None and state.pending and state.failures < STARTING_FAILURES

    def states(self) -> dict[tuple[str, str], MemberHealth]:
        """A copy of every checked member's state, keyed by (pool id, address)."""
        return {key[:2]: MemberHealth(**vars(state)) for key, state in self._states.items()}

    async def aclose(self) -> None:
        """Stop every probe and close the HTTP clients."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._specs.clear()
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()

    # -- probing -----------------------------------------------------------------------------

    async def _probe_forever(self, key: MemberKey, spec: ProbeSpec) -> None:
        loop = asyncio.get_running_loop()
        pending_since, pending_wait = loop.time(), PENDING_WAIT
        while True:
            started = loop.time()
            try:
                failure = await self.probe(spec)
            except Exception as exc:  # a probe must never end the task
                failure = f"check error: {exc!r}"
            self.probes += 1
            self._record(key, spec, failure)
            wait = spec.interval
            state = self._states.get(key)
            if state is not None and state.pending:
                # Not listening yet, most likely: ask again soon, not in `interval`.
                if loop.time() - pending_since >= PENDING_FAST_SECONDS:
                    pending_wait = min(pending_wait * 2, PENDING_LONGEST_WAIT)
                wait = min(wait, pending_wait)
            await asyncio.sleep(max(0.0, wait - (loop.time() - started)))

    async def probe(self, spec: ProbeSpec) -> str | None:
        """Run one check: None when it passes, else why it failed."""
        try:
            body_pattern = compile_body_pattern(spec.body) if spec.body else None
        except LabelValueError as exc:  # only for a body the label validator did not see
            return f"health.body {spec.body!r} is {exc}"
        extensions = {"sni_hostname": spec.server_name} if spec.server_name else {}
        headers = {"User-Agent": USER_AGENT, **dict(spec.headers)}
        try:
            async with asyncio.timeout(spec.timeout):
                async with self._client(spec.verify).stream(
                    "GET", spec.url, headers=headers, extensions=extensions
                ) as response:
                    if not status_matches(response.status_code, spec.expect_status):
                        expected = _describe_expected(spec.expect_status)
                        return f"status {response.status_code}, expected {expected}"
                    if body_pattern is None:
                        return None
                    body = await _read_limited(response)
        except TimeoutError:
            return f"no answer within {spec.timeout:g}s"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        text = body.decode(response.encoding or "utf-8", errors="replace")
        if body_pattern.search(text) is None:
            return f"body does not match {spec.body!r}"
        return None

    def _client(self, verify: bool) -> httpx.AsyncClient:
        client = self._clients.get(verify)
        if client is None:
            # No proxies from the environment: checks go straight to the member.
            trust: ssl.SSLContext | bool = verify
            if verify and self._verify_context is not None:
                trust = self._verify_context
            client = httpx.AsyncClient(verify=trust, trust_env=False, follow_redirects=False)
            self._clients[verify] = client
        return client

    def _record(self, key: MemberKey, spec: ProbeSpec, failure: str | None) -> None:
        state = self._states.setdefault(key, MemberHealth())
        flipped = False
        if failure is None:
            state.successes += 1
            state.failures = 0
            state.reason = "passing"
            if not state.healthy and state.successes >= spec.passes:
                state.healthy, flipped = True, True
                state.reason = f"passed {state.successes} check(s) in a row"
                state.pending = False
        else:
            state.failures += 1
            state.successes = 0
            state.reason = failure
            if state.healthy and state.failures >= spec.fails:
                state.healthy, flipped = False, True
        if flipped and self._on_change is not None:
            pool_id, address, _ = key
            try:
                self._on_change(pool_id, address, state.healthy, state.reason)
            except Exception:
                logger.opt(exception=True).error(f"health: on_change failed for {address}")


async def _read_limited(response: httpx.Response) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= BODY_LIMIT:
            break
    return b"".join(chunks)[:BODY_LIMIT]
