"""Several Docker engines as one `ContainerSource`: one event stream each, one set of pools.

    source = EngineSet(parse_engines("unix:///var/run/docker.sock,tcp://10.0.0.2:2376?tls=..."))

Each engine is a `DockerSource`. A listing lists every engine at once and tags each
container with its engine (`ContainerInfo.engine`, and `name@engine` as its name, so two
hosts' `web-1` stay apart in every message), the engine's reach and host address
(core/engines.py). One engine, as labelsync always had, passes through untouched.

An engine that does not answer is *out*: its containers keep the state of its last listing
(as all containers do while the only engine is away), it is not listed again until its
event stream reconnects or `RETRY_OUT` has passed (so an unreachable host does not make
every listing wait for a timeout), and the other engines carry on. Only when every engine
is out does a listing raise `DockerUnavailable`, and the loop leaves Caddy as it is.

The events of all engines come as one stream. `stream-up`/`stream-down` keep their meaning
(Docker answers, or nothing does): the first engine to connect sends `stream-up`, the last
to go `stream-down`; in between an engine that goes or comes back sends `engine-down` or
`engine-up` naming it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Sequence
from importlib.util import find_spec

from loguru import logger

from labelsync.core.engines import EngineSpec, EngineState, Reach
from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import ContainerInfo
from labelsync.errors import ConfigError, DockerUnavailable
from labelsync.sources.docker import DockerSource
from labelsync.sources.swarm import SwarmMode

# How long an engine that is out is served from its last listing before a listing tries
# it again without its event stream having come back.
RETRY_OUT = 30.0


class _Engine:
    """One engine: its source, its last listing, and whether it is out."""

    def __init__(self, spec: EngineSpec, source: DockerSource) -> None:
        self.spec = spec
        self.source = source
        self.containers: tuple[ContainerInfo, ...] = ()
        self.listed = False  # a listing has succeeded since start
        self.up = True  # until a listing fails or its stream is lost
        self.reason: str | None = None
        self.since: float | None = None
        self.retry_at = 0.0  # monotonic: when an out engine is listed again
        self.stream_up = False

    @property
    def name(self) -> str:
        return self.spec.name

    def state(self) -> EngineState:
        return EngineState(
            name=self.name,
            endpoint=self.source.endpoint,
            up=self.up,
            reason=self.reason,
            since=self.since,
            containers=len(self.containers),
        )

    def tag(self, containers: Sequence[ContainerInfo]) -> tuple[ContainerInfo, ...]:
        spec = self.spec
        if not spec.several:
            if spec.reach is Reach.CONTAINER and spec.host_address is None:
                return tuple(containers)
            return tuple(
                dataclasses.replace(c, reach=spec.reach, host_address=spec.host_address)
                for c in containers
            )
        return tuple(
            dataclasses.replace(
                c,
                name=f"{c.name}@{spec.name}",
                engine=spec.name,
                reach=spec.reach,
                host_address=spec.host_address,
            )
            for c in containers
        )

    def went_up(self) -> bool:
        """Mark it up; True when it was out."""
        was_out = not self.up
        self.up, self.reason, self.retry_at = True, None, 0.0
        if was_out:
            self.since = time.time()
        return was_out

    def went_out(self, reason: str) -> bool:
        """Mark it out; True when it was up."""
        was_up = self.up
        self.up, self.reason = False, reason
        self.retry_at = time.monotonic() + RETRY_OUT
        if was_up:
            self.since = time.time()
        return was_up

    def due(self, now: float) -> bool:
        """To be listed now: up, or out long enough to try again."""
        return self.up or now >= self.retry_at


class EngineSet:
    """A `ContainerSource` over one or several Docker engines."""

    def __init__(
        self, specs: Sequence[EngineSpec], *, timeout: float = 10.0, swarm: SwarmMode = "auto"
    ) -> None:
        for spec in specs:
            if (spec.url or "").startswith("ssh://") and find_spec("paramiko") is None:
                raise ConfigError(
                    f"Docker engine {spec.name} ({spec.endpoint}): ssh:// needs paramiko, "
                    "which labelsync's ssh extra installs (pip install '/path/to/labelsync[ssh]')"
                )
        self._engines = [
            _Engine(spec, DockerSource(spec.url, timeout=timeout, swarm=swarm, tls=spec.tls))
            for spec in specs
        ]

    @property
    def endpoint(self) -> str:
        """The engines' URLs, for messages."""
        if len(self._engines) == 1:
            return self._engines[0].source.endpoint
        return ", ".join(f"{e.name}={e.source.endpoint}" for e in self._engines)

    @property
    def several(self) -> bool:
        return len(self._engines) > 1

    def unlisted(self) -> tuple[str, ...]:
        """The engines no listing has reached since the start: their pools are unknown."""
        return tuple(engine.name for engine in self._engines if not engine.listed)

    def states(self) -> tuple[EngineState, ...]:
        """Each engine as last seen (status, the dashboard, `/metrics`)."""
        return tuple(engine.state() for engine in self._engines)

    def image_exposed_ports(self, image: str) -> tuple[int, ...] | None:
        """The ports an image exposes, from the first engine that has it (`check`)."""
        for engine in self._engines:
            ports = engine.source.image_exposed_ports(image)
            if ports is not None:
                return ports
        return None

    async def snapshot(self) -> list[ContainerInfo]:
        """Every engine's containers; an engine that is out gives its last listing.
        Raises `DockerUnavailable` when no engine answers."""
        if not self.several:
            engine = self._engines[0]
            engine.containers, engine.listed = engine.tag(await engine.source.snapshot()), True
            return list(engine.containers)
        now = time.monotonic()
        due = [engine for engine in self._engines if engine.due(now)]
        results = await asyncio.gather(
            *(engine.source.snapshot() for engine in due), return_exceptions=True
        )
        for engine, result in zip(due, results, strict=True):
            self._take(engine, result)
        return self._combined()

    def list_blocking(self) -> list[ContainerInfo]:
        """`snapshot` for the CLI's one-off reads: every engine, one after the other."""
        if not self.several:
            return list(self._engines[0].tag(self._engines[0].source.list_containers()))
        for engine in self._engines:
            try:
                listed: Sequence[ContainerInfo] | BaseException = engine.source.list_containers()
            except DockerUnavailable as exc:
                listed = exc
            self._take(engine, listed)
        return self._combined()

    def _take(self, engine: _Engine, result: Sequence[ContainerInfo] | BaseException) -> None:
        """Keep one engine's listing, or mark it out when it failed."""
        if isinstance(result, DockerUnavailable):
            if engine.went_out(str(result)):
                self._log_out(engine, str(result))
            return
        if isinstance(result, BaseException):
            raise result
        engine.containers, engine.listed = engine.tag(result), True
        if engine.went_up():
            self._log_back(engine)

    def _combined(self) -> list[ContainerInfo]:
        if not any(engine.up for engine in self._engines):
            reasons = "; ".join(f"{e.name}: {e.reason}" for e in self._engines)
            raise DockerUnavailable(f"no Docker engine answers ({reasons})")
        return [container for engine in self._engines for container in engine.containers]

    def _log_out(self, engine: _Engine, reason: str) -> None:
        others = [e.name for e in self._engines if e.up]
        kept = (
            f"its {len(engine.containers)} container(s) keep the state they had"
            if engine.listed
            else "it was never listed: none of its containers is known yet"
        )
        logger.warning(
            "Docker engine {} is out ({}); {}; {} carry on",
            engine.name,
            reason,
            kept,
            ", ".join(others) if others else "no other engine answers:",
        )

    @staticmethod
    def _log_back(engine: _Engine) -> None:
        logger.info(
            "Docker engine {} ({}) answers again; listing it afresh",
            engine.name,
            engine.source.endpoint,
        )

    async def events(self) -> AsyncIterator[DockerEvent]:
        """Every engine's events as one stream (see the module's docstring)."""
        if not self.several:
            async for event in self._engines[0].source.events():
                yield event
            return
        queue: asyncio.Queue[tuple[_Engine, DockerEvent]] = asyncio.Queue()

        async def pump(engine: _Engine) -> None:
            async for event in engine.source.events():
                queue.put_nowait((engine, event))

        pumps = [
            asyncio.create_task(pump(engine), name=f"docker-events-{engine.name}")
            for engine in self._engines
        ]
        try:
            while True:
                engine, event = await queue.get()
                yield self._translate(engine, event)
        finally:
            for task in pumps:
                task.cancel()
            for task in pumps:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def _translate(self, engine: _Engine, event: DockerEvent) -> DockerEvent:
        """Name the engine; keep stream-up/down for the first up and the last down."""
        tagged = dataclasses.replace(event, engine=engine.name)
        if event.kind is EventKind.STREAM_UP:
            first = not any(e.stream_up for e in self._engines)
            engine.stream_up = True
            if engine.went_up():
                self._log_back(engine)
            return tagged if first else dataclasses.replace(tagged, kind=EventKind.ENGINE_UP)
        if event.kind is EventKind.STREAM_DOWN:
            engine.stream_up = False
            if engine.went_out("its event stream was lost"):
                self._log_out(engine, "its event stream was lost")
            last = not any(e.stream_up for e in self._engines)
            return tagged if last else dataclasses.replace(tagged, kind=EventKind.ENGINE_DOWN)
        return tagged

    def close(self) -> None:
        for engine in self._engines:
            engine.source.close()


def list_once(specs: Sequence[EngineSpec], *, swarm: SwarmMode) -> list[ContainerInfo]:
    """One listing of every engine, closed after (the CLI's one-off reads). Engines that
    do not answer are left out, with a warning, as long as one does."""
    source = EngineSet(specs, swarm=swarm)
    try:
        return source.list_blocking()
    finally:
        source.close()
