"""Prometheus `/metrics` and `/healthz` on `LABELSYNC_METRICS_LISTEN`.

Values come from the daemon's `Snapshot` (`views.py`, kept by `snapshot.py`'s
`LiveView`) and, at scrape time, from Caddy's `/reverse_proxy/upstreams` (per-upstream
counts); they are served by the small HTTP endpoint on the daemon's loop (`http.py`).
Each `Metrics` holds a `CollectorRegistry` of its own, never the global default, so
several daemons (or tests) live in one process.

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
| docker_engine_up | gauge (1/0; several engines only) | engine, endpoint |
| docker_engine_members | gauge (several engines only) | engine |
| pools, members | gauge | |
| pool_membership | gauge (1) | pool, channel |
| pool_host | gauge (1) | pool, host: to join Caddy's per-host counters with |
| label_problems | gauge | severity |
| health_checks_total | counter | |
| upstream_healthy | gauge (1/0; absent while unknown) | pool, address, container |
| upstream_active_requests | gauge (Caddy's num_requests) | pool, address, container |
| upstream_failures | gauge (Caddy's fails) | pool, address, container |
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Protocol

from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from labelsync.core.events import DockerEvent
from labelsync.core.model import JSON, HealthStatus, Severity
from labelsync.core.outcomes import SyncResult
from labelsync.errors import CaddyError
from labelsync.report.healthz import healthz
from labelsync.report.http import TEXT, Answer, Handler, HttpEndpoint, Request
from labelsync.report.snapshot import LiveView
from labelsync.report.status_report import StatusReport, build_report, caddy_runs_active_checks
from labelsync.report.views import Snapshot

APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PING_TIMEOUT = 1.0  # seconds Caddy has to answer /healthz's ping (the reader's timeout)


class CaddyReader(Protocol):
    """The reads of one Caddy admin endpoint that scrapes and `/healthz` make."""

    @property
    def endpoint(self) -> str: ...

    async def upstreams(self) -> list[JSON]: ...

    async def active_health(self) -> dict[str, bool] | None: ...

    async def ping(self) -> bool: ...

    async def aclose(self) -> None: ...


class Metrics:
    """The metrics of one daemon, fed by the loop (`on_event`, `on_sync`), read from its
    live view and, at scrape time, from Caddy (`readers`, one per admin endpoint)."""

    def __init__(self, view: LiveView, readers: Sequence[CaddyReader]) -> None:
        self.view = view
        self.readers = list(readers)
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
        self.endpoint = HttpEndpoint(self.routes(), setting="LABELSYNC_METRICS_LISTEN")

    def routes(self) -> dict[str, Handler]:
        """The paths this serves, for an HTTP endpoint."""
        return {"/metrics": self._metrics, "/healthz": self._healthz, "/": self._index}

    # -- fed by the loop ---------------------------------------------------------------------
    def on_event(self, event: DockerEvent) -> None:
        self.events.labels(kind=event.kind.value, action=event.verb or "-").inc()

    def on_sync(self, result: SyncResult, seconds: float, latency: float | None) -> None:
        self.applies.labels(result=SyncResult(result).value).inc()
        self.apply_seconds.observe(seconds)
        if result == SyncResult.APPLIED and latency is not None:
            self.latency_seconds.observe(max(0.0, latency))

    # -- scrape --------------------------------------------------------------------------------
    async def refresh_upstreams(self) -> None:
        """Read Caddy's per-upstream counts for the next exposition; keep the old on failure."""
        snapshot = self.view.snapshot()
        reader = self.readers[0] if self.readers else None
        if reader is None:
            return
        try:
            upstreams = await reader.upstreams()
        except CaddyError as exc:
            logger.debug(f"metrics: cannot read Caddy's upstreams: {exc}")
            upstreams = []
        caddy_health = None
        if caddy_runs_active_checks(None, snapshot):
            caddy_health = await reader.active_health()
        self.report = build_report(
            caddy_admin=reader.endpoint,
            caddy_server=snapshot.caddy_server,
            routes=None,
            upstreams=upstreams,
            caddy_health=caddy_health,
            snapshot=snapshot,
        )

    async def exposition(self) -> bytes:
        await self.refresh_upstreams()
        return generate_latest(self.registry)

    async def health(self) -> tuple[bool, JSON]:
        """/healthz: Docker and every Caddy reachable, and the last apply succeeded."""
        answers = [(reader.endpoint, await reader.ping()) for reader in self.readers]
        return healthz(self.view.snapshot(), answers)

    # -- HTTP ----------------------------------------------------------------------------------
    async def start(self, listen: str) -> None:
        """Serve /metrics and /healthz on `listen`; ConfigError when it cannot be bound."""
        await self.endpoint.start(listen)
        logger.info(f"metrics on http://{listen}/metrics, health on /healthz")

    @property
    def bound_port(self) -> int | None:
        return self.endpoint.bound_port

    async def aclose(self) -> None:
        await self.endpoint.aclose()
        for reader in self.readers:
            await reader.aclose()

    async def _metrics(self, request: Request) -> Answer:
        return Answer("200 OK", CONTENT_TYPE_LATEST, await self.exposition())

    async def _healthz(self, request: Request) -> Answer:
        healthy, body = await self.health()
        status = "200 OK" if healthy else "503 Service Unavailable"
        return Answer(status, "application/json", json.dumps(body).encode() + b"\n")

    async def _index(self, request: Request) -> Answer:
        return Answer("200 OK", TEXT, b"labelsync: /metrics, /healthz\n")


class _LiveCollector(Collector):
    """Gauges and counters read at scrape time from the daemon's snapshot."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        snapshot = self.metrics.view.snapshot()
        yield _gauge("docker_up", "1 when Docker answers.", snapshot.docker_up)
        if snapshot.engines:
            yield from _engines(snapshot)
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
        for endpoint in snapshot.endpoints:
            caddy_up.add_metric([endpoint.admin], float(endpoint.caddy_up))
            requests.add_metric([endpoint.admin], float(endpoint.admin_requests))
            sent.add_metric([endpoint.admin], float(endpoint.admin_bytes))
            writes.add_metric([endpoint.admin], float(endpoint.admin_writes))
        yield from (caddy_up, requests, sent, writes)
        yield _gauge("last_apply_ok", "1 when the last sync was applied.", snapshot.last_apply_ok)
        yield _gauge("pools", "Pools labelsync owns.", len(snapshot.pools))
        yield _gauge("members", "Members across all pools.", snapshot.members)
        channel = GaugeMetricFamily(
            "labelsync_pool_membership",
            "1 for how Caddy learns each pool's members: resolver (dynamic upstreams) or "
            "json (static mode, or a quiet pool outside the dynamic budget).",
            labels=["pool", "channel"],
        )
        for pool in snapshot.pools:
            channel.add_metric([pool.id, pool.membership.value], 1.0)
        yield channel
        yield _pool_hosts(snapshot)
        problems = GaugeMetricFamily(
            "labelsync_label_problems", "Label problems in the current input.", labels=["severity"]
        )
        for severity in Severity:
            found = [p for p in snapshot.problems if p.severity is severity]
            problems.add_metric([severity.value], float(len(found)))
        yield problems
        if snapshot.probes is not None:
            checks = CounterMetricFamily("labelsync_health_checks", "Active health checks run.")
            checks.add_metric([], float(snapshot.probes))
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
                if member.health is not HealthStatus.UNKNOWN:
                    healthy.add_metric(values, float(member.health is HealthStatus.HEALTHY))
                if member.active_requests is not None:
                    active.add_metric(values, float(member.active_requests))
                if member.failures is not None:
                    failures.add_metric(values, float(member.failures))
        yield from (healthy, active, failures)


def _engines(snapshot: Snapshot) -> Iterator[GaugeMetricFamily]:
    """Each Docker engine, when labelsync reads several: whether it answers, and the
    members of pools its containers are (an engine that is out keeps its last listing's)."""
    up = GaugeMetricFamily(
        "labelsync_docker_engine_up",
        "1 when the Docker engine answers, 0 while it is out (its last listing serves).",
        labels=["engine", "endpoint"],
    )
    members = GaugeMetricFamily(
        "labelsync_docker_engine_members",
        "Members across all pools whose container is on the Docker engine.",
        labels=["engine"],
    )
    counts = snapshot.engine_members()
    for engine in snapshot.engines:
        up.add_metric([engine.name, engine.endpoint], float(engine.up))
        members.add_metric([engine.name], float(counts.get(engine.name, 0)))
    yield from (up, members)


def _pool_hosts(snapshot: Snapshot) -> GaugeMetricFamily:
    """Which hosts each pool has. Caddy counts requests per host (its own `/metrics`:
    caddy_http_requests_total{host}, request_duration_seconds, request_errors_total),
    and Prometheus' rate() copes with the restart of Caddy's counters at every config
    load: those are not exported again here, this says how to add them up per pool."""
    hosts = GaugeMetricFamily(
        "labelsync_pool_host",
        "1 for each host of each pool: join Caddy's per-host request metrics on `host`.",
        labels=["pool", "host"],
    )
    for pool in snapshot.pools:
        for host in pool.hosts:
            hosts.add_metric([pool.id, host], 1.0)
    return hosts


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"labelsync_{name}", documentation, value=float(value))
