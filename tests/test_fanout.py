"""One source for several reconcilers: one event stream, one listing per sync, one watch."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest

from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import ContainerInfo, Problem
from labelsync.errors import DockerUnavailable
from labelsync.loop.fanout import SharedSource, SharedStatic
from labelsync.loop.reconcile import Reconciler
from labelsync.settings import Settings
from tests.support.memory_caddy import MemoryCaddy

T = TypeVar("T")


def closable(stream: AsyncIterator[T]) -> AsyncGenerator[T, None]:
    """A subscription as what it is, an async generator: closing it unsubscribes."""
    assert isinstance(stream, AsyncGenerator)
    return stream


class CountingSource:
    """Records and events, counting listings and opened event streams."""

    endpoint = "test://counting"

    def __init__(self) -> None:
        self.containers: list[ContainerInfo] = []
        self.reachable = True
        self.listings = 0
        self.streams_opened = 0
        self.streams_open = 0
        self.queue: asyncio.Queue[DockerEvent] = asyncio.Queue()
        self.list_delay = 0.0

    async def snapshot(self) -> list[ContainerInfo]:
        self.listings += 1
        await asyncio.sleep(self.list_delay)
        if not self.reachable:
            raise DockerUnavailable("cannot reach the Docker engine at test://counting")
        return list(self.containers)

    async def events(self) -> AsyncIterator[DockerEvent]:
        self.streams_opened += 1
        self.streams_open += 1
        try:
            yield DockerEvent(EventKind.STREAM_UP, "", None, 0)
            while True:
                yield await self.queue.get()
        finally:
            self.streams_open -= 1

    def close(self) -> None:
        pass


def container(name: str, host: str) -> ContainerInfo:
    return ContainerInfo(
        id=f"id-{name}",
        name=name,
        created=time.time(),
        labels={"labelsync.host": host},
        networks={"bridge": "127.0.0.2"},
        exposed_ports=(8080,),
    )


def event(action: str, container_id: str) -> DockerEvent:
    return DockerEvent(EventKind.CONTAINER, action, container_id, time.time_ns())


@pytest.fixture
def settings() -> Settings:
    return Settings(
        caddy_server="fanout",
        listen="127.0.0.1:1",
        auto_https="off",
        upstreams="static",
        debounce="20ms",
        debounce_max="200ms",
    )


async def test_concurrent_snapshots_share_one_listing() -> None:
    inner = CountingSource()
    inner.list_delay = 0.05
    inner.containers.append(container("a", "a.test"))
    shared = SharedSource(inner)
    first, second, third = await asyncio.gather(*(shared.snapshot() for _ in range(3)))
    assert inner.listings == 1
    assert first == second == third == inner.containers
    assert await shared.snapshot() == inner.containers  # fresh enough, no event since
    assert inner.listings == 1


async def test_an_event_makes_the_next_snapshot_list_again() -> None:
    inner = CountingSource()
    shared = SharedSource(inner)
    stream = closable(shared.events())
    assert (await anext(stream)).kind == "stream-up"
    await shared.snapshot()
    inner.containers.append(container("b", "b.test"))
    inner.queue.put_nowait(event("start", "id-b"))
    await anext(stream)
    assert [c.name for c in await shared.snapshot()] == ["b"]
    assert inner.listings == 2
    await stream.aclose()


async def test_an_old_listing_is_not_reused_even_without_events() -> None:
    inner = CountingSource()
    shared = SharedSource(inner, shared_for=0.0)
    await shared.snapshot()
    await shared.snapshot()
    assert inner.listings == 2


async def test_a_failed_listing_fails_every_caller_and_is_not_kept() -> None:
    inner = CountingSource()
    inner.reachable = False
    inner.list_delay = 0.02
    shared = SharedSource(inner)
    results = await asyncio.gather(shared.snapshot(), shared.snapshot(), return_exceptions=True)
    assert all(isinstance(r, DockerUnavailable) for r in results)
    assert inner.listings == 1
    inner.reachable = True
    assert await shared.snapshot() == []
    assert inner.listings == 2


async def test_a_cancelled_caller_does_not_cancel_the_listing_for_others() -> None:
    inner = CountingSource()
    inner.list_delay = 0.05
    shared = SharedSource(inner)
    impatient = asyncio.create_task(shared.snapshot())
    patient = asyncio.create_task(shared.snapshot())
    await asyncio.sleep(0.01)
    impatient.cancel()
    assert await patient == []
    assert inner.listings == 1


async def test_one_event_stream_reaches_every_subscriber_and_closes_with_the_last() -> None:
    inner = CountingSource()
    shared = SharedSource(inner)
    first, second = closable(shared.events()), closable(shared.events())
    assert (await anext(first)).kind == "stream-up"
    assert (await anext(second)).kind == "stream-up"  # replayed: it came before
    inner.queue.put_nowait(event("die", "id-x"))
    assert (await anext(first)).action == "die"
    assert (await anext(second)).action == "die"
    assert inner.streams_opened == 1
    await first.aclose()
    assert inner.streams_open == 1
    await second.aclose()
    assert inner.streams_open == 0


async def test_reconcilers_of_two_caddies_share_the_stream_and_the_listing(
    settings: Settings,
) -> None:
    """The daemon's shape: one reconciler per Caddy, one source between them."""
    inner = CountingSource()
    inner.containers.append(container("one", "one.test"))
    shared = SharedSource(inner)
    caddies = [MemoryCaddy(), MemoryCaddy()]
    loops = [Reconciler(settings, shared, caddy.admin()) for caddy in caddies]
    tasks = [asyncio.create_task(loop.run()) for loop in loops]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(loop.state.synced.wait() for loop in loops)), timeout=5
        )
        listings = inner.listings
        inner.containers.append(container("two", "two.test"))
        inner.queue.put_nowait(event("start", "id-two"))
        await asyncio.sleep(0.3)
        assert inner.listings - listings == 1
        assert inner.streams_opened == 1
        for caddy in caddies:
            hosts = [r["match"][0]["host"] for r in caddy.routes("fanout")]
            assert sorted(hosts) == [["one.test"], ["two.test"]]
            assert caddy.writes == 3  # the server, the first route, the second
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert inner.streams_open == 0
    assert all(loop.state.docker_up for loop in loops)
    assert all(loop.state.last_apply_ok for loop in loops)


class Watched:
    """A static file stand-in whose changes a test triggers."""

    path = Path("/nowhere/routes.toml")
    containers: tuple[ContainerInfo, ...] = ()
    problems: tuple[Problem, ...] = ()

    def __init__(self) -> None:
        self.watches = 0
        self.queue: asyncio.Queue[None] = asyncio.Queue()

    def reload(self) -> bool:
        return False

    def merge_problems(self, problems: tuple[Problem, ...]) -> tuple[Problem, ...]:
        return problems

    async def changes(self) -> AsyncIterator[None]:
        self.watches += 1
        while True:
            await self.queue.get()
            yield


async def test_the_static_file_is_watched_once_and_each_change_reaches_everyone() -> None:
    watched = Watched()
    static = SharedStatic(watched)
    first, second = closable(static.changes()), closable(static.changes())
    pending = [asyncio.ensure_future(anext(first)), asyncio.ensure_future(anext(second))]
    await asyncio.sleep(0)
    watched.queue.put_nowait(None)
    await asyncio.wait_for(asyncio.gather(*pending), timeout=2)
    assert watched.watches == 1
    with contextlib.suppress(StopAsyncIteration):
        await first.aclose()
        await second.aclose()
