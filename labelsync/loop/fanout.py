"""One source feeding the reconcilers of several Caddy endpoints.

With N endpoints the daemon runs N reconcilers; without sharing, each would open its
own Docker event stream and list the engine on its own. Here one event stream is read
and every event handed to each reconciler, and syncs that the same events started
(they run within the same debounce window) share one listing:

    source = SharedSource(DockerSource(...))
    static = SharedStatic(StaticFile(...))
    reconcilers = [Reconciler(settings, source, admin, static=static) for admin in admins]

A listing is shared when it was started after the latest event and is younger than
`SHARED_FOR`; an event always makes the next request list again. The static file is
watched once and each change is handed to every reconciler.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from labelsync.core.events import DockerEvent
from labelsync.core.model import ContainerInfo, Problem
from labelsync.loop.ports import ContainerSource, StaticRoutes

# How long a finished listing serves further requests while no event arrives: longer
# than it takes reconcilers started by one event to ask, shorter than any resync.
SHARED_FOR = 1.0

T = TypeVar("T")


class Broadcast(Generic[T]):
    """One async iterator read once, each item handed to every current subscriber.

    The iterator is opened with the first subscriber and closed with the last. `replay`
    picks items a late subscriber gets first (the latest one it accepts).
    """

    def __init__(
        self, open_stream: Callable[[], AsyncIterator[T]], *, replay: Callable[[T], bool]
    ) -> None:
        self._open = open_stream
        self._replay = replay
        self._queues: list[asyncio.Queue[T]] = []
        self._pump: asyncio.Task[None] | None = None
        self._latest: T | None = None

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    async def subscribe(self) -> AsyncIterator[T]:
        queue: asyncio.Queue[T] = asyncio.Queue()
        if self._latest is not None:
            queue.put_nowait(self._latest)
        self._queues.append(queue)
        if self._pump is None:
            self._pump = asyncio.create_task(self._read(), name="broadcast")
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.remove(queue)
            if not self._queues:
                await self.aclose()

    async def _read(self) -> None:
        async for item in self._open():
            if self._replay(item):
                self._latest = item
            for queue in self._queues:
                queue.put_nowait(item)

    async def aclose(self) -> None:
        """Stop reading (subscribers wait for items that no longer come)."""
        pump, self._pump = self._pump, None
        self._latest = None
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump


class _Listing(NamedTuple):
    """A finished listing, and the event count and time it was started at."""

    generation: int  # events read before it started: an event since makes it stale
    started: float  # monotonic seconds
    containers: Sequence[ContainerInfo]


class SharedSource:
    """A `ContainerSource` for several reconcilers: one event stream, shared listings."""

    def __init__(self, source: ContainerSource, *, shared_for: float = SHARED_FOR) -> None:
        self.source = source
        self.shared_for = shared_for
        self.listings = 0  # snapshots actually taken from the source
        self._events = Broadcast(self._counted_events, replay=_is_stream_state)
        self._generation = 0  # events read so far
        self._pending: asyncio.Task[Sequence[ContainerInfo]] | None = None
        self._pending_generation = -1
        self._last: _Listing | None = None

    @property
    def endpoint(self) -> str:
        return self.source.endpoint

    async def snapshot(self) -> Sequence[ContainerInfo]:
        """The source's listing, shared with other requests made since the same event.

        The listing runs as a task of its own, so a caller cancelled meanwhile cancels
        only its own wait; a failure (`DockerUnavailable`) reaches every caller.
        """
        generation = self._generation
        last = self._last
        now = time.monotonic()
        if (
            last is not None
            and last.generation == generation
            and now - last.started < self.shared_for
        ):
            return last.containers
        if self._pending is None or self._pending_generation != generation:
            self._pending = asyncio.create_task(self._list(generation), name="shared-listing")
            self._pending_generation = generation
            self._pending.add_done_callback(self._listed)
        return await asyncio.shield(self._pending)

    async def _list(self, generation: int) -> Sequence[ContainerInfo]:
        started = time.monotonic()
        self.listings += 1
        containers = await self.source.snapshot()
        self._last = _Listing(generation, started, containers)
        return containers

    def _listed(self, task: asyncio.Task[Sequence[ContainerInfo]]) -> None:
        if self._pending is task:
            self._pending = None
        if not task.cancelled():
            task.exception()  # retrieved: its callers have it raised, if any still wait

    async def _counted_events(self) -> AsyncIterator[DockerEvent]:
        async for event in self.source.events():
            self._generation += 1
            yield event

    def events(self) -> AsyncIterator[DockerEvent]:
        """Every event of the one stream; a late subscriber first gets the stream's state."""
        return self._events.subscribe()

    def close(self) -> None:
        self.source.close()


def _is_stream_state(event: DockerEvent) -> bool:
    return event.kind.is_stream


class SharedStatic:
    """`StaticRoutes` for several reconcilers: one watch of the file, each change to all."""

    def __init__(self, static: StaticRoutes) -> None:
        self.static = static
        self._changes = Broadcast(static.changes, replay=lambda _: False)

    @property
    def path(self) -> Path:
        return self.static.path

    @property
    def containers(self) -> tuple[ContainerInfo, ...]:
        return self.static.containers

    @property
    def problems(self) -> tuple[Problem, ...]:
        return self.static.problems

    def reload(self) -> bool:
        return self.static.reload()

    def merge_problems(self, problems: tuple[Problem, ...]) -> tuple[Problem, ...]:
        return self.static.merge_problems(problems)

    def changes(self) -> AsyncIterator[None]:
        return self._changes.subscribe()
