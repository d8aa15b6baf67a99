"""Joins reach the resolver after one listing, without waiting for the debounce
(leaves already do, from the last listing); the debounced sync still writes Caddy."""

from __future__ import annotations

import asyncio
import time

import pytest

from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import DesiredState
from labelsync.loop.reconcile import Reconciler
from labelsync.settings import Settings
from tests.support.caddy import free_port
from tests.support.memory_caddy import MemoryCaddy
from tests.test_reconcile import ListedContainers, container, running

pytestmark = pytest.mark.asyncio(loop_scope="session")


class Published:
    """A membership channel that notes what it was given, and when."""

    def __init__(self) -> None:
        self.published: list[tuple[float, DesiredState]] = []

    def publish(self, desired: DesiredState) -> None:
        self.published.append((time.monotonic(), desired))

    def channels(
        self, desired: DesiredState, now: float
    ) -> tuple[DesiredState, frozenset[str], float | None]:
        return desired, frozenset(), None

    def members(self) -> list[str]:
        return [m.container_name for p in self.published[-1][1].pools for m in p.members]


async def test_a_start_is_published_before_the_debounce_ends() -> None:
    settings = Settings(
        caddy_server="fast-joins",
        listen=f"127.0.0.1:{free_port()}",
        auto_https="off",
        upstreams="dynamic",
        debounce="2s",
        debounce_max="5s",
    )
    listing = ListedContainers()
    listing.containers.append(container("old", "joins.test", ip="127.0.0.2"))
    channel = Published()
    memory = MemoryCaddy()
    admin = memory.admin()
    loop = Reconciler(settings, listing, admin, membership=channel)
    try:
        async with running(loop):
            new = container("new", "joins.test", ip="127.0.0.3")
            listing.containers.append(new)
            started = time.monotonic()
            listing.queue.put_nowait(
                DockerEvent(EventKind.CONTAINER, "start", new.id, time.time_ns())
            )
            for _ in range(100):
                if "new" in channel.members():
                    break
                await asyncio.sleep(0.01)
            assert sorted(channel.members()) == ["new", "old"]
            assert channel.published[-1][0] - started < 1.0  # the debounce is 2 s
    finally:
        await admin.aclose()
        loop.close()
