"""Least privilege for the Docker socket (issue 11, item 6): labelsync runs behind a
read-only socket proxy that allows only the GET endpoints the README lists, in the
manner of docker-socket-proxy with `CONTAINERS=1 EVENTS=1 INFO=1 NETWORKS=1 SERVICES=1
TASKS=1 POST=0`, and tighter: container inspect (`/containers/<id>/json`, whose `Env`
often holds secrets) is refused too. labelsync routes a container, follows it leaving,
and never asks for anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from tests.e2e.conftest import StartDaemon
from tests.support.containers import ContainerHandle
from tests.support.daemon import wait_routed
from tests.support.docker_relay import DockerRelay
from tests.support.scenario import Scenario, unrouted
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]

# The README's table, "Docker API endpoints": GET only, each with or without /v1.xx.
ALLOWED = re.compile(
    r"^(/v[0-9.]+)?/(_ping|version|info|events|containers/json|networks|services|tasks)"
    r"(\?.*)?$"
)


def read_only(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and ALLOWED.match(path) is not None


def test_labelsync_needs_only_the_documented_read_endpoints(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str, tmp_path: Path
) -> None:
    relay = DockerRelay(tmp_path / "docker.sock", allow=read_only).start()
    try:
        scenario = Scenario(start_daemon, "dynamic", LABELSYNC_DOCKER_HOST=relay.url)
        daemon = scenario.daemon
        web = backend(labels=scenario.labels({"host": unique_host}))
        wait_routed(daemon, unique_host, {web.name})
        web.container.stop(timeout=1)
        wait_until(lambda: unrouted(daemon, unique_host), timeout=15, message="web gone")
        refused = [(m, p) for m, p, allowed in relay.requests if not allowed]
        used = sorted({(m, re.sub(r"\?.*", "", p)) for m, p, ok in relay.requests if ok})
        print(f"\nDocker API requests through the proxy: {used}")
        assert not refused, refused
        assert any("/events" in p for _, p in used) and any(
            "/containers/json" in p for _, p in used
        )
        assert "Docker event stream connected" in daemon.logs()
    finally:
        relay.close()


def test_the_proxy_refuses_what_is_not_listed(tmp_path: Path) -> None:
    """The relay really refuses: writes, inspect and other endpoints get 403."""
    assert read_only("GET", "/v1.41/containers/json?all=1")
    assert read_only("GET", "/_ping")
    assert not read_only("POST", "/v1.41/containers/create")
    assert not read_only("GET", "/v1.41/containers/abc/json")
    assert not read_only("GET", "/v1.41/images/json")
    assert not read_only("DELETE", "/v1.41/containers/abc")
