"""Swarm: the tasks of a labelled service are one pool's members, on a real single-node Swarm.

The engine is made a Swarm manager for this module (`docker swarm init`) unless it already
is one, and left again only when this module made it one. Services run the local backend
image on an attachable overlay network.

No request goes through Caddy here: on one node, overlay addresses live in the tasks' own
network namespaces and the host has no route to them (`ip route get` sends them to the
default gateway), so the host's Caddy cannot dial a task. These tests check what labelsync
writes: the members `render` prints and the upstreams the daemon puts into Caddy.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import docker
import docker.errors
import pytest
from docker.models.services import Service

from tests.e2e.conftest import StartDaemon
from tests.support import containers
from tests.support.waiting import wait_until

if TYPE_CHECKING:  # imported at run time, pytest would try to collect `TestImages`
    from tests.support.images import TestImages

SERVICE_PORT = 8080

MakeService = Callable[..., Service]


@pytest.fixture
def overlay_network(
    swarm_manager: None, docker_client: docker.DockerClient, request: pytest.FixtureRequest
) -> Iterator[str]:
    name = f"ls-swarm-{containers.short_uuid()}"
    network = docker_client.networks.create(
        name,
        driver="overlay",
        attachable=True,
        labels={containers.TEST_ID_LABEL: containers.test_id_for(request.node.nodeid)},
    )
    try:
        yield name
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            network.remove()


@pytest.fixture
def make_service(
    docker_client: docker.DockerClient,
    images: TestImages,
    overlay_network: str,
    request: pytest.FixtureRequest,
) -> Iterator[MakeService]:
    """Factory: `make_service(labels, replicas=2, container_labels=None) -> Service` on the
    overlay network; `labels` are the service's (`deploy.labels`), `container_labels` its
    tasks' containers' (`labels:` in a stack file)."""
    created: list[Service] = []

    def make(
        labels: dict[str, str], replicas: int = 2, container_labels: dict[str, str] | None = None
    ) -> Service:
        service = docker_client.services.create(
            images.backend,
            name=f"ls-swarm-{containers.short_uuid()}",
            container_labels=container_labels,
            labels={
                **labels,
                containers.TEST_ID_LABEL: containers.test_id_for(request.node.nodeid),
            },
            mode=docker.types.ServiceMode("replicated", replicas=replicas),
            networks=[overlay_network],
        )
        created.append(service)
        return service

    try:
        yield make
    finally:
        for service in created:
            with contextlib.suppress(docker.errors.NotFound):
                service.remove()
        # The engine removes the tasks' containers shortly after; the network stays in use
        # (on this node) until they are gone.
        selectors = [f"com.docker.swarm.service.id={service.id}" for service in created]
        wait_until(
            lambda: (
                not any(
                    docker_client.api.containers(all=True, filters={"label": selector})
                    for selector in selectors
                )
            ),
            timeout=30,
            interval=0.2,
            message="the removed services' containers to go",
        )


def running_tasks(service: Service, network: str) -> dict[str, str]:
    """Task id -> `ip:port` on `network`, of each of the service's running tasks."""
    service.reload()
    addresses = {}
    for task in service.tasks(filters={"desired-state": "running"}):
        if task["Status"]["State"] != "running":
            continue
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["Spec"]["Name"] == network:
                ip = attachment["Addresses"][0].split("/", 1)[0]
                addresses[str(task["ID"])] = f"{ip}:{SERVICE_PORT}"
    return addresses


def wait_running(
    service: Service, network: str, replicas: int, *, replacing: Iterable[str] = ()
) -> dict[str, str]:
    """Wait for `replicas` running tasks, none of them one of the tasks in `replacing`."""
    old = set(replacing)

    def ready() -> dict[str, str] | None:
        tasks = running_tasks(service, network)
        return tasks if len(tasks) == replicas and old.isdisjoint(tasks) else None

    return wait_until(ready, timeout=60, interval=0.2, message=f"{replicas} running tasks")


def proxy_for(config: Any, host: str) -> dict[str, Any] | None:
    """The reverse_proxy handler of the route matching `host`; None when no route does."""
    for route in _routes(config):
        hosts = [h for match in route.get("match", []) for h in match.get("host", [])]
        if host in hosts:
            (handler,) = _reverse_proxies(route)
            return handler
    return None


def dials_for(config: Any, host: str) -> list[str] | None:
    """The upstream dials of the route matching `host`; None when no route matches it."""
    handler = proxy_for(config, host)
    if handler is None:
        return None
    return sorted(str(upstream["dial"]) for upstream in handler.get("upstreams", []))


def policy_for(config: Any, host: str) -> str | None:
    handler = proxy_for(config, host) or {}
    policy = (handler.get("load_balancing") or {}).get("selection_policy", {}).get("policy")
    return None if policy is None else str(policy)


def _routes(config: Any) -> Iterator[dict[str, Any]]:
    if isinstance(config, dict):
        if "match" in config and "handle" in config:
            yield config
        for value in config.values():
            yield from _routes(value)
    elif isinstance(config, list):
        for item in config:
            yield from _routes(item)


def _reverse_proxies(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if node.get("handler") == "reverse_proxy":
            yield node
        for value in node.values():
            yield from _reverse_proxies(value)
    elif isinstance(node, list):
        for item in node:
            yield from _reverse_proxies(item)


def render(swarm: str) -> dict[str, Any]:
    environment = {
        **os.environ,
        "LABELSYNC_UPSTREAMS": "static",
        "LABELSYNC_SWARM": swarm,
        "LABELSYNC_LOG_LEVEL": "WARNING",
    }
    done = subprocess.run(
        [sys.executable, "-m", "labelsync.app.cli", "render"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    config: dict[str, Any] = json.loads(done.stdout)
    return config


def test_render_lists_each_running_task_once_with_the_services_labels(
    make_service: MakeService, overlay_network: str, unique_host: str
) -> None:
    """Seed: a 2-replica service labelled on both levels (stack file `labels:` and
    `deploy.labels`) is one pool with one member per task: the local task containers add
    none of their own. With LABELSYNC_SWARM=off only the containers' labels are read."""
    container_labels = {"labelsync.host": unique_host, "labelsync.port": str(SERVICE_PORT)}
    service_labels = {"labelsync.lb.policy": "round_robin"}
    service = make_service(service_labels, replicas=2, container_labels=container_labels)
    tasks = wait_running(service, overlay_network, 2)

    config = render("auto")
    assert dials_for(config, unique_host) == sorted(tasks.values())
    assert policy_for(config, unique_host) == "round_robin"

    config = render("off")
    assert dials_for(config, unique_host) == sorted(tasks.values())
    assert policy_for(config, unique_host) != "round_robin"


def docker_service(*arguments: str) -> None:
    """The docker CLI, as users change services (docker-py's `update` re-sends a partial
    spec, which replaces every task)."""
    subprocess.run(
        ["docker", "service", *arguments, "--detach"], check=True, timeout=30, capture_output=True
    )


def test_daemon_follows_scaling_rolling_updates_and_keeps_the_route_at_zero(
    make_service: MakeService,
    overlay_network: str,
    start_daemon: StartDaemon,
    unique_host: str,
) -> None:
    """Seed: `docker service scale web=3`, `docker service update --force web`, then
    `scale web=0`: a new task joins once Swarm says it runs, a rolling update ends on the
    new tasks only, and scaling to zero keeps the route (like stopping a compose service)."""
    labels = {"labelsync.host": unique_host, "labelsync.port": str(SERVICE_PORT)}
    service = make_service(labels, replicas=2)
    two = wait_running(service, overlay_network, 2)
    daemon = start_daemon(upstreams="static")

    def dials_are(tasks: dict[str, str]) -> Callable[[], bool]:
        return lambda: dials_for(daemon.routes(), unique_host) == sorted(tasks.values())

    wait_until(dials_are(two), timeout=20, message="two task members")

    docker_service("scale", f"{service.name}=3")
    three = wait_running(service, overlay_network, 3)
    assert two.items() < three.items()
    wait_until(dials_are(three), timeout=20, message="three task members")

    docker_service("update", "--force", service.name)
    replaced = wait_running(service, overlay_network, 3, replacing=three)
    wait_until(dials_are(replaced), timeout=20, message="the updated tasks as members")

    docker_service("scale", f"{service.name}=0")
    wait_until(dials_are({}), timeout=30, message="no task members, the route kept")
