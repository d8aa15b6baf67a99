"""`labelsync run` keeps Caddy in step with Docker: start, stop, scale, in both modes."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import StartDaemon
from tests.support.caddy import CaddyProcess, free_port
from tests.support.containers import ContainerHandle, short_uuid
from tests.support.daemon import wait_routed, wait_settled
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]
MODES = ["dynamic", "static"]


@pytest.mark.parametrize("mode", MODES)
def test_started_container_is_routed_and_stopped_one_is_not(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: a labelled container becomes routable after start, and not after stop."""
    daemon = start_daemon(upstreams=mode)
    labels = {"labelsync.host": unique_host, "labelsync.lb.policy": "round_robin"}
    first = backend(labels=labels)
    wait_routed(daemon, unique_host, {first.name})
    first.container.stop(timeout=1)
    wait_routed(daemon, unique_host, set())


@pytest.mark.parametrize("mode", MODES)
def test_scale_one_to_five_to_one(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: `--scale web=5` then back to 1: every replica joins, the extras leave."""
    daemon = start_daemon(upstreams=mode)
    labels = {"labelsync.host": unique_host, "labelsync.lb.policy": "round_robin"}
    replicas = [backend(labels=labels)]
    wait_routed(daemon, unique_host, {replicas[0].name})
    if mode == "dynamic":
        wait_settled(daemon, filled={unique_host})  # the first member's fallback write
    etag = daemon.config_etag()
    replicas += [backend(labels=labels) for _ in range(4)]
    wait_routed(daemon, unique_host, {r.name for r in replicas})
    for extra in replicas[1:]:
        extra.container.remove(force=True)
    wait_routed(daemon, unique_host, {replicas[0].name})
    if mode == "dynamic":
        assert daemon.config_etag() == etag, "scaling wrote Caddy config in dynamic mode"


def test_two_caddy_endpoints_are_fed_by_one_docker_event_stream(
    start_daemon: StartDaemon,
    caddy: CaddyProcess,
    caddy_factory: Callable[[], CaddyProcess],
    backend: StartBackend,
    unique_host: str,
) -> None:
    """`LABELSYNC_CADDY_ADMIN=a,b`: both Caddies get the routes, from one event stream."""
    second = caddy_factory()
    name = f"ls-two-{short_uuid()}"
    # Each Caddy listens on its own port: the server exists in the second one already.
    second.admin(
        "PUT",
        f"/config/apps/http/servers/{name}",
        {"listen": [f"127.0.0.1:{free_port()}"], "automatic_https": {"disable": True}},
    )
    daemon = start_daemon(
        upstreams="static",
        name=name,
        env={"LABELSYNC_CADDY_ADMIN": f"{caddy.admin_url},{second.admin_url}"},
    )
    first = backend(labels={"labelsync.host": unique_host})
    wait_routed(daemon, unique_host, {first.name})

    def second_routes_it() -> bool:
        routes = second.get_config(f"apps/http/servers/{name}/routes") or []
        return any(unique_host in r["match"][0]["host"] for r in routes)

    wait_until(second_routes_it, timeout=10, message="the second Caddy to get the route")
    assert daemon.logs().count("Docker event stream connected") == 1
