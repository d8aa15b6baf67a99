"""Synthetic containers and a source that serves them like `DockerSource` does.

The records are what the Docker edge would produce for containers on a network whose
addresses are loopback IPs, so the same core, resolver and Caddy client run on them and
Caddy really proxies to them (see `backends.py`).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable, Sequence

from labelsync.core.events import STREAM_UP, DockerEvent
from labelsync.core.model import ContainerInfo

from .rig import PREFIX

NETWORK = "bench"
CREATED_BASE = 1_700_000_000.0


def container_id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def pool_host(pool: int) -> str:
    return f"pool{pool}.bench.test"


def synthetic_container(
    name: str,
    host: str,
    ip: str,
    port: int,
    *,
    order: int | None = None,
    created: float = CREATED_BASE,
    extra: dict[str, str] | None = None,
) -> ContainerInfo:
    """One running container serving `host` at `ip:port`."""
    labels = {f"{PREFIX}.host": host, f"{PREFIX}.lb.policy": "first"}
    if order is not None:
        labels[f"{PREFIX}.order"] = str(order)
    labels.update({f"{PREFIX}.{k}": v for k, v in (extra or {}).items()})
    return ContainerInfo(
        id=container_id(name),
        name=name,
        created=created,
        labels=labels,
        networks={NETWORK: ip},
        exposed_ports=(port,),
    )


def pools_of(
    pools: int, members: int, ips: Sequence[str], port: int, *, first_pool: int = 0
) -> list[ContainerInfo]:
    """`members` containers for each of `pools` pools; member m of every pool listens on
    `ips[m % len(ips)]`, with `first` order 10, 20, ... so a member with order 0 would be
    preferred."""
    return [
        synthetic_container(
            f"p{pool}-m{member}",
            pool_host(pool),
            ips[member % len(ips)],
            port,
            order=10 * (member + 1),
            created=CREATED_BASE + pool * 100 + member,
        )
        for pool in range(first_pool, first_pool + pools)
        for member in range(members)
    ]


class SyntheticSource:
    """`snapshot()` and `events()` over a list the benchmark edits in place."""

    endpoint = "synthetic"

    def __init__(self, containers: Iterable[ContainerInfo] = ()) -> None:
        self.containers: list[ContainerInfo] = list(containers)
        self._queue: asyncio.Queue[DockerEvent] = asyncio.Queue()

    async def snapshot(self) -> list[ContainerInfo]:
        return list(self.containers)

    async def events(self) -> AsyncIterator[DockerEvent]:
        yield STREAM_UP
        while True:
            yield await self._queue.get()

    def emit(self, event: DockerEvent) -> None:
        self._queue.put_nowait(event)

    def close(self) -> None:
        pass
