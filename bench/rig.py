"""The pieces every scenario is built from: a private Caddy, labelsync's own loop run
in-process with recording wrappers around its edges, and bench containers.

The wrappers only observe: they pass every call through to the real `DockerSource`,
`DynamicMembership` and `CaddyAdmin` and note when it happened. `WholeConfigAdmin` is
the baseline: the same loop and core, but every change is pushed as one POST /load of
the whole config, the way a generator that does not diff would push it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.operations import Operation, apply_operations
from labelsync.core.events import DockerEvent
from labelsync.core.model import JSON, ContainerInfo, DesiredState
from labelsync.loop.reconcile import Reconciler
from labelsync.membership.channel import DynamicMembership
from labelsync.settings import Settings
from tests.support.caddy import SERVER_NAME, CaddyProcess
from tests.support.containers import TEST_ID_LABEL, ContainerFactory
from tests.support.daemon import free_udp_port
from tests.support.images import ensure_images

# Bench containers use their own label prefix, so that labelsync's containers of anyone
# else on the same engine (tests, a running daemon) never enter a measurement.
PREFIX = "lsbench"
BENCH_TEST_ID = "bench"


def clear_labelsync_environment() -> None:
    """Settings come from the scenario alone, never from LABELSYNC_* of the caller."""
    for name in [n for n in os.environ if n.startswith("LABELSYNC_")]:
        del os.environ[name]


# -- Caddy --------------------------------------------------------------------------------------


class BenchCaddy(CaddyProcess):
    """The test rig's Caddy (bundled binary, loopback only), one per scenario phase."""

    def __init__(self, name: str) -> None:
        super().__init__(f"bench-{name}")


@contextlib.asynccontextmanager
async def running_caddy(name: str) -> AsyncIterator[BenchCaddy]:
    caddy = BenchCaddy(name)
    await asyncio.to_thread(caddy.start)
    try:
        yield caddy
    finally:
        await asyncio.to_thread(caddy.stop)


def bench_settings(caddy: BenchCaddy, upstreams: str, **overrides: Any) -> Settings:
    """Settings of an in-process labelsync writing into the bench Caddy's server."""
    values: dict[str, Any] = {
        "caddy_admin": caddy.admin_url,
        "caddy_server": SERVER_NAME,
        "listen": f"127.0.0.1:{caddy.http_port}",
        "auto_https": "off",
        "label_prefix": PREFIX,
        "upstreams": upstreams,
        "resolver_listen": f"127.0.0.1:{free_udp_port()}",
        "resync_interval": "60s",
    }
    values.update(overrides)
    return Settings(**values)


# -- recording wrappers -------------------------------------------------------------------------


class _WritesRecorded:
    """Notes when a sync wrote to Caddy, and what it had built."""

    def __init__(self, reconciler: Reconciler, recorder: Recorder) -> None:
        self.reconciler = reconciler
        self.recorder = recorder

    def on_event(self, event: DockerEvent) -> None:
        pass

    def on_sync(self, result: str, seconds: float, latency: float | None) -> None:
        if result == "applied":
            self.recorder.applied.append((time.time_ns(), self.reconciler.state.desired))


@dataclass
class Recorder:
    """When labelsync received events, published membership and had a write answered."""

    events: list[tuple[int, DockerEvent]] = field(default_factory=list)
    published: list[tuple[int, DesiredState]] = field(default_factory=list)
    applied: list[tuple[int, DesiredState | None]] = field(default_factory=list)

    def event_received(self, container_id: str, actions: Iterable[str]) -> tuple[int, int] | None:
        """(receive time_ns, Docker's timeNano) of the first event of `container_id` whose
        action is one of `actions`."""
        wanted = set(actions)
        for received, event in self.events:
            if event.container_id == container_id and event.action in wanted:
                return received, event.time_ns
        return None


class RecordingSource:
    """A source passed through unchanged, noting when each event reached labelsync."""

    def __init__(self, inner: Any, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    @property
    def endpoint(self) -> str:
        return str(getattr(self.inner, "endpoint", "synthetic"))

    async def snapshot(self) -> list[ContainerInfo]:
        return list(await self.inner.snapshot())

    async def events(self) -> AsyncIterator[DockerEvent]:
        async for event in self.inner.events():
            self.recorder.events.append((time.time_ns(), event))
            yield event

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if closer is not None:
            closer()


class RecordingMembership:
    """The real membership channel; notes when each publish returned."""

    def __init__(self, inner: DynamicMembership, recorder: Recorder) -> None:
        self.inner = inner
        self.recorder = recorder

    def publish(self, desired: DesiredState) -> None:
        self.inner.publish(desired)
        self.recorder.published.append((time.time_ns(), desired))

    def channels(
        self, desired: DesiredState, now: float
    ) -> tuple[DesiredState, frozenset[str], float | None]:
        return self.inner.channels(desired, now)


@dataclass
class Write:
    started_ns: int
    seconds: float
    operations: int
    bytes_sent: int


class TimedAdmin:
    """A `CaddyAdmin` whose reads and writes are timed (wall clock: Caddy's answer)."""

    def __init__(self, inner: CaddyAdmin) -> None:
        self.inner = inner
        self.writes: list[Write] = []
        self.read_seconds: list[float] = []

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    @property
    def requests_sent(self) -> int:
        return self.inner.requests_sent

    @property
    def bytes_sent(self) -> int:
        return self.inner.bytes_sent

    async def server(self, name: str) -> tuple[JSON | None, str | None]:
        started = time.perf_counter()
        try:
            return await self.inner.server(name)
        finally:
            self.read_seconds.append(time.perf_counter() - started)

    async def ensure_server(self, name: str, server: JSON) -> bool:
        return await self.inner.ensure_server(name, server)

    async def get(self, path: str) -> tuple[Any, str | None]:
        return await self.inner.get(path)

    async def has_id(self, object_id: str) -> bool:
        return await self.inner.has_id(object_id)

    async def apply(
        self, server_name: str, current: list[JSON], operations: list[Operation], etag: str | None
    ) -> None:
        started_ns, before = time.time_ns(), self.inner.bytes_sent
        started = time.perf_counter()
        await self._write(server_name, current, operations, etag)
        self.writes.append(
            Write(
                started_ns,
                time.perf_counter() - started,
                len(operations),
                self.inner.bytes_sent - before,
            )
        )

    async def _write(
        self, server_name: str, current: list[JSON], operations: list[Operation], etag: str | None
    ) -> None:
        await self.inner.apply(server_name, current, operations, etag)

    async def aclose(self) -> None:
        await self.inner.aclose()


class WholeConfigAdmin(TimedAdmin):
    """The baseline: every change replaces Caddy's whole config with POST /load."""

    def __init__(self, inner: CaddyAdmin, base_config: JSON, server_name: str = SERVER_NAME):
        super().__init__(inner)
        self.base_config = base_config
        self.server_name = server_name

    def whole_config(self, routes: list[JSON]) -> JSON:
        config = copy.deepcopy(self.base_config)
        config["apps"]["http"]["servers"][self.server_name]["routes"] = routes
        return config

    async def _write(
        self, server_name: str, current: list[JSON], operations: list[Operation], etag: str | None
    ) -> None:
        await self.inner.load(self.whole_config(apply_operations(current, operations)))


# -- labelsync in-process -------------------------------------------------------------------------


@dataclass
class Labelsync:
    """A running labelsync loop and what was recorded around it."""

    reconciler: Reconciler
    admin: TimedAdmin
    recorder: Recorder
    settings: Settings
    membership: DynamicMembership | None

    async def wait_synced(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.reconciler.state.synced.wait(), timeout)


@contextlib.asynccontextmanager
async def labelsync(
    settings: Settings,
    source: Any,
    admin: TimedAdmin,
    *,
    run_loop: bool = True,
) -> AsyncIterator[Labelsync]:
    """labelsync's Reconciler over `source` and `admin`, with the dynamic membership
    channel in dynamic mode, exactly as `labelsync run` wires them."""
    recorder = Recorder()
    channel: contextlib.AbstractAsyncContextManager[DynamicMembership | None]
    if settings.upstreams == "dynamic":
        channel = DynamicMembership.running(settings)
    else:
        channel = contextlib.nullcontext(None)
    async with channel as membership:
        recording = RecordingMembership(membership, recorder) if membership else None
        holder: dict[str, Reconciler] = {}

        reconciler = Reconciler(
            settings,
            RecordingSource(source, recorder),
            admin,
            membership=recording,
        )
        reconciler.observers.append(_WritesRecorded(reconciler, recorder))
        holder["r"] = reconciler
        running = Labelsync(reconciler, admin, recorder, settings, membership)
        task = asyncio.create_task(reconciler.run()) if run_loop else None
        try:
            if task is not None:
                await running.wait_synced()
            yield running
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


# -- containers ---------------------------------------------------------------------------------


class BenchContainers:
    """Bench containers on the local engine, labelled `io.labelsync.test-id=bench`."""

    def __init__(self, scenario: str) -> None:
        self.client = docker.from_env(timeout=120)
        self.images = ensure_images(self.client)
        self.factory = ContainerFactory(self.client, self.images, f"bench/{scenario}", scenario)
        self.factory.test_id = BENCH_TEST_ID
        self.factory.name_prefix = f"lsb-{scenario}"
        self.addresses: list[tuple[str, str]] = []  # (network, ip) of each start

    def start(self, labels: dict[str, str], **options: Any) -> Any:
        """Start one backend container (blocking); see `ContainerFactory.start`."""
        handle = self.factory.start(labels=labels, **options)
        self.addresses.append((handle.network, handle.ip))
        return handle

    def addresses_reused(self) -> int:
        """How many containers started so far got an address an earlier one had."""
        return len(self.addresses) - len(set(self.addresses))

    def small_network(self, prefix: int = 28) -> str:
        """A network of this scenario where Docker reuses freed addresses at once."""
        return self.factory.create_small_network(prefix)

    def remove(self, container_ids: Iterable[str]) -> None:
        for container_id in container_ids:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.client.api.remove_container(container_id, force=True, v=True)

    async def remove_all(self, parallel: int = 8) -> None:
        """Force-remove every container this scenario started, a few at a time."""
        ids = list(self.factory.started)
        self.factory.started.clear()
        semaphore = asyncio.Semaphore(parallel)

        async def one(container_id: str) -> None:
            async with semaphore:
                await asyncio.to_thread(self.remove, [container_id])

        await asyncio.gather(*(one(i) for i in ids))

    def close(self) -> None:
        self.factory.cleanup()
        self.client.close()


def sweep_bench_containers(older_than: float = 0.0) -> int:
    """Remove bench containers left by an interrupted run (all of them by default)."""
    client = docker.from_env(timeout=60)
    removed = 0
    try:
        cutoff = time.time() - older_than
        selector = {"label": f"{TEST_ID_LABEL}={BENCH_TEST_ID}"}
        for summary in client.api.containers(all=True, filters=selector):
            if older_than and float(summary.get("Created") or 0) >= cutoff:
                continue
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                client.api.remove_container(summary["Id"], force=True, v=True)
                removed += 1
    finally:
        client.close()
    return removed


def backend_labels(host: str, keys: dict[str, str] | None = None) -> dict[str, str]:
    """`lsbench.host=<host>`, `lsbench.port=8080` and `lsbench.<key>=<value>` for each of
    `keys` (relative keys: `{"lb.policy": "first"}`)."""
    labels = {f"{PREFIX}.host": host, f"{PREFIX}.port": "8080"}
    labels.update({f"{PREFIX}.{key}": value for key, value in (keys or {}).items()})
    return labels


async def wait_for(
    check: Callable[[], Any], *, timeout: float, interval: float = 0.01, message: str
) -> Any:
    """Poll an async or sync check until truthy; TimeoutError naming `message`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)
