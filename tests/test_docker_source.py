"""The Docker edge against a real engine: records as labelsync sees them, and events."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from labelsync.core.events import DockerEvent
from labelsync.core.model import ContainerInfo, PublishedPort
from labelsync.errors import DockerUnavailable
from labelsync.sources.docker import DockerSource, container_from_summary
from tests.support.containers import ContainerHandle
from tests.support.docker_relay import DockerRelay
from tests.support.waiting import eventually, wait_until

StartBackend = Callable[..., ContainerHandle]


@pytest.fixture
def source() -> Iterator[DockerSource]:
    docker_source = DockerSource()
    try:
        yield docker_source
    finally:
        docker_source.close()


def _record(source: DockerSource, container_id: str) -> ContainerInfo | None:
    return next((c for c in source.list_containers() if c.id == container_id), None)


# -- conversion, no engine ---------------------------------------------------------------------


def test_summary_conversion_reads_every_field() -> None:
    summary = {
        "Id": "abc123" * 10,
        "Names": ["/frontend/db", "/db"],
        "Created": 1_700_000_000,
        "Labels": {
            "labelsync.host": "db.test",
            "com.docker.compose.project": "shop",
            "com.docker.compose.service": "db",
        },
        "State": "running",
        "Status": "Up 3 minutes (healthy)",
        "Ports": [
            {"PrivatePort": 8080, "Type": "tcp"},
            {"IP": "0.0.0.0", "PrivatePort": 5432, "PublicPort": 5432, "Type": "tcp"},
            {"IP": "::", "PrivatePort": 5432, "PublicPort": 5432, "Type": "tcp"},
            {"PrivatePort": 53, "Type": "udp"},
        ],
        "HostConfig": {"NetworkMode": "shop_default"},
        "NetworkSettings": {
            "Networks": {
                "shop_default": {"IPAddress": "172.20.0.5"},
                "detached": {"IPAddress": ""},
            }
        },
    }
    assert container_from_summary(summary) == ContainerInfo(
        id="abc123" * 10,
        name="db",
        created=1_700_000_000.0,
        labels=summary["Labels"],  # type: ignore[arg-type]
        state="running",
        health="healthy",
        networks={"shop_default": "172.20.0.5"},
        exposed_ports=(5432, 8080),
        compose_project="shop",
        compose_service="db",
        host_network=False,
        published=(PublishedPort(5432, "0.0.0.0", 5432), PublishedPort(5432, "::", 5432)),
    )


@pytest.mark.parametrize(
    ("status", "health"),
    [
        ("Up 2 seconds (health: starting)", "starting"),
        ("Up 2 minutes (unhealthy)", "unhealthy"),
        ("Up 2 minutes (healthy)", "healthy"),
        ("Up 2 minutes", None),
        ("Up 2 minutes (Paused)", None),
    ],
)
def test_health_is_read_from_the_status_text(status: str, health: str | None) -> None:
    summary = {"Id": "f" * 64, "Names": ["/x"], "Created": 1, "Status": status}
    assert container_from_summary(summary).health == health


def test_host_network_and_missing_fields() -> None:
    record = container_from_summary(
        {"Id": "e" * 64, "Names": None, "Labels": None, "HostConfig": {"NetworkMode": "host"}}
    )
    assert (record.name, record.labels, record.networks) == ("e" * 12, {}, {})
    assert record.host_network
    assert record.exposed_ports == ()


# -- listing, real engine ----------------------------------------------------------------------


def test_lists_a_labelled_container_as_labelsync_sees_it(
    backend: StartBackend, source: DockerSource
) -> None:
    handle = backend(labels={"labelsync.host": "listed.test"}, ports=[8080, 9090])
    record = _record(source, handle.id)
    assert record is not None
    assert record.name == handle.name
    assert record.labels["labelsync.host"] == "listed.test"
    assert record.networks == {"bridge": handle.ip}
    assert record.exposed_ports == (8080, 9090)
    assert (record.state, record.health, record.host_network) == ("running", None, False)
    assert record.created > 0


def test_reads_every_network_and_compose_labels(
    backend: StartBackend, docker_network: Callable[..., str], source: DockerSource
) -> None:
    network = docker_network()
    handle = backend(
        network=[network, "bridge"],
        labels={"com.docker.compose.project": "shop", "com.docker.compose.service": "web"},
    )
    record = _record(source, handle.id)
    assert record is not None
    assert record.networks == handle.networks
    assert set(record.networks) == {network, "bridge"}
    assert (record.compose_project, record.compose_service) == ("shop", "web")


def test_container_without_exposed_ports(backend: StartBackend, source: DockerSource) -> None:
    handle = backend(ports=[])
    record = _record(source, handle.id)
    assert record is not None
    assert record.exposed_ports == ()


def test_health_follows_the_docker_healthcheck(backend: StartBackend, source: DockerSource) -> None:
    handle = backend(healthcheck=True)

    def health() -> str | None:
        record = _record(source, handle.id)
        return record.health if record else None

    wait_until(lambda: health() == "healthy", timeout=30, message="healthy in the listing")
    handle.set_healthy(False)
    wait_until(lambda: health() == "unhealthy", timeout=30, message="unhealthy in the listing")
    record = _record(source, handle.id)
    assert record is not None
    assert not record.is_serving


def test_stopped_and_paused_containers_are_listed_but_not_serving(
    backend: StartBackend, source: DockerSource
) -> None:
    """Stopped containers still shape their pools (a crash writes no Caddy config)."""
    stopped, paused = backend(), backend()
    stopped.container.stop(timeout=5)
    paused.container.pause()
    try:
        gone = _record(source, stopped.id)
        assert gone is not None
        assert gone.state == "exited"
        assert gone.networks == {}
        assert not gone.is_serving
        record = _record(source, paused.id)
        assert record is not None
        assert record.state == "paused"
        assert not record.is_serving
    finally:
        paused.container.unpause()


async def test_snapshot_lists_without_blocking(backend: StartBackend, source: DockerSource) -> None:
    handle = backend()
    assert handle.id in {record.id for record in await source.snapshot()}


def test_unreachable_socket_names_the_socket(tmp_path: Path) -> None:
    missing = f"unix://{tmp_path}/no-docker.sock"
    source = DockerSource(missing, timeout=2)
    assert source.endpoint == missing
    with pytest.raises(DockerUnavailable, match=r"no-docker\.sock"):
        source.list_containers()
    source.close()


async def test_unreachable_socket_fails_snapshot_too(tmp_path: Path) -> None:
    source = DockerSource(f"unix://{tmp_path}/no-docker.sock", timeout=2)
    with pytest.raises(DockerUnavailable, match="no such socket"):
        await source.snapshot()
    source.close()


def test_endpoint_defaults_to_docker_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2")
    assert DockerSource().endpoint == "tcp://127.0.0.1:2"
    monkeypatch.delenv("DOCKER_HOST")
    assert DockerSource().endpoint == "unix:///var/run/docker.sock"


# -- events ------------------------------------------------------------------------------------


class EventLog:
    """Consumes `DockerSource.events()` in a task and keeps what arrived."""

    def __init__(self, source: DockerSource) -> None:
        self.events: list[DockerEvent] = []
        self._iterator = source.events()
        self._task = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self._iterator:
            self.events.append(event)

    def actions_for(self, container_id: str) -> list[str]:
        return [e.action for e in self.events if e.container_id == container_id]

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.kind == kind)

    async def wait_for(self, predicate: Callable[[], bool], message: str) -> None:
        async def check() -> bool:
            return predicate()

        await eventually(check, timeout=30, message=message)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        await self._iterator.aclose()  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def event_log(source: DockerSource) -> AsyncIterator[EventLog]:
    log = EventLog(source)
    try:
        await log.wait_for(lambda: log.count("stream-up") == 1, "the first stream-up")
        yield log
    finally:
        await log.close()


async def test_events_for_start_kill_die_and_stop(
    backend: StartBackend, source: DockerSource
) -> None:
    async with event_log(source) as log:
        killed = await asyncio.to_thread(backend)
        stopped = await asyncio.to_thread(backend)
        await asyncio.to_thread(killed.container.kill)
        await asyncio.to_thread(stopped.container.stop, timeout=5)
        await log.wait_for(
            lambda: (
                {"start", "kill", "die"} <= set(log.actions_for(killed.id))
                and {"start", "kill", "die", "stop"} <= set(log.actions_for(stopped.id))
            ),
            "start/kill/die/stop events",
        )
        assert log.actions_for(killed.id).index("start") < log.actions_for(killed.id).index("die")
        assert {e.kind for e in log.events if e.container_id == killed.id} <= {
            "container",
            "network",
        }
        assert all(e.time_ns > 0 for e in log.events if e.container_id == killed.id)


async def test_events_for_health_pause_rename_and_networks(
    backend: StartBackend, docker_network: Callable[..., str], source: DockerSource
) -> None:
    async with event_log(source) as log:
        handle = await asyncio.to_thread(backend, healthcheck=True)
        await log.wait_for(
            lambda: "health_status: healthy" in log.actions_for(handle.id), "health_status event"
        )
        network = docker_network()
        container = handle.container
        await asyncio.to_thread(container.pause)
        await asyncio.to_thread(container.unpause)
        await asyncio.to_thread(container.rename, f"{handle.name}-renamed")
        await asyncio.to_thread(handle.client.api.connect_container_to_network, handle.id, network)
        await asyncio.to_thread(
            handle.client.api.disconnect_container_from_network, handle.id, network
        )
        await log.wait_for(
            lambda: (
                {"pause", "unpause", "rename", "connect", "disconnect"}
                <= set(log.actions_for(handle.id))
            ),
            "pause/unpause/rename/connect/disconnect events",
        )
        # Health-check execs create exec_* events every interval: they are not passed on.
        assert not [a for a in log.actions_for(handle.id) if a.startswith("exec_")]


async def test_cancelling_the_iterator_stops_the_reader_thread(source: DockerSource) -> None:
    async with event_log(source):
        assert any(t.name == "docker-events" for t in threading.enumerate())

    async def reader_gone() -> bool:
        return not any(t.name == "docker-events" for t in threading.enumerate())

    await eventually(reader_gone, timeout=5, message="the reader thread to end")


async def test_stream_down_then_up_when_the_engine_goes_away_and_returns(
    tmp_path: Path, backend: StartBackend
) -> None:
    # Dropping the relay breaks the event stream the way a dockerd restart does, without
    # disturbing the engine other tests use.
    relay = await asyncio.to_thread(DockerRelay(tmp_path / "docker.sock").start)
    source = DockerSource(relay.url, timeout=5)
    try:
        async with event_log(source) as log:
            await asyncio.to_thread(relay.cut)
            await log.wait_for(lambda: log.count("stream-down") == 1, "stream-down")
            # While the engine is away, listing fails with the socket named.
            with pytest.raises(DockerUnavailable, match=r"docker\.sock"):
                await source.snapshot()
            await asyncio.to_thread(relay.restore)
            await log.wait_for(lambda: log.count("stream-up") == 2, "stream-up after reconnect")
            assert [e.kind for e in log.events if e.kind.startswith("stream")] == [
                "stream-up",
                "stream-down",
                "stream-up",
            ]
            # The reconnected stream delivers events again.
            handle = await asyncio.to_thread(backend)
            await log.wait_for(lambda: "start" in log.actions_for(handle.id), "start event")
    finally:
        source.close()
        await asyncio.to_thread(relay.close)
