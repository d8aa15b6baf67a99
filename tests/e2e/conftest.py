"""End-to-end fixtures: real `labelsync run` processes against the session Caddy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.caddy import CaddyProcess
from tests.support.containers import short_uuid, slug
from tests.support.daemon import Daemon

StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(
    caddy: CaddyProcess, docker_client: Any, request: pytest.FixtureRequest
) -> Iterator[StartDaemon]:
    """Factory: `start_daemon(upstreams="dynamic", env={...}, wait_synced=True) -> Daemon`.

    Each daemon owns a Caddy server named after the test; all are stopped (SIGTERM) and
    their servers removed when the test ends. Logs: `.test-logs/daemon-<name>.log`.
    """
    started: list[Daemon] = []

    def start(
        upstreams: str = "dynamic",
        env: dict[str, str] | None = None,
        wait_synced: bool = True,
        name: str | None = None,
    ) -> Daemon:
        server = name or f"ls-{slug(request.node.name, 24)}-{short_uuid()}"
        daemon = Daemon(caddy, name=server, upstreams=upstreams, env=env)
        started.append(daemon)
        return daemon.start(wait_synced=wait_synced)

    try:
        yield start
    finally:
        for daemon in started:
            daemon.close()
