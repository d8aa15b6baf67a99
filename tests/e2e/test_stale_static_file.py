"""A static file that breaks under a running `labelsync run`: the last good route keeps
serving, and the break is visible outside the log — `labelsync status` (text and JSON),
`/healthz` and the dashboard page in a real browser — until the file is fixed.

The whole path only a running daemon has: the file watch wakes the loop, the sync puts
the problem into the state file and the live view, and the page draws it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import StartDaemon
from tests.support.browser import Chromium, chromium_path
from tests.support.caddy import LOG_DIR, free_port
from tests.support.daemon import wait_routed
from tests.support.loopback import LoopbackBackend
from tests.support.requirements import skip_or_fail_under_ci
from tests.support.waiting import wait_until

NOTES = "[...document.querySelectorAll('#notes [data-stale]')].map((n) => n.textContent)"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    if chromium_path() is None:
        skip_or_fail_under_ci("chromium is not installed (scripts/ensure-browser.sh)")
    LOG_DIR.mkdir(exist_ok=True)
    with Chromium.launch(tmp_path / "profile", log=LOG_DIR / "chromium.log") as chromium:
        yield chromium


def test_a_broken_static_file_is_reported_stale_and_clears_when_fixed(
    start_daemon: StartDaemon, tmp_path: Path, browser: Chromium
) -> None:
    metrics, dashboard = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    routes = tmp_path / "routes.toml"
    with LoopbackBackend("static-one") as backend:
        host = f"stale-{free_port()}.test"
        routes.write_text(f'[routes.site]\nhost = "{host}"\nupstreams = ["{backend.address}"]\n')
        daemon = start_daemon(
            "static",
            env={
                "LABELSYNC_STATIC_FILE": str(routes),
                "LABELSYNC_METRICS_LISTEN": metrics,
                "LABELSYNC_DASHBOARD_LISTEN": dashboard,
            },
        )
        wait_routed(daemon, host, {"static-one"})

        routes.write_text('[routes.site\nhost = "broken"\n')

        def stale() -> dict[str, Any] | None:
            done = daemon.cli("status", "--json")
            assert done.returncode == 0, done.stderr
            report = dict(json.loads(done.stdout))
            return report if report["warnings"] else None

        report = wait_until(stale, timeout=15, interval=0.2, message="status: a stale file")
        (warning,) = report["warnings"]
        assert warning.startswith(
            f"static file {routes}: not valid TOML: Expected ']' at the end of a table "
            "declaration (at line 1, column 13); stale since "
        )
        assert warning.endswith("Z: keeping the last good version (its routes still serve)")
        assert warning in [p["text"] for p in report["other_problems"]]
        wait_routed(daemon, host, {"static-one"})  # the last good route still serves

        text = daemon.cli("status")
        assert text.returncode == 0, text.stderr
        assert f"  STALE: {warning}\n" in text.stdout
        assert f"  error: {warning}\n" in text.stdout

        healthz = httpx.get(f"http://{metrics}/healthz", timeout=10, trust_env=False)
        assert healthz.status_code == 200, healthz.text
        assert healthz.json()["status"] == "degraded"
        assert healthz.json()["warnings"] == [warning]

        browser.navigate(f"http://{dashboard}/")
        wait_until(lambda: browser.evaluate(NOTES) == [warning], timeout=15)
        assert "1 stale config file(s)" in browser.evaluate(
            "document.getElementById('reach').textContent"
        )
        browser.screenshot(LOG_DIR / "dashboard-stale-static-file.png")

        routes.write_text(f'[routes.site]\nhost = "{host}"\nupstreams = ["{backend.address}"]\n')
        wait_until(lambda: stale() is None, timeout=15, interval=0.2, message="fixed")
        healthz = httpx.get(f"http://{metrics}/healthz", timeout=10, trust_env=False)
        assert (healthz.status_code, healthz.json()["warnings"]) == (200, [])
        wait_until(lambda: browser.evaluate(NOTES) == [], timeout=15)
