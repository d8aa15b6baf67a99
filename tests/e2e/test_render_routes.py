"""Labels on real containers -> static Caddy routes -> real requests through a real Caddy.

No daemon here: the test lists containers with `DockerSource`, runs the pure core
(`build_desired` + `render_routes`), and puts the routes into the session Caddy itself, so a
failure points at the label/pool/render path alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from labelsync.caddy.render import RenderOptions, render_routes
from labelsync.core.model import DesiredState, Severity
from labelsync.core.pools import build_desired
from labelsync.sources.docker import DockerSource
from tests.support.caddy import CaddyProcess
from tests.support.containers import ContainerHandle

StartBackend = Callable[..., ContainerHandle]


@pytest.fixture
def source() -> Iterator[DockerSource]:
    docker_source = DockerSource()
    try:
        yield docker_source
    finally:
        docker_source.close()


def desired_for(source: DockerSource, handles: list[ContainerHandle]) -> DesiredState:
    """The desired state of this test's containers only (other tests' may be running)."""
    mine = {handle.id for handle in handles}
    containers = [c for c in source.list_containers() if c.id in mine]
    desired = build_desired(containers, prefix="labelsync", default_network=None, dynamic=False)
    errors = [p for p in desired.problems if p.severity is Severity.ERROR]
    assert not errors, errors
    return desired


def install_routes(caddy: CaddyProcess, host: str, desired: DesiredState) -> list[dict[str, Any]]:
    """Replace this test's routes in the session Caddy with the rendered static routes."""
    routes = render_routes(desired, RenderOptions(upstreams="static"))
    caddy.delete_routes_with_host({host})
    caddy.add_routes(routes)
    return routes


def upstream_dials(routes: list[dict[str, Any]]) -> list[str]:
    """The `dial` addresses of the (single) route's reverse_proxy, in order."""

    def walk(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            if node.get("handler") == "reverse_proxy":
                yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    proxies = list(walk(routes))
    assert len(proxies) == 1, proxies
    return [str(upstream["dial"]) for upstream in proxies[0]["upstreams"]]


def answers(caddy: CaddyProcess, host: str, count: int, path: str = "/") -> list[str]:
    """Who answered each of `count` sequential requests."""
    names = []
    for _ in range(count):
        response = caddy.request(host, path)
        assert response.status_code == 200, response.text
        names.append(response.text.strip())
    return names


@pytest.fixture
def cleanup_host(caddy: CaddyProcess) -> Iterator[set[str]]:
    """Hosts whose routes are removed from the session Caddy when the test ends."""
    hosts: set[str] = set()
    yield hosts
    if hosts:
        caddy.delete_routes_with_host(hosts)


def test_round_robin_cycles_through_three_backends_in_order(
    backend: StartBackend,
    source: DockerSource,
    caddy: CaddyProcess,
    unique_host: str,
    cleanup_host: set[str],
) -> None:
    """Scenario: `docker compose up --scale web=3` with lb.policy=round_robin."""
    cleanup_host.add(unique_host)
    labels = {"labelsync.host": unique_host, "labelsync.lb.policy": "round_robin"}
    handles = [backend(name="rr", labels=labels) for _ in range(3)]
    routes = install_routes(caddy, unique_host, desired_for(source, handles))

    name_by_dial = {handle.address(8080): handle.name for handle in handles}
    upstream_order = [name_by_dial[dial] for dial in upstream_dials(routes)]
    assert sorted(upstream_order) == sorted(h.name for h in handles)

    seen = answers(caddy, unique_host, 7)
    # Every request goes to the member after the previous one: 1 -> 2 -> 3 -> 1 ...
    start = upstream_order.index(seen[0])
    expected = [upstream_order[(start + i) % 3] for i in range(7)]
    assert seen == expected


def test_first_policy_sends_everything_to_the_preferred_member(
    backend: StartBackend,
    source: DockerSource,
    caddy: CaddyProcess,
    unique_host: str,
    cleanup_host: set[str],
) -> None:
    """Scenario: primary/standby with lb.policy=first; `order` beats creation time."""
    cleanup_host.add(unique_host)

    def start(order: int) -> ContainerHandle:
        return backend(
            name=f"first{order}",
            labels={
                "labelsync.host": unique_host,
                "labelsync.lb.policy": "first",
                "labelsync.order": str(order),
            },
        )

    # Created oldest first, so creation time alone would pick `third`.
    third, primary, second = start(30), start(10), start(20)
    handles = [third, primary, second]
    install_routes(caddy, unique_host, desired_for(source, handles))
    assert answers(caddy, unique_host, 6) == [primary.name] * 6

    # The primary goes away: the next in `order` takes everything.
    primary.container.kill()
    install_routes(caddy, unique_host, desired_for(source, handles))
    assert answers(caddy, unique_host, 6) == [second.name] * 6


def test_path_routes_of_one_container_reach_their_own_ports(
    backend: StartBackend,
    source: DockerSource,
    caddy: CaddyProcess,
    unique_host: str,
    cleanup_host: set[str],
) -> None:
    """Scenario: one container, the default route on one port and `/api/*` on another."""
    cleanup_host.add(unique_host)
    handle = backend(
        name="paths",
        ports=[8080, 9090],
        labels={
            "labelsync.host": unique_host,
            "labelsync.port": "8080",
            "labelsync.route.api.path": "/api/*",
            "labelsync.route.api.port": "9090",
        },
    )
    install_routes(caddy, unique_host, desired_for(source, [handle]))
    for path, port in (("/", "8080"), ("/api/users", "9090"), ("/other", "8080")):
        response = caddy.request(unique_host, path)
        assert (response.status_code, response.text.strip()) == (200, handle.name)
        assert response.headers["x-request-path"] == path
        assert response.headers["x-server-port"] == port
