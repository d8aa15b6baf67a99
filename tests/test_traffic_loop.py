"""Reading Caddy's request counters in the loop (loop/traffic.py), on the in-memory Caddy:
every write labelsync makes restarts Caddy's counters, so the writer reads them first;
per-host metrics are written into a Caddy only when the setting says so."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest

from labelsync.app.daemon import CaddyEndpoints, _traffic
from labelsync.core.caddy_metrics import MetricsState
from labelsync.core.model import ContainerInfo
from labelsync.core.traffic import TrafficBook
from labelsync.loop.reconcile import Reconciler
from labelsync.loop.traffic import TrafficSampler
from labelsync.loop.writer import RouteWriter
from labelsync.settings import Settings
from tests.support.memory_caddy import MemoryCaddy
from tests.test_reconcile import ListedContainers

SERVER = "labelsync"


def container(name: str, host: str, ip: str) -> ContainerInfo:
    return ContainerInfo(
        id=f"id-{name}",
        name=name,
        created=time.time(),
        labels={"labelsync.host": host},
        networks={"bridge": ip},
        exposed_ports=(8080,),
    )


def counted(book: TrafficBook, host: str) -> tuple[int, int]:
    total = book.host(host).total
    return total.requests, total.failed


async def folded() -> None:
    """Let the sampler fold what it read (it parses once the write is on its way)."""
    await asyncio.sleep(0)


@pytest.fixture
def settings() -> Settings:
    return Settings(caddy_server=SERVER, listen="127.0.0.1:8080", auto_https="off")


@pytest.fixture
def memory() -> MemoryCaddy:
    return MemoryCaddy({"apps": {"http": {"metrics": {"per_host": True}}}})


@pytest.fixture
async def sampler(memory: MemoryCaddy) -> AsyncIterator[TrafficSampler]:
    reader = memory.admin()
    try:
        yield TrafficSampler(reader, TrafficBook(), server=SERVER)
    finally:
        await reader.aclose()


async def test_the_counts_before_a_labelsync_write_survive_it(
    settings: Settings, memory: MemoryCaddy, sampler: TrafficSampler
) -> None:
    """Seed of issue 18: Caddy restarts its counters at every write; requests served just
    before a pool appears are still counted, as are those after."""
    listing = ListedContainers()
    listing.containers = [container("web-1", "app.test", "10.0.0.2")]
    loop = Reconciler(settings, listing, memory.admin(), before_write=sampler.before_write)
    try:
        await loop.sync_once()
        await sampler.sample()  # the baseline, and the state: on
        assert sampler.state is MetricsState.ON
        for status in (200, 200, 200, 500, 502):
            memory.serve("app.test", status)
        writes = memory.writes
        listing.containers.append(container("api-1", "api.test", "10.0.0.3"))
        await loop.sync_once()  # a new pool: one write, the counters start again
        assert memory.writes == writes + 1 and memory.served == []
        memory.serve("app.test")
        memory.serve("api.test", 503)
        await sampler.sample()
        assert counted(sampler.book, "app.test") == (6, 2)
        assert counted(sampler.book, "api.test") == (1, 1)
    finally:
        loop.close()


async def test_without_the_read_before_the_write_those_counts_would_be_lost(
    settings: Settings, memory: MemoryCaddy, sampler: TrafficSampler
) -> None:
    """The same as above with no hook: what makes the hook necessary."""
    listing = ListedContainers()
    listing.containers = [container("web-1", "app.test", "10.0.0.2")]
    loop = Reconciler(settings, listing, memory.admin())
    try:
        await loop.sync_once()
        await sampler.sample()
        for _ in range(5):
            memory.serve("app.test")
        listing.containers.append(container("api-1", "api.test", "10.0.0.3"))
        await loop.sync_once()
        memory.serve("app.test")
        await sampler.sample()
        assert counted(sampler.book, "app.test") == (1, 0)
    finally:
        loop.close()


async def test_the_hook_runs_before_every_kind_of_write(
    settings: Settings, memory: MemoryCaddy
) -> None:
    """Creating the server, writing routes, refreshing the fallback lists on the way out."""
    memory.config = None  # a Caddy with no server yet
    calls: list[int] = []

    async def hook() -> None:
        calls.append(memory.writes)

    listing = ListedContainers()
    listing.containers = [container("web-1", "app.test", "10.0.0.2")]
    loop = Reconciler(
        settings.model_copy(update={"upstreams": "dynamic"}),
        listing,
        memory.admin(),
        before_write=hook,
    )
    try:
        await loop.sync_once()
        assert memory.writes == 2  # the server, then the route
        assert calls == [0, 1]
        listing.containers.append(container("web-2", "app.test", "10.0.0.3"))
        await loop.sync_once()  # a member in dynamic mode: no write, no read
        assert calls == [0, 1]
    finally:
        loop.close()
    dynamic = {"handler": "reverse_proxy", "dynamic_upstreams": {"source": "srv", "name": "x."}}
    stale = {"@id": "labelsync-x", "handle": [{**dynamic, "upstreams": [{"dial": "10.0.0.9:80"}]}]}
    memory.config["apps"]["http"]["servers"][SERVER]["routes"] = [stale]
    fresh = {**stale, "handle": [{**dynamic, "upstreams": [{"dial": "10.0.0.2:8080"}]}]}
    admin = memory.admin()
    writer = RouteWriter(
        settings, admin, notify=lambda: None, on_write=lambda: None, before_write=hook
    )
    assert await writer.refresh_fallbacks([fresh]) == 1
    assert calls == [0, 1, 2]
    await admin.aclose()


async def test_labelsync_turns_metrics_on_only_when_told_and_keeps_what_is_there(
    memory: MemoryCaddy,
) -> None:
    memory.config = {"apps": {"http": {"metrics": {}, "servers": {}}}}
    book = TrafficBook()
    reader = memory.admin()
    try:
        told = TrafficSampler(reader, book, server=SERVER, turn_on=False)
        await told.sample()
        assert told.state is MetricsState.NOT_PER_HOST and memory.writes == 0
        assert "LABELSYNC_CADDY_METRICS=on" in (book.counting[reader.endpoint].fix or "")
        ready = False
        turning = TrafficSampler(reader, book, server=SERVER, turn_on=True, ready=lambda: ready)
        await turning.sample()  # not before the first sync
        assert memory.writes == 0
        ready = True
        await turning.sample()
        assert memory.get("apps/http/metrics") == {"per_host": True}
        assert memory.writes == 1 and turning.state is MetricsState.ON
        assert book.counting[reader.endpoint].fix is None
        await turning.sample()
        assert memory.writes == 1  # once
        memory.config = {"apps": {"http": {}}}  # a Caddy that came back without them
        await turning.sample()
        assert memory.get("apps/http/metrics") == {"per_host": True}
    finally:
        await reader.aclose()


async def test_a_caddy_that_does_not_answer_is_unknown_and_counts_resume(
    memory: MemoryCaddy, sampler: TrafficSampler
) -> None:
    memory.config["apps"]["http"]["servers"] = {
        SERVER: {"routes": [{"match": [{"host": ["app.test"]}]}]}
    }
    await sampler.sample()
    memory.serve("app.test")
    memory.down()
    await sampler.sample()
    await sampler.before_write()  # ON no more: no read
    assert sampler.state is MetricsState.UNKNOWN
    memory.is_down = False
    memory.serve("app.test")
    await sampler.sample()
    await folded()
    assert counted(sampler.book, "app.test") == (2, 0)


def test_the_setting_decides_which_caddy_is_read_and_which_is_turned_on() -> None:
    """LABELSYNC_CADDY_METRICS: `auto` (the default) turns metrics on nowhere (opt-in:
    they cost the bundled Caddy more than 5 %) and reads every Caddy; `on` turns them on
    everywhere; `off` reads none, and says so."""
    bundled = SimpleNamespace(admin_endpoint="unix:///run/labelsync/admin.sock")
    caddies = CaddyEndpoints([bundled.admin_endpoint, "http://localhost:2019"], bundled)  # type: ignore[arg-type]

    def turned_on(setting: str) -> dict[str, bool]:
        _, samplers = _traffic(Settings(caddy_metrics=setting), caddies)  # type: ignore[arg-type]
        return {endpoint: sampler.turn_on for endpoint, sampler in samplers.items()}

    assert turned_on("auto") == {bundled.admin_endpoint: False, "http://localhost:2019": False}
    assert turned_on("on") == {bundled.admin_endpoint: True, "http://localhost:2019": True}
    book, samplers = _traffic(Settings(caddy_metrics="off"), caddies)
    assert samplers == {}
    assert {c.state for c in book.counting.values()} == {MetricsState.NOT_READ}
