"""The loop's decisions, against a real Caddy, with container records fed in directly.

The source is a stand-in with DockerSource's interface (snapshot, events): the loop
must not care where records come from. Caddy is the real session Caddy; each test
writes into a server of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from labelsync.caddy.admin import CaddyAdmin
from labelsync.core.model import ContainerInfo
from labelsync.core.outcomes import SyncResult
from labelsync.errors import CaddyRefused, DockerUnavailable
from labelsync.loop.reconcile import Reconciler
from labelsync.settings import Settings
from labelsync.sources.docker import DockerEvent
from tests.support.caddy import CaddyProcess, free_port
from tests.support.containers import short_uuid


class ListedContainers:
    """Container records to list, an outage switch, and an event queue."""

    endpoint = "test://listing"

    def __init__(self) -> None:
        self.containers: list[ContainerInfo] = []
        self.reachable = True
        self.queue: asyncio.Queue[DockerEvent] = asyncio.Queue()

    async def snapshot(self) -> list[ContainerInfo]:
        if not self.reachable:
            raise DockerUnavailable(f"cannot reach the Docker engine at {self.endpoint}")
        return list(self.containers)

    async def events(self) -> AsyncIterator[DockerEvent]:
        yield DockerEvent("stream-up", "", None, 0)
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        pass


def container(name: str, host: str, ip: str = "127.0.0.2", **labels: str) -> ContainerInfo:
    return ContainerInfo(
        id=f"id-{name}",
        name=name,
        created=time.time(),
        labels={"labelsync.host": host, **{f"labelsync.{k}": v for k, v in labels.items()}},
        networks={"bridge": ip},
        exposed_ports=(8080,),
    )


@pytest.fixture
def settings() -> Settings:
    return Settings(
        caddy_server=f"reconcile-{short_uuid()}",
        listen=f"127.0.0.1:{free_port()}",
        auto_https="off",
        upstreams="static",
        debounce="50ms",
        debounce_max="500ms",
    )


@pytest.fixture
def listing() -> ListedContainers:
    return ListedContainers()


@contextlib.asynccontextmanager
async def reconciler_on(
    admin_url: str, settings: Settings, listing: ListedContainers, *, timeout: float = 10.0
) -> AsyncIterator[Reconciler]:
    """A loop writing to the Caddy at `admin_url`; its client and retry timer end after."""
    admin = CaddyAdmin(admin_url, timeout=timeout)
    loop = Reconciler(settings, listing, admin)  # type: ignore[arg-type]
    try:
        yield loop
    finally:
        await admin.aclose()
        loop.close()


@pytest.fixture
async def reconciler(
    caddy: CaddyProcess, settings: Settings, listing: ListedContainers
) -> AsyncIterator[Reconciler]:
    async with reconciler_on(caddy.admin_url, settings, listing) as loop:
        yield loop
    with contextlib.suppress(AssertionError):
        caddy.admin("DELETE", f"/config/apps/http/servers/{settings.caddy_server}")


@contextlib.asynccontextmanager
async def running(loop: Reconciler) -> AsyncIterator[None]:
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.wait_for(loop.state.synced.wait(), timeout=10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def owned(caddy: CaddyProcess, settings: Settings) -> list[dict[str, Any]]:
    routes = caddy.get_config(f"apps/http/servers/{settings.caddy_server}/routes") or []
    return [r for r in routes if str(r.get("@id", "")).startswith("labelsync-")]


def dials(route: dict[str, Any]) -> list[str]:
    return [u["dial"] for u in route["handle"][0].get("upstreams", [])]


async def settle(loop: Reconciler, seconds: float = 0.8) -> None:
    """Let the debounce window pass and the sync finish."""
    await asyncio.sleep(seconds)


async def test_a_burst_of_changes_is_one_admin_write(
    caddy: CaddyProcess, settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """100 containers across pools starting together reload Caddy once, not 100 times."""
    async with running(reconciler):
        writes = reconciler.state.admin_writes
        for i in range(30):
            listing.containers.append(container(f"burst-{i}", f"burst{i % 5}.test"))
            reconciler.notify()
            await asyncio.sleep(0.005)
        await settle(reconciler)
        assert reconciler.state.admin_writes - writes == 1
        assert len(owned(caddy, settings)) == 5


async def test_an_unchanged_state_writes_nothing(
    settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """A sync with nothing new sends no admin request at all; a due check only reads."""
    listing.containers.append(container("same", "same.test"))
    assert (await reconciler.sync_once()).ok
    writes = reconciler.state.admin_writes
    requests = reconciler.caddy.requests_sent
    assert (await reconciler.sync_once()).ok
    assert reconciler.caddy.requests_sent == requests
    reconciler.verify_next()
    assert (await reconciler.sync_once()).ok
    assert reconciler.state.admin_writes == writes
    assert reconciler.caddy.requests_sent - requests == 1  # the read, nothing else


async def test_docker_outage_changes_nothing_in_caddy(
    caddy: CaddyProcess, settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """While Docker cannot be asked, no route is removed; afterwards it converges."""
    listing.containers.append(container("keep", "keep.test"))
    assert (await reconciler.sync_once()).ok
    before = owned(caddy, settings)
    listing.reachable = False
    listing.containers.clear()
    assert await reconciler.sync_once() == SyncResult.DOCKER_UNAVAILABLE
    assert owned(caddy, settings) == before
    assert not reconciler.state.docker_up
    listing.reachable = True
    assert (await reconciler.sync_once()).ok
    assert owned(caddy, settings) == []


async def test_kill_withdraws_a_member_before_the_listing_says_so(
    caddy: CaddyProcess, settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """A container leaves on `kill`, while Docker still lists it as running."""
    first = container("first", "kill.test", ip="127.0.0.2")
    second = container("second", "kill.test", ip="127.0.0.3")
    listing.containers += [first, second]
    async with running(reconciler):
        assert len(dials(owned(caddy, settings)[0])) == 2
        listing.queue.put_nowait(DockerEvent("container", "kill", second.id, time.time_ns()))
        await settle(reconciler)
        assert dials(owned(caddy, settings)[0]) == ["127.0.0.2:8080"]
        listing.queue.put_nowait(DockerEvent("container", "start", second.id, time.time_ns()))
        await settle(reconciler)
        assert len(dials(owned(caddy, settings)[0])) == 2


async def test_a_concurrent_edit_is_neither_overwritten_nor_lost(
    caddy: CaddyProcess, settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """Someone else writes between our read and our write: we re-read and keep their edit."""
    listing.containers.append(container("one", "one.test"))
    assert (await reconciler.sync_once()).ok
    user_route = {"@id": "user-route", "handle": [{"handler": "static_response", "body": "x"}]}
    real_apply = reconciler.caddy.apply
    interfered = False

    async def apply_after_someone_else(*args: Any, **kwargs: Any) -> None:
        nonlocal interfered
        if not interfered:
            interfered = True
            caddy.admin(
                "POST", f"/config/apps/http/servers/{settings.caddy_server}/routes", user_route
            )
        await real_apply(*args, **kwargs)

    reconciler.caddy.apply = apply_after_someone_else  # type: ignore[method-assign]
    listing.containers.append(container("two", "two.test"))
    assert (await reconciler.sync_once()).ok
    routes = caddy.get_config(f"apps/http/servers/{settings.caddy_server}/routes")
    assert interfered
    assert [r.get("@id") for r in routes][-1] == "user-route"
    assert len(owned(caddy, settings)) == 2


async def test_drift_in_caddy_is_restored(
    caddy: CaddyProcess, settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """An owned route deleted behind our back comes back at the next check (resync)."""
    listing.containers.append(container("drift", "drift.test"))
    assert (await reconciler.sync_once()).ok
    route_id = owned(caddy, settings)[0]["@id"]
    caddy.admin("DELETE", f"/id/{route_id}")
    reconciler.verify_next()
    assert (await reconciler.sync_once()).ok
    assert [r["@id"] for r in owned(caddy, settings)] == [route_id]


async def test_drift_is_also_caught_before_any_write(
    caddy: CaddyProcess, settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """A write always starts from a fresh read, so it restores drift on the way."""
    listing.containers.append(container("a", "a.test"))
    assert (await reconciler.sync_once()).ok
    route_id = owned(caddy, settings)[0]["@id"]
    caddy.admin("DELETE", f"/id/{route_id}")
    listing.containers.append(container("b", "b.test"))
    assert (await reconciler.sync_once()).ok
    assert route_id in [r["@id"] for r in owned(caddy, settings)]
    assert len(owned(caddy, settings)) == 2


async def test_a_restarted_caddy_gets_the_server_and_routes_back(
    caddy_factory: Any, settings: Settings, listing: ListedContainers
) -> None:
    """Caddy restarted with its base config (no labelsync server): everything returns."""
    private = caddy_factory()
    server = f"apps/http/servers/{settings.caddy_server}"
    listing.containers.append(container("back", "back.test"))
    async with reconciler_on(private.admin_url, settings, listing) as loop:
        assert (await loop.sync_once()).ok
        private.reset()  # as if Caddy restarted from its own config file
        assert private.get_config(server) is None
        loop.verify_next()  # what a restart of the bundled Caddy, or the resync, triggers
        assert (await loop.sync_once()).ok
        routes = private.get_config(f"{server}/routes")
        assert [r["match"][0]["host"] for r in routes] == [["back.test"]]


async def test_caddy_down_is_retried_and_nothing_is_lost(
    caddy_factory: Any, settings: Settings, listing: ListedContainers
) -> None:
    """Caddy unreachable: the sync fails cleanly and is retried with backoff."""
    private = caddy_factory()
    listing.containers.append(container("wait", "wait.test"))
    async with reconciler_on(private.admin_url, settings, listing, timeout=2.0) as loop:
        private.stop()
        assert await loop.sync_once() == SyncResult.CADDY_FAILED
        assert not loop.state.caddy_up
        assert loop.state.last_error
        assert loop.retry_pending


async def test_a_refused_config_is_not_retried_until_the_routes_change(
    settings: Settings, listing: ListedContainers, reconciler: Reconciler
) -> None:
    """Caddy refusing a config is permanent for that content: no backoff retries of it,
    one ERROR; a change of the routes, or the periodic check, sends again."""
    listing.containers.append(container("ok", "ok.test"))
    assert await reconciler.sync_once() == SyncResult.APPLIED
    real_apply = reconciler.caddy.apply
    refusing = True
    attempts = 0

    async def refuse(*args: Any, **kwargs: Any) -> None:
        nonlocal attempts
        attempts += 1
        if refusing:
            raise CaddyRefused("Caddy answered 500 to PATCH ...: bad", status=500)
        await real_apply(*args, **kwargs)

    reconciler.caddy.apply = refuse  # type: ignore[method-assign]
    listing.containers.append(container("bad", "bad.test"))
    assert await reconciler.sync_once() == SyncResult.CADDY_REFUSED
    assert not reconciler.retry_pending
    assert await reconciler.sync_once() == SyncResult.CADDY_REFUSED
    assert attempts == 1  # the same routes are not sent again
    assert reconciler.state.caddy_up and not reconciler.state.last_apply_ok
    reconciler.verify_next()  # the resync
    assert await reconciler.sync_once() == SyncResult.CADDY_REFUSED
    assert attempts == 2
    refusing = False
    listing.containers.append(container("more", "more.test"))
    assert await reconciler.sync_once() == SyncResult.APPLIED
    assert attempts == 3 and reconciler.state.last_apply_ok
