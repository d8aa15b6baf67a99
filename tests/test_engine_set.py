"""sources/engines.py: several engines as one source, each engine a stand-in `DockerSource`
(the real engines run in tests/e2e/test_several_engines.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from labelsync.core.engines import Reach, parse_engines
from labelsync.core.events import STREAM_DOWN, STREAM_UP, DockerEvent, EventKind
from labelsync.core.model import ContainerInfo
from labelsync.errors import DockerUnavailable
from labelsync.sources import engines as engines_module
from labelsync.sources.docker import container_from_summary
from labelsync.sources.engines import EngineSet

SOURCES: dict[str, FakeSource] = {}


class FakeSource:
    """One engine: its containers, whether it answers, and events to hand out."""

    def __init__(self, url: str | None, **_: object) -> None:
        self.endpoint = url or "unix:///var/run/docker.sock"
        self.containers: list[ContainerInfo] = []
        self.down: str | None = None
        self.listings = 0
        self.queue: asyncio.Queue[DockerEvent] = asyncio.Queue()
        SOURCES[self.endpoint] = self

    def list_containers(self) -> list[ContainerInfo]:
        self.listings += 1
        if self.down is not None:
            raise DockerUnavailable(
                f"cannot reach the Docker engine at {self.endpoint}: {self.down}"
            )
        return list(self.containers)

    async def snapshot(self) -> list[ContainerInfo]:
        return self.list_containers()

    async def events(self) -> AsyncIterator[DockerEvent]:
        while True:
            yield await self.queue.get()

    def image_exposed_ports(self, image: str) -> tuple[int, ...] | None:
        return (80,) if self.endpoint.endswith("b.sock") else None

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fake_sources(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(engines_module, "DockerSource", FakeSource)
    SOURCES.clear()
    yield
    SOURCES.clear()


def web(name: str, ip: str = "172.17.0.2") -> ContainerInfo:
    return ContainerInfo(
        id=f"id-{name}",
        name=name,
        created=1.0,
        labels={"labelsync.host": "a.example"},
        networks={"bridge": ip},
        exposed_ports=(80,),
    )


TWO = "unix:///a.sock?name=a,unix:///b.sock?name=b&host_address=127.0.0.2"


def two_engines() -> tuple[EngineSet, FakeSource, FakeSource]:
    engines = EngineSet(parse_engines(TWO))
    a, b = SOURCES["unix:///a.sock"], SOURCES["unix:///b.sock"]
    a.containers, b.containers = [web("web-1")], [web("web-1", "172.30.0.2")]
    return engines, a, b


async def test_containers_carry_their_engine_and_how_it_is_reached() -> None:
    engines, _, _ = two_engines()
    first, second = await engines.snapshot()
    assert (first.name, first.engine, first.reach, first.host_address) == (
        "web-1@a",
        "a",
        Reach.CONTAINER,
        None,
    )
    assert (second.name, second.engine, second.reach, second.host_address) == (
        "web-1@b",
        "b",
        Reach.PUBLISHED,
        "127.0.0.2",
    )
    assert engines.endpoint == "a=unix:///a.sock, b=unix:///b.sock"


async def test_one_engine_passes_through_untouched() -> None:
    engines = EngineSet(parse_engines("unix:///only.sock"))
    SOURCES["unix:///only.sock"].containers = [web("web-1")]
    assert await engines.snapshot() == [web("web-1")]
    assert engines.list_blocking() == [web("web-1")]
    SOURCES["unix:///only.sock"].down = "no such socket"
    with pytest.raises(DockerUnavailable, match=r"at unix:///only\.sock: no such socket"):
        await engines.snapshot()


async def test_an_engine_out_keeps_its_last_listing_and_is_not_asked_again_soon() -> None:
    engines, a, b = two_engines()
    await engines.snapshot()
    b.down = "connection refused"
    a.containers.append(web("web-2", "172.17.0.3"))
    names = [c.name for c in await engines.snapshot()]
    assert names == ["web-1@a", "web-2@a", "web-1@b"]
    states = {s.name: s for s in engines.states()}
    assert states["a"].up and states["a"].containers == 2
    assert not states["b"].up and "connection refused" in str(states["b"].reason)
    assert states["b"].containers == 1 and states["b"].since is not None
    listings = b.listings
    await engines.snapshot()
    assert b.listings == listings  # an unreachable host does not hold every listing up


async def test_an_engine_out_is_asked_again_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines_module, "RETRY_OUT", 0.0)
    engines, _, b = two_engines()
    b.down = "timed out"
    assert [c.name for c in await engines.snapshot()] == ["web-1@a"]
    b.down = None
    assert [c.name for c in await engines.snapshot()] == ["web-1@a", "web-1@b"]
    assert b.listings == 2
    assert all(s.up for s in engines.states())


async def test_no_engine_answering_is_docker_unavailable() -> None:
    engines, a, b = two_engines()
    a.down, b.down = "no such socket", "connection refused"
    with pytest.raises(DockerUnavailable) as raised:
        await engines.snapshot()
    assert str(raised.value).startswith("no Docker engine answers (a: cannot reach")
    assert "b: cannot reach the Docker engine at unix:///b.sock: connection refused" in str(
        raised.value
    )


def test_the_cli_lists_those_that_answer() -> None:
    engines, _, b = two_engines()
    b.down = "no such socket"
    assert [c.name for c in engines.list_blocking()] == ["web-1@a"]
    assert engines.image_exposed_ports("img") == (80,)  # the first engine that has it


async def test_one_stream_with_the_engine_named_and_up_down_for_the_first_and_last() -> None:
    engines, a, b = two_engines()
    stream = engines.events()
    start = DockerEvent(EventKind.CONTAINER, "start", "id-web-1", 5)
    a.queue.put_nowait(STREAM_UP)
    b.queue.put_nowait(STREAM_UP)
    seen = [await anext(stream), await anext(stream)]
    b.queue.put_nowait(start)
    seen.append(await anext(stream))
    b.queue.put_nowait(STREAM_DOWN)
    seen.append(await anext(stream))
    a.queue.put_nowait(STREAM_DOWN)
    seen.append(await anext(stream))
    a.queue.put_nowait(STREAM_UP)
    seen.append(await anext(stream))
    await stream.aclose()  # type: ignore[attr-defined]
    assert [(e.kind, e.engine) for e in seen] == [
        (EventKind.STREAM_UP, "a"),
        (EventKind.ENGINE_UP, "b"),
        (EventKind.CONTAINER, "b"),
        (EventKind.ENGINE_DOWN, "b"),
        (EventKind.STREAM_DOWN, "a"),
        (EventKind.STREAM_UP, "a"),
    ]
    assert seen[2].container_id == "id-web-1" and seen[2].time_ns == 5
    assert {s.name: s.up for s in engines.states()} == {"a": True, "b": False}


def test_published_ports_are_read_from_the_listing() -> None:
    container = container_from_summary(
        {
            "Id": "abc",
            "Names": ["/web-1"],
            "Ports": [
                {"IP": "::", "PrivatePort": 80, "PublicPort": 49153, "Type": "tcp"},
                {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 49153, "Type": "tcp"},
                {"IP": "127.0.0.2", "PrivatePort": 443, "PublicPort": 49154, "Type": "tcp"},
                {"IP": "0.0.0.0", "PrivatePort": 53, "PublicPort": 5353, "Type": "udp"},
                {"PrivatePort": 9000, "Type": "tcp"},
            ],
        }
    )
    assert [tuple(p) for p in container.published] == [
        (80, "0.0.0.0", 49153),
        (80, "::", 49153),
        (443, "127.0.0.2", 49154),
    ]
    assert container.exposed_ports == (80, 443, 9000)


async def test_an_engine_never_listed_is_unlisted_until_it_answers() -> None:
    engines, _, b = two_engines()
    b.down = "no such socket"
    await engines.snapshot()
    assert engines.unlisted() == ("b",)
    b.down = None
    for engine in engines._engines:
        engine.retry_at = 0.0  # as after RETRY_OUT, or b's stream coming back
    await engines.snapshot()
    assert engines.unlisted() == ()
    b.down = "connection refused"  # out again later: known, its last listing kept
    engines._engines[1].retry_at = 0.0
    await engines.snapshot()
    assert engines.unlisted() == ()
