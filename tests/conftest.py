"""Fixtures shared by the whole suite: the Docker engine, test images and containers, a real
Caddy on loopback, and unique hostnames.

Tests that need Docker simply ask for `docker_client` (or anything built on it: `images`,
`backend`, `docker_network`); they are marked `docker` automatically. Without an engine they
skip, except under CI (env `CI` set), where they fail: CI must never pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator

import docker
import docker.errors
import pytest
from loguru import logger

from tests.support.caddy import CaddyProcess
from tests.support.containers import (
    ContainerFactory,
    ContainerHandle,
    short_uuid,
    slug,
    sweep_session,
    sweep_stale,
)
from tests.support.engines import (
    ExtraEngines,
    engine_specs,
    missing_requirement,
    running_engines,
)
from tests.support.images import TestImages, ensure_images
from tests.support.requirements import skip_or_fail_under_ci

DOCKER_FIXTURES = {
    "docker_client",
    "images",
    "backend",
    "docker_network",
    "container_factory",
    "stack_images",
    "extra_engines",
}
CADDY_FIXTURES = {"caddy", "caddy_factory"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by what they need, so `-m "not docker"` runs the fast part alone."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & DOCKER_FIXTURES:
            item.add_marker(pytest.mark.docker)
        if fixtures & CADDY_FIXTURES:
            item.add_marker(pytest.mark.caddy)


# -- Docker ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A docker-py client for the local engine; skips (fails under CI) when none answers."""
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as exc:
        skip_or_fail_under_ci(
            f"no Docker engine answers: {exc}", ci_note=" (CI is set: Docker tests must run)"
        )
    sweep_stale(client)
    try:
        yield client
    finally:
        sweep_session(client)
        client.close()


@pytest.fixture(scope="session")
def images(docker_client: docker.DockerClient) -> TestImages:
    """The locally built test images (`images.backend`, `images.https`)."""
    return ensure_images(docker_client)


@pytest.fixture
def container_factory(
    request: pytest.FixtureRequest, docker_client: docker.DockerClient, images: TestImages
) -> Iterator[ContainerFactory]:
    factory = ContainerFactory(
        docker_client, images, request.node.nodeid, getattr(request.node, "name", "test")
    )
    try:
        yield factory
    finally:
        factory.cleanup()


StartBackend = Callable[..., ContainerHandle]


@pytest.fixture
def backend(container_factory: ContainerFactory) -> StartBackend:
    """Factory: `backend(name=None, labels=..., env=..., network=None, image="backend",
    healthcheck=None, ports=[8080], exact_name=False, **create_options) -> ContainerHandle`.

    - `name` is a prefix: a short uuid is appended (`handle.name` is the real name) unless
      `exact_name=True`.
    - `image`: "backend" (busybox HTTP server answering every path with the container's name,
      `/health`, `/slow?N`, `/status/CODE`) or "https" (Caddy with TLS on 8443), or a full ref.
    - `ports`: exposed TCP ports (no host publishing); the backend listens on all of them.
      `ports=[]` exposes none (the server still listens on 8080).
    - `healthcheck`: `True` for a fast HEALTHCHECK passing while `/www/health` exists
      (`handle.set_healthy(False)` flips it), or a dict from `support.containers.health_check`.
    - `network`: a network name, a list of names (first is primary), or "host".
    - Returns once the container runs and (for the two test images) accepts connections on
      every exposed port; `wait_running=False` / `wait_listening=False` skip that.
    Containers are force-removed when the test ends.
    """
    return container_factory.start


@pytest.fixture
def docker_network(container_factory: ContainerFactory) -> Callable[..., str]:
    """Factory: `docker_network(name=None, **options) -> name` of a new bridge network,
    removed when the test ends (after its containers)."""
    return container_factory.create_network


@pytest.fixture(scope="session")
def extra_engines(docker_client: docker.DockerClient, images: TestImages) -> Iterator[ExtraEngines]:
    """Two more Docker engines on this machine, standing in for other hosts
    (tests/support/engines.py), each in a network namespace of its own: this machine
    reaches `b`'s published ports at 10.231.2.2, `c`'s at 10.231.3.2. Each has `url`
    (its unix socket), `host_address`, `client`, `backend_image` (== `images.backend`),
    `stop()`, `start()` and `run_backend(name, labels, port=8080, restart=False)`; `c`
    also serves TLS: `tls_url` ("tcp://10.231.3.2:2376"), `tls_client_dir` (ca.pem,
    cert.pem, key.pem), `tls_client()`. Shared by the session: a test that stops one
    starts it again, and removes what it ran (`remove_backends()`). Needs root, dockerd
    and iproute2: skips without, fails under CI. Logs: `.test-logs/dockerd-<name>.log`."""
    missing = missing_requirement()
    if missing is not None:
        skip_or_fail_under_ci(missing, ci_note=" (CI is set: the extra engines must run)")
    with running_engines(docker_client, images.backend, engine_specs(2)) as (b, c):
        yield ExtraEngines(b=b, c=c)


@pytest.fixture
def engines(extra_engines: ExtraEngines) -> Iterator[ExtraEngines]:
    """The session's extra engines for one test: running again and rid of the backends it
    ran (`run_backend`) afterwards."""
    try:
        yield extra_engines
    finally:
        for engine in extra_engines:
            engine.start()
            engine.remove_backends()


# -- Caddy -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def caddy() -> Iterator[CaddyProcess]:
    """The session's Caddy: `admin_url`, `http_url`, `request(host, path)`, `put_routes`,
    `add_routes`, `delete_routes_with_host`, `reset_routes()`, `reset()`. Shared by all tests:
    use distinct hostnames (`unique_host`). Log: `.test-logs/caddy-session.log`."""
    process = CaddyProcess("session").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def caddy_factory(request: pytest.FixtureRequest) -> Iterator[Callable[[], CaddyProcess]]:
    """Factory for private Caddy processes (for tests that restart or break Caddy); each is
    stopped when the test ends. Logs: `.test-logs/caddy-<test>-<n>.log`."""
    started: list[CaddyProcess] = []

    def start() -> CaddyProcess:
        process = CaddyProcess(f"{slug(request.node.name, 40)}-{len(started)}")
        started.append(process)
        return process.start()

    try:
        yield start
    finally:
        for process in started:
            process.stop()


# -- Names -------------------------------------------------------------------------------------


@pytest.fixture
def errors_logged() -> Iterator[list[str]]:
    """The messages logged at ERROR while the test runs."""
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="ERROR")
    yield messages
    logger.remove(sink)


@pytest.fixture
def make_host(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory: `make_host("api") -> "api-<test-slug>-<uuid>.test"`, unique per call."""
    base = slug(request.node.name, 30)

    def make(label: str = "") -> str:
        prefix = f"{slug(label, 12)}-" if label else ""
        return f"{prefix}{base}-{short_uuid()}.test"

    return make


@pytest.fixture
def unique_host(make_host: Callable[[str], str]) -> str:
    """A hostname no other test uses, e.g. `test-round-robin-3fa2c1.test`."""
    return make_host("")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"labelsync test run; CI={os.environ.get('CI', '')!r}"]


GATEWAY_BRIDGE = "docker_gwbridge"  # made by the engine for the first overlay task


@pytest.fixture(scope="module")
def swarm_manager(docker_client: docker.DockerClient) -> Iterator[None]:
    """This engine as a Swarm manager; left again afterwards only if made one here."""
    state = docker_client.info()["Swarm"]
    initialised = False
    had_gateway_bridge = bool(docker_client.networks.list(names=[GATEWAY_BRIDGE]))
    if state["LocalNodeState"] == "inactive":
        docker_client.swarm.init(advertise_addr="127.0.0.1")
        initialised = True
    elif not (state["LocalNodeState"] == "active" and state.get("ControlAvailable")):
        pytest.fail(f"the engine is in a Swarm but no manager: {state['LocalNodeState']}")
    try:
        yield
    finally:
        if initialised:
            docker_client.swarm.leave(force=True)
            if not had_gateway_bridge:  # leaving the Swarm keeps it
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.networks.get(GATEWAY_BRIDGE).remove()
