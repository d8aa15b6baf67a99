"""The Prometheus endpoint: families, a registry per daemon, `/healthz`, and the small HTTP
server on the daemon's loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from labelsync.caddy.admin import CaddyAdmin
from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import ContainerInfo
from labelsync.core.names import parse_listen
from labelsync.core.outcomes import SyncResult
from labelsync.core.pools import build_desired
from labelsync.errors import ConfigError
from labelsync.loop.reconcile import SyncState
from labelsync.report.metrics import Metrics
from labelsync.report.snapshot import LiveView
from labelsync.settings import Settings
from tests.support.caddy import CaddyProcess, free_port
from tests.support.snapshots import FakeLoop

Families = dict[str, Any]


def fake_reconciler(endpoint: str, *, docker_up: bool = True, applied: bool = True) -> FakeLoop:
    """What the report layer reads of a Reconciler: `state` and `caddy` (endpoint, counters)."""
    web = ContainerInfo(
        id="1" * 64,
        name="web-1",
        created=1.0,
        labels={"labelsync.host": "app.test", "labelsync.lb.policy": "rond_robin"},
        networks={"bridge": "10.0.0.5"},
        exposed_ports=(8080,),
    )
    api = ContainerInfo(
        id="2" * 64,
        name="api-1",
        created=2.0,
        labels={"labelsync.host": "api.test", "labelsync.health.path": "/health"},
        networks={"bridge": "10.0.0.6"},
        exposed_ports=(8080,),
    )
    state = SyncState(docker_up=docker_up, caddy_up=True, last_apply_ok=applied, admin_writes=3)
    state.containers = (web, api)
    state.desired = build_desired(state.containers)
    if applied:
        state.synced.set()
    caddy = SimpleNamespace(endpoint=endpoint, requests_sent=7, bytes_sent=1234)
    return FakeLoop(state, caddy)


class Probes:
    """The health source of a dynamic-mode daemon, as far as metrics read it."""

    def __init__(self) -> None:
        self.probes = 42
        self.on_health_change: list[Any] = []

    def states(self) -> dict[tuple[str, str], Any]:
        return {}


def metrics_for(loops: list[FakeLoop]) -> Metrics:
    view = LiveView(loops, settings=Settings(), health=Probes())
    readers = [CaddyAdmin(loop.caddy.endpoint, timeout=2.0) for loop in loops]
    return Metrics(view, readers)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Metrics], str]]:
    """Start a Metrics' endpoint on a free port; its base URL. Closed after the test."""
    started: list[Metrics] = []

    def start(metrics: Metrics) -> str:
        started.append(metrics)
        return f"http://127.0.0.1:{metrics.bound_port}"

    yield start
    for metrics in started:
        await metrics.aclose()


async def scrape(base: str) -> Families:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        response = await client.get(f"{base}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(response.text)}


def value(families: Families, name: str, suffix: str = "", **labels: str) -> float:
    """The sample `name + suffix` (`_total`, `_count`) of family `name` with `labels`."""
    for sample in families[name].samples:
        if sample.name != name + suffix:
            continue
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    raise AssertionError(f"no sample {name}{suffix} {labels}")


async def test_families_from_the_loop_and_from_caddy(
    serve: Callable[[Metrics], str], caddy: CaddyProcess
) -> None:
    reconciler = fake_reconciler(caddy.admin_url)
    metrics = metrics_for([reconciler])
    await metrics.start("127.0.0.1:0")
    base = serve(metrics)

    async def upstreams() -> list[dict[str, Any]]:
        return [{"address": "10-0-0-6.ip4.labelsync.internal.:8080", "num_requests": 2, "fails": 3}]

    metrics.readers[0].upstreams = upstreams  # type: ignore[method-assign]
    metrics.on_event(DockerEvent(EventKind.CONTAINER, "health_status: healthy", "1" * 64, 1))
    metrics.on_event(DockerEvent(EventKind.CONTAINER, "start", "1" * 64, 1))
    metrics.on_sync(SyncResult.APPLIED, 0.02, 0.08)
    metrics.on_sync(SyncResult.UNCHANGED, 0.01, None)
    metrics.on_sync(SyncResult.DOCKER_UNAVAILABLE, 0.001, None)
    found = await scrape(base)

    assert (
        value(found, "labelsync_docker_events", "_total", kind="container", action="health_status")
        == 1
    )
    assert value(found, "labelsync_applies", "_total", result="applied") == 1
    assert value(found, "labelsync_applies", "_total", result="docker_unavailable") == 1
    assert value(found, "labelsync_apply_duration_seconds", "_count") == 3
    assert value(found, "labelsync_event_to_applied_seconds", "_count") == 1  # applied ones only
    endpoint = caddy.admin_url
    assert value(found, "labelsync_caddy_admin_requests", "_total", endpoint=endpoint) == 7
    assert value(found, "labelsync_caddy_admin_request_bytes", "_total", endpoint=endpoint) == 1234
    assert value(found, "labelsync_caddy_admin_writes", "_total", endpoint=endpoint) == 3
    assert value(found, "labelsync_caddy_up", endpoint=endpoint) == 1
    assert value(found, "labelsync_docker_up") == 1
    assert value(found, "labelsync_last_apply_ok") == 1
    assert value(found, "labelsync_pools") == 1  # web-1's only route was dropped
    assert value(found, "labelsync_members") == 1
    assert value(found, "labelsync_label_problems", severity="error") == 1
    assert value(found, "labelsync_health_checks", "_total") == 42
    member = {"address": "10.0.0.6:8080", "container": "api-1"}
    assert value(found, "labelsync_upstream_active_requests", **member) == 2
    assert value(found, "labelsync_upstream_failures", **member) == 3
    # Caddy's passive count reached max_fails (3, the default with health.path set).
    assert value(found, "labelsync_upstream_healthy", **member) == 0


async def test_each_daemon_has_its_own_registry(
    serve: Callable[[Metrics], str], caddy: CaddyProcess
) -> None:
    first = metrics_for([fake_reconciler(caddy.admin_url)])
    second = metrics_for([fake_reconciler(caddy.admin_url)])
    await first.start("127.0.0.1:0")
    await second.start("127.0.0.1:0")
    first.on_sync(SyncResult.APPLIED, 0.01, 0.05)
    first_found = await scrape(serve(first))
    second_found = await scrape(serve(second))
    assert value(first_found, "labelsync_applies", "_total", result="applied") == 1
    assert second_found["labelsync_applies"].samples == []


async def test_healthz_follows_docker_caddy_and_the_last_apply(
    serve: Callable[[Metrics], str], caddy: CaddyProcess
) -> None:
    healthy = metrics_for([fake_reconciler(caddy.admin_url)])
    no_docker = metrics_for([fake_reconciler(caddy.admin_url, docker_up=False)])
    not_applied = metrics_for([fake_reconciler(caddy.admin_url, applied=False)])
    no_caddy = metrics_for([fake_reconciler(f"http://127.0.0.1:{free_port()}")])
    answers = {}
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        for name, metrics in [
            ("healthy", healthy),
            ("no_docker", no_docker),
            ("not_applied", not_applied),
            ("no_caddy", no_caddy),
        ]:
            await metrics.start("127.0.0.1:0")
            answers[name] = await client.get(f"{serve(metrics)}/healthz")
    assert answers["healthy"].status_code == 200
    assert answers["healthy"].json()["status"] == "ok"
    for name, reason in [
        ("no_docker", "Docker is unreachable"),
        ("not_applied", "no successful sync yet"),
        ("no_caddy", "does not answer"),
    ]:
        response = answers[name]
        assert response.status_code == 503, name
        assert response.headers["content-type"] == "application/json"
        assert any(reason in r for r in response.json()["reasons"]), response.json()


async def test_other_paths_methods_and_garbage(
    serve: Callable[[Metrics], str], caddy: CaddyProcess
) -> None:
    metrics = metrics_for([fake_reconciler(caddy.admin_url)])
    await metrics.start("127.0.0.1:0")
    base = serve(metrics)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        assert (await client.get(f"{base}/nope")).status_code == 404
        assert (await client.post(f"{base}/metrics")).status_code == 405
        head = await client.head(f"{base}/healthz")
        assert head.status_code == 200 and head.content == b""
    reader, writer = await asyncio.open_connection("127.0.0.1", metrics.bound_port)
    writer.write(b"\x16\x03\x01 not http")
    writer.write_eof()
    try:
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""  # closed, no answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_busy_listen_address_is_a_config_error(caddy: CaddyProcess) -> None:
    metrics = metrics_for([fake_reconciler(caddy.admin_url)])
    with pytest.raises(ConfigError, match="LABELSYNC_METRICS_LISTEN"):
        await metrics.start(f"127.0.0.1:{caddy.admin_port}")
    await metrics.aclose()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", (None, 9464)),
        ("[::1]:9464", ("::1", 9464)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str | None, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize("listen", ["9464", "host:", "host:99999", "host:http"])
def test_parse_listen_rejects(listen: str) -> None:
    with pytest.raises(ValueError):
        parse_listen(listen)
