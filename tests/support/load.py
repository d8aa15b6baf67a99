"""A bounded, concurrent keep-alive load generator for end-to-end tests.

`N` clients, each on its own thread with its own keep-alive `httpx.Client`, send requests to
one URL with one `Host` header until the first of: `max_seconds` elapsed, `max_requests`
sent (all clients together), or `stop()` called. Every request is counted: successes,
failures, HTTP statuses, transport errors by type, and answering backends (`X-Backend`
header, else the body's first line).

A request on a reused keep-alive connection that the server closed before answering
anything (a stale connection) is, by default, a failure like any other reset: counted in
`failures` (error kind "stale connection reset") and, apart, in `stale_failures`. In
dynamic mode membership changes reload nothing, so such a reset is a real failure.
Tests that expect Caddy writes (reloads) under the load (static mode, settings changes,
a restarted Caddy) pass `retry_stale=True`: each client then does what browsers, Go's
and curl's clients do (RFC 9112, 9.3.1) and sends such a request once more on a fresh
connection. Caddy closes its idle connections on every config reload, so this race is
every keep-alive client's; such retries are counted apart (`stale_retries`), never as
failures, and a second failure is one.

    with Load(daemon.url, host, clients=4, max_seconds=60) as load:
        load.wait_requests(50)          # traffic is flowing
        ...                             # change things under load
    result = load.result                # stop() ran on leaving the block
    print(f"rolling update: {result.failed}/{result.total} failed")
    assert result.failed == 0, result.summary()

`run_load(url, host, ...)` is the blocking form: it returns the `LoadResult` once a bound is
reached. Only loopback URLs and containers the test started are ever targeted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from .waiting import wait_until

IsSuccess = Callable[[httpx.Response], bool]


def status_200(response: httpx.Response) -> bool:
    """The default success test: HTTP 200."""
    return response.status_code == 200


@dataclass(frozen=True)
class Failure:
    """One failed request: when (seconds since the load started), which client, and why."""

    at: float
    client: int
    reason: str  # "HTTP 502" or the transport error, e.g. "ReadError: ..."


@dataclass
class LoadResult:
    """Counts over every request the load sent (a snapshot while it runs)."""

    total: int = 0
    successes: int = 0
    failures: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # transport error type -> count
    backends: Counter[str] = field(default_factory=Counter)  # successful answers per backend
    first_failures: list[Failure] = field(default_factory=list)  # up to MAX_KEPT_FAILURES
    seconds: float = 0.0
    slowest: float = 0.0  # seconds, the longest request (failed ones included)
    slow: int = 0  # requests that took longer than the load's `slow_after`
    stale_retries: int = 0  # requests sent again after a reused connection closed unanswered
    stale_failures: int = 0  # such requests counted as failures (`retry_stale` off)

    @property
    def failed(self) -> int:
        return self.failures

    def summary(self) -> str:
        """One line for test output and assertion messages."""
        shown = "; ".join(f"{f.at:.2f}s c{f.client}: {f.reason}" for f in self.first_failures[:10])
        return (
            f"{self.failures}/{self.total} failed in {self.seconds:.1f}s, "
            f"statuses={dict(self.statuses)}, errors={dict(self.errors)}, "
            f"backends={dict(self.backends)}, slowest={self.slowest:.2f}s, slow={self.slow}, "
            f"stale keep-alive retries={self.stale_retries}, "
            f"stale keep-alive resets counted as failures={self.stale_failures}"
            + (f", first failures: {shown}" if shown else "")
        )


MAX_KEPT_FAILURES = 50
STALE_RESET = "stale connection reset"  # the error kind of a stale connection not retried


class Load:
    """Background load: `start()`, then `stop() -> LoadResult`; also a context manager."""

    def __init__(
        self,
        url: str,
        host: str,
        *,
        path: str = "/",
        clients: int = 4,
        max_seconds: float = 30.0,
        max_requests: int = 20_000,
        timeout: float = 10.0,
        pause: float = 0.0,
        is_success: IsSuccess = status_200,
        headers: dict[str, str] | None = None,
        slow_after: float = 1.0,
        retry_stale: bool = False,
    ) -> None:
        """`url` is the listener (`http://127.0.0.1:PORT`), `host` the Host header, `path`
        the request path. `pause` sleeps between one client's requests (0 = back to back).
        `timeout` bounds each request; a timed-out request counts as a failure. Requests
        slower than `slow_after` seconds are counted in `slow`. `retry_stale`: send a
        request once more when a reused connection closed before answering it (for loads
        during which Caddy reloads); off, such a request is a failure."""
        if clients < 1 or max_seconds <= 0 or max_requests < 1:
            raise ValueError("load needs clients >= 1 and positive bounds")
        self.url = url.rstrip("/") + path
        self.headers = {"Host": host, **(headers or {})}
        self.clients = clients
        self.max_seconds = max_seconds
        self.max_requests = max_requests
        self.timeout = timeout
        self.pause = pause
        self.is_success = is_success
        self.slow_after = slow_after
        self.retry_stale = retry_stale
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counts = LoadResult()
        self._sent = 0
        self._threads: list[threading.Thread] = []
        self._started_at = 0.0
        self._stopped_at: float | None = None

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Load:
        if self._threads:
            raise RuntimeError("load already started")
        self._started_at = time.monotonic()
        for index in range(self.clients):
            thread = threading.Thread(
                target=self._client_loop, args=(index,), name=f"load-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def stop(self) -> LoadResult:
        """Stop sending, wait for requests in flight (bounded by `timeout`), return counts."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5.0)
        if self._stopped_at is None:
            self._stopped_at = time.monotonic()
        return self.result

    def wait(self) -> LoadResult:
        """Block until a bound (`max_seconds` or `max_requests`) is reached; the counts."""
        for thread in self._threads:
            thread.join(timeout=self.max_seconds + self.timeout + 5.0)
        return self.stop()

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- observation ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    @property
    def result(self) -> LoadResult:
        """A consistent copy of the counts so far."""
        with self._lock:
            counts = self._counts
            end = self._stopped_at if self._stopped_at is not None else time.monotonic()
            return LoadResult(
                total=counts.total,
                successes=counts.successes,
                failures=counts.failures,
                statuses=Counter(counts.statuses),
                errors=Counter(counts.errors),
                backends=Counter(counts.backends),
                first_failures=list(counts.first_failures),
                seconds=end - self._started_at if self._started_at else 0.0,
                slowest=counts.slowest,
                slow=counts.slow,
                stale_retries=counts.stale_retries,
                stale_failures=counts.stale_failures,
            )

    def wait_requests(self, count: int, *, timeout: float = 30.0) -> LoadResult:
        """Wait until at least `count` more requests completed than now; the counts then."""
        target = self.result.total + count
        wait_until(
            lambda: self.result.total >= target or not self.running,
            timeout=timeout,
            message=f"{count} load requests",
        )
        return self.result

    def wait_successes(self, count: int, *, timeout: float = 30.0) -> LoadResult:
        """Wait until at least `count` more requests succeeded than now."""
        target = self.result.successes + count
        wait_until(
            lambda: self.result.successes >= target or not self.running,
            timeout=timeout,
            message=f"{count} successful load requests",
        )
        return self.result

    # -- the clients ----------------------------------------------------------------------

    def _take_slot(self) -> bool:
        """Reserve one request within the bounds; False once a bound is reached."""
        if self._stop.is_set() or time.monotonic() - self._started_at >= self.max_seconds:
            return False
        with self._lock:
            if self._sent >= self.max_requests:
                return False
            self._sent += 1
            return True

    def _client_loop(self, index: int) -> None:
        # One keep-alive connection per client, as a browser or an upstream proxy would hold.
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(trust_env=False, timeout=self.timeout, limits=limits) as client:
            while self._take_slot():
                self._send_one(client, index)
                if self.pause:
                    self._stop.wait(self.pause)

    def _send_one(self, client: httpx.Client, index: int) -> None:
        backend: str | None = None
        reason: str | None = None
        status: int | None = None
        started = time.monotonic()
        retried = stale = False
        try:
            try:
                response = _send_get(client, self.url, self.headers)
            except _StaleConnection:
                if not self.retry_stale:
                    raise  # a failure of its own kind, below
                retried = True
                response = client.get(self.url, headers=self.headers)
            status = response.status_code
            if self.is_success(response):
                backend = (
                    response.headers.get("X-Backend")
                    or (response.text.strip().splitlines() or [""])[0]
                )
            else:
                answered_by = response.headers.get("X-Backend")
                reason = f"HTTP {status}" + (f" from {answered_by}" if answered_by else "")
        except _StaleConnection as exc:
            stale = True
            reason = f"{STALE_RESET}: {exc}"
        except httpx.HTTPError as exc:
            reason = f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - started
        with self._lock:
            counts = self._counts
            counts.total += 1
            counts.stale_retries += retried
            counts.stale_failures += stale
            counts.slowest = max(counts.slowest, took)
            if took > self.slow_after:
                counts.slow += 1
            if status is not None:
                counts.statuses[status] += 1
            if reason is None:
                counts.successes += 1
                if backend:
                    counts.backends[backend] += 1
                return
            counts.failures += 1
            if status is None:
                counts.errors[reason.split(":", 1)[0]] += 1
            if len(counts.first_failures) < MAX_KEPT_FAILURES:
                at = time.monotonic() - self._started_at
                counts.first_failures.append(Failure(at=at, client=index, reason=reason))


class _StaleConnection(Exception):
    """A reused connection closed before any byte of the answer: safe to send again (the
    message names the transport error, e.g. "ReadError: ...")."""


def _send_get(client: httpx.Client, url: str, headers: dict[str, str]) -> httpx.Response:
    """GET; raises `_StaleConnection` when a reused connection closed unanswered."""
    events: set[str] = set()

    def trace(event: str, info: dict[str, object]) -> None:
        events.add(event)

    try:
        return client.get(url, headers=headers, extensions={"trace": trace})
    except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
        reused = "connection.connect_tcp.started" not in events
        answered = "http11.receive_response_headers.complete" in events
        if reused and not answered:
            raise _StaleConnection(f"{type(exc).__name__}: {exc}") from exc
        raise


def run_load(url: str, host: str, *, retry_stale: bool = False, **options: object) -> LoadResult:
    """Run a `Load(url, host, retry_stale=..., **options)` to one of its bounds and return
    the counts."""
    load = Load(url, host, retry_stale=retry_stale, **options)  # type: ignore[arg-type]
    load.start()
    return load.wait()
