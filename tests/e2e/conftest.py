"""End-to-end fixtures: real `labelsync run` processes against the session Caddy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.browser import Chromium, chromium_path
from tests.support.caddy import LOG_DIR, CaddyProcess
from tests.support.containers import short_uuid, slug
from tests.support.daemon import Daemon
from tests.support.requirements import skip_or_fail_under_ci

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


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    """Headless Chromium with a fresh profile (tests/support/browser.py); skipped without
    it, failed under CI. Log: `.test-logs/chromium.log`."""
    if chromium_path() is None:
        skip_or_fail_under_ci("chromium is not installed (scripts/ensure-browser.sh)")
    LOG_DIR.mkdir(exist_ok=True)
    with Chromium.launch(tmp_path / "profile", log=LOG_DIR / "chromium.log") as chromium:
        yield chromium
