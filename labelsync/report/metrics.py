"""Prometheus `/metrics` and `/healthz` on `LABELSYNC_METRICS_LISTEN`.

Served by a small HTTP/1.1 server on the daemon's own asyncio loop, not a thread: every
value it reports (the loop's state, the health verdicts) lives on that loop, and the
per-upstream counts need an async read of Caddy's `/reverse_proxy/upstreams` at scrape
time. A stuck loop then also shows as a scrape or `/healthz` that does not answer,
which is what a liveness probe should see. Each `Metrics` holds a `CollectorRegistry` of
its own, never the global default, so several daemons (or tests) live in one process.

Families (all prefixed `labelsync_`):

| name | type | labels |
|---|---|---|
| docker_events_total | counter | kind, action |
| applies_total | counter | result: a `SyncResult` value (core/outcomes.py) |
| apply_duration_seconds | histogram | |
| event_to_applied_seconds | histogram | |
| caddy_admin_requests_total, caddy_admin_request_bytes_total | counter | endpoint |
| caddy_admin_writes_total | counter | endpoint |
| docker_up, caddy_up, last_apply_ok | gauge | (caddy_up: endpoint) |
| pools, members | gauge | |
| label_problems | gauge | severity |
| health_checks_total | counter | |
| upstream_healthy | gauge (1/0; absent while unknown) | pool, address, container |
| upstream_active_requests | gauge (Caddy's num_requests) | pool, address, container |
| upstream_failures | gauge (Caddy's fails) | pool, address, container |
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from labelsync.app.status import caddy_active_health
from labelsync.caddy.admin import CaddyAdmin
from labelsync.core.model import JSON, Severity
from labelsync.errors import CaddyError, ConfigError
from labelsync.report.status_report import StatusReport, build_report

if TYPE_CHECKING:
    from labelsync.loop.reconcile import Reconciler
    from labelsync.sources.docker import DockerEvent


APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REQUEST_LIMIT = 16 * 1024  # bytes of request head accepted
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request
PING_TIMEOUT = 1.0  # seconds Caddy has to answer /healthz's ping


def parse_listen(address: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (every interface) -> (host, port); port 0
    picks a free one (see `bound_port`)."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"LABELSYNC_METRICS_LISTEN must be host:port, not {address!r}")
    host = host.strip("[]")
    return (host or None), int(port)


class Metrics:
    """The metrics of one daemon, fed by the loop (`on_event`, `on_sync`) and read live
    from its reconcilers at scrape time."""

    def __init__(
        self,
        reconcilers: Sequence[Reconciler],
        snapshot: Callable[[], JSON],
        *,
        probes: Callable[[], int] | None = None,
    ) -> None:
        """`snapshot` gives the daemon's state as the state file holds it; `probes` the
        number of active checks run so far (dynamic mode)."""
        self.reconcilers = list(reconcilers)
        self.snapshot = snapshot
        self.probes = probes
        self.registry = CollectorRegistry()
        self.events = Counter(
            "labelsync_docker_events",
            "Docker events received, by kind and action.",
            ["kind", "action"],
            registry=self.registry,
        )
        self.applies = Counter(
            "labelsync_applies",
            "Syncs (snapshot, build, apply), by result.",
            ["result"],
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "labelsync_apply_duration_seconds",
            "Time of one sync: Docker snapshot, build, admin requests.",
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )
        self.latency_seconds = Histogram(
            "labelsync_event_to_applied_seconds",
            "From the oldest Docker event a sync covers to its changes being applied.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.report: StatusReport | None = None  # per-upstream view of the last scrape
        self.registry.register(_LiveCollector(self))
        self._readers = [
            CaddyAdmin(r.caddy.endpoint, timeout=PING_TIMEOUT * 2) for r in reconcilers
        ]
        self._server: asyncio.Server | None = None

    # -- fed by the loop ---------------------------------------------------------------------
    def on_event(self, event: DockerEvent) -> None:
        action = event.action.split(":", 1)[0].strip() or "-"
        self.events.labels(kind=event.kind, action=action).inc()

    def on_sync(self, result: str, seconds: float, latency: float | None) -> None:
        self.applies.labels(result=result).inc()
        self.apply_seconds.observe(seconds)
        if result == "applied" and latency is not None:
            self.latency_seconds.observe(max(0.0, latency))

    # -- scrape --------------------------------------------------------------------------------
    async def refresh_upstreams(self) -> None:
        """Read Caddy's per-upstream counts for the next exposition; keep the old on failure."""
        state = self.snapshot()
        reader = self._readers[0] if self._readers else None
        if reader is None:
            return
        try:
            upstreams = await reader.upstreams()
        except CaddyError as exc:
            logger.debug(f"metrics: cannot read Caddy's upstreams: {exc}")
            upstreams = []
        caddy_health = None
        if state.get("upstreams") == "static" and any(
            p.get("active_check") for p in state.get("pools", [])
        ):
            caddy_health = await caddy_active_health(reader.endpoint)
        self.report = build_report(
            caddy_admin=reader.endpoint,
            caddy_server=str(state.get("caddy_server")),
            routes=None,
            upstreams=upstreams,
            caddy_health=caddy_health,
            state=state,
        )

    async def exposition(self) -> bytes:
        await self.refresh_upstreams()
        return generate_latest(self.registry)

    async def health(self) -> tuple[bool, JSON]:
        """/healthz: Docker and every Caddy reachable, and the last apply succeeded."""
        states = [r.state for r in self.reconcilers]
        reasons = []
        docker_up = bool(states) and all(s.docker_up for s in states)
        if not docker_up:
            reasons.append("Docker is unreachable")
        caddy_up = []
        for reader in self._readers:
            answers = await reader.ping()
            caddy_up.append(answers)
            if not answers:
                reasons.append(f"Caddy's admin API at {reader.endpoint} does not answer")
        applied = bool(states) and all(s.last_apply_ok for s in states)
        if not applied:
            synced = all(s.synced.is_set() for s in states)
            reasons.append("the last apply failed" if synced else "no successful sync yet")
        last_error = next((s.last_error for s in states if s.last_error), None)
        body = {
            "status": "ok" if not reasons else "unavailable",
            "reasons": reasons,
            "docker_up": docker_up,
            "caddy_up": all(caddy_up),
            "last_apply_ok": applied,
            "last_error": last_error,
        }
        return not reasons, body

    # -- HTTP ----------------------------------------------------------------------------------
    async def start(self, listen: str) -> None:
        """Serve /metrics and /healthz on `listen`; ConfigError when it cannot be bound."""
        host, port = parse_listen(listen)
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            raise ConfigError(
                f"the metrics endpoint cannot listen on {listen}: {exc.strerror or exc}; "
                "set LABELSYNC_METRICS_LISTEN to a free address"
            ) from exc
        logger.info(f"metrics on http://{listen}/metrics, health on /healthz")

    @property
    def bound_port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        for reader in self._readers:
            await reader.aclose()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            status, content_type, body = await self._answer(method, path)
            body_out = b"" if method == "HEAD" else body
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body_out
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that does not speak HTTP gets the connection closed
        except ConnectionError:
            pass
        except Exception:
            logger.opt(exception=True).error("metrics: answering a request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET or HEAD only\n"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, await self.exposition()
        if path == "/healthz":
            healthy, body = await self.health()
            status = "200 OK" if healthy else "503 Service Unavailable"
            return status, "application/json", json.dumps(body).encode() + b"\n"
        if path == "/":
            return "200 OK", "text/plain", b"labelsync: /metrics, /healthz\n"
        return "404 Not Found", "text/plain", b"not found\n"


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > REQUEST_LIMIT:
        return "", ""
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", "")


class _LiveCollector(Collector):
    """Gauges and counters read at scrape time from the loop's state."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        reconcilers = self.metrics.reconcilers
        states = [r.state for r in reconcilers]
        yield _gauge(
            "docker_up", "1 when Docker answers.", bool(states) and all(s.docker_up for s in states)
        )
        caddy_up = GaugeMetricFamily(
            "labelsync_caddy_up",
            "1 when the last request to Caddy got an answer.",
            labels=["endpoint"],
        )
        requests = CounterMetricFamily(
            "labelsync_caddy_admin_requests",
            "Requests sent to Caddy's admin API.",
            labels=["endpoint"],
        )
        sent = CounterMetricFamily(
            "labelsync_caddy_admin_request_bytes",
            "Request body bytes sent to Caddy's admin API.",
            labels=["endpoint"],
        )
        writes = CounterMetricFamily(
            "labelsync_caddy_admin_writes",
            "Admin writes (each one reloads Caddy's config).",
            labels=["endpoint"],
        )
        for reconciler in reconcilers:
            endpoint = [reconciler.caddy.endpoint]
            caddy_up.add_metric(endpoint, float(reconciler.state.caddy_up))
            requests.add_metric(endpoint, float(reconciler.caddy.requests_sent))
            sent.add_metric(endpoint, float(reconciler.caddy.bytes_sent))
            writes.add_metric(endpoint, float(reconciler.state.admin_writes))
        yield from (caddy_up, requests, sent, writes)
        yield _gauge(
            "last_apply_ok",
            "1 when the last sync was applied.",
            bool(states) and all(s.last_apply_ok for s in states),
        )
        desired = states[0].desired if states else None
        pools = desired.pools if desired is not None else ()
        yield _gauge("pools", "Pools labelsync owns.", len(pools))
        yield _gauge("members", "Members across all pools.", sum(len(p.members) for p in pools))
        problems = GaugeMetricFamily(
            "labelsync_label_problems", "Label problems in the current input.", labels=["severity"]
        )
        for severity in Severity:
            found = [p for p in (desired.problems if desired else ()) if p.severity is severity]
            problems.add_metric([severity.value], float(len(found)))
        yield problems
        if self.metrics.probes is not None:
            checks = CounterMetricFamily("labelsync_health_checks", "Active health checks run.")
            checks.add_metric([], float(self.metrics.probes()))
            yield checks
        yield from self._upstreams()

    def _upstreams(self) -> Iterator[Metric]:
        labels = ["pool", "address", "container"]
        healthy = GaugeMetricFamily(
            "labelsync_upstream_healthy",
            "1 healthy, 0 unhealthy; absent while unknown.",
            labels=labels,
        )
        active = GaugeMetricFamily(
            "labelsync_upstream_active_requests",
            "Requests in flight (Caddy's num_requests).",
            labels=labels,
        )
        failures = GaugeMetricFamily(
            "labelsync_upstream_failures",
            "Failed requests inside the passive fail_duration window (Caddy's fails).",
            labels=labels,
        )
        report = self.metrics.report
        for pool in report.pools if report is not None else ():
            for member in pool.members:
                values = [pool.id, member.address, member.container or ""]
                if member.health != "unknown":
                    healthy.add_metric(values, float(member.health == "healthy"))
                if member.active_requests is not None:
                    active.add_metric(values, float(member.active_requests))
                if member.failures is not None:
                    failures.add_metric(values, float(member.failures))
        yield from (healthy, active, failures)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"labelsync_{name}", documentation, value=float(value))
