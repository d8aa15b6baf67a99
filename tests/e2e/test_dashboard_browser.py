"""The dashboard in a real browser: headless Chromium loads it from a running `labelsync run`
with real containers, sees the pools, members and the containers that are not routed, and
watches the page change by itself when a member turns unhealthy and when one stops.
Screenshots go to `.test-logs/dashboard-*.png`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import StartDaemon
from tests.support.browser import Chromium
from tests.support.caddy import LOG_DIR, free_port
from tests.support.containers import ContainerHandle
from tests.support.daemon import wait_routed
from tests.support.dashboard import dashboard_serving
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]

# What the page shows, read from its DOM (the data-* attributes the page sets).
VIEW = """JSON.stringify({
  loaded: document.body.dataset.loaded === "true",
  pools: [...document.querySelectorAll("#pools [data-pool-id]")].map((p) => ({
    hosts: p.dataset.hosts,
    text: p.querySelector(".card-head").textContent,
    members: Object.fromEntries([...p.querySelectorAll("tr[data-container]")]
      .map((r) => [r.dataset.container, r.dataset.health])),
    why: Object.fromEntries([...p.querySelectorAll("tr[data-container]")]
      .map((r) => [r.dataset.container, r.querySelector(".why").textContent])),
  })),
  unrouted: Object.fromEntries([...document.querySelectorAll("#unrouted [data-container]")]
    .map((c) => [c.dataset.container, c.textContent])),
  problems: [...document.querySelectorAll("#problems [data-problems-of]")]
    .map((c) => c.textContent),
  reach: document.getElementById("reach").textContent,
  text: document.body.innerText,
})"""


def view(browser: Chromium) -> dict[str, Any]:
    return dict(json.loads(browser.evaluate(VIEW)))


def pool_with(page: dict[str, Any], host: str) -> dict[str, Any] | None:
    return next((p for p in page["pools"] if host in p["hosts"].split(",")), None)


def explain(env: dict[str, str], container: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "labelsync.app.cli", "explain", container],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def watch(browser: Chromium, check: Callable[[dict[str, Any]], bool], message: str) -> float:
    """Seconds until the page (redrawing by itself) satisfies `check`."""
    started = time.monotonic()
    wait_until(lambda: check(view(browser)), timeout=15, interval=0.05, message=message)
    return time.monotonic() - started


def test_dashboard_shows_pools_members_and_why_and_follows_changes(
    start_daemon: StartDaemon,
    backend: StartBackend,
    make_host: Callable[[str], str],
    browser: Chromium,
    tmp_path: Path,
) -> None:
    canary = f"secret-{uuid.uuid4().hex}"
    port = free_port()
    daemon = start_daemon(
        env={"LABELSYNC_DASHBOARD_LISTEN": f"127.0.0.1:{port}", "DASHBOARD_CANARY": canary}
    )
    app, api, typo_host, off_host = (make_host(n) for n in ("app", "api", "typo", "off"))
    checks = {
        "labelsync.health.path": "/health",
        "labelsync.health.interval": "300ms",
        "labelsync.health.timeout": "1s",
    }
    app_labels = {"labelsync.host": app, "labelsync.lb.policy": "round_robin", **checks}
    steady = backend("steady", labels={**app_labels, "other.token": canary}, env={"T": canary})
    flaky = backend("flaky", labels=app_labels)
    api_backend = backend("api", labels={"labelsync.host": api, "labelsync.path": "/api/*"})
    typo = backend("typo", labels={"labelsync.hots": typo_host})
    off = backend("off", labels={"labelsync.host": off_host, "labelsync.enable": "false"})
    wait_routed(daemon, app, {steady.name, flaky.name})

    browser.navigate(f"http://127.0.0.1:{port}/")

    def ready(page: dict[str, Any]) -> bool:
        pool = pool_with(page, app)
        members = pool["members"] if pool else {}
        return members == {steady.name: "healthy", flaky.name: "healthy"} and bool(
            pool_with(page, api)
        )

    watch(browser, ready, "the app pool with two healthy members")

    def explained(page: dict[str, Any]) -> bool:
        # The last containers started may reach the page a sync after the app pool.
        unrouted = set(page["unrouted"])
        return {typo.name, off.name} <= unrouted and api_backend.name not in unrouted

    watch(browser, explained, "the typo and enable=false containers listed as not routed")
    page = view(browser)
    app_pool, api_pool = pool_with(page, app), pool_with(page, api)
    assert app_pool is not None and api_pool is not None
    assert "policy round_robin" in app_pool["text"] and "dynamic" in app_pool["text"]
    assert "/api/*" in api_pool["text"]
    assert "active check passing" in app_pool["why"][steady.name]
    # (the engine is shared: other tests' containers may be listed too)
    assert {typo.name, off.name} <= set(page["unrouted"])
    assert not {steady.name, flaky.name} & set(page["unrouted"])
    assert "did you mean 'labelsync.host'?" in page["unrouted"][typo.name]
    assert "switched off: labelsync.enable='false'" in page["unrouted"][off.name]
    assert any(typo.name in text for text in page["problems"])
    for pill in ("Docker up", "Caddy up", "last apply ok"):
        assert pill in page["reach"]
    assert "Total requests are not shown" in page["text"]
    browser.screenshot(LOG_DIR / "dashboard-initial.png")

    # The same JSON as `status --json`, without secrets: no environment, no label outside
    # the prefix, nothing of the containers' environment.
    api_body = httpx.get(f"http://127.0.0.1:{port}/api/status", trust_env=False).text
    for text in (api_body, page["text"]):
        assert canary not in text and "other.token" not in text and "io.labelsync" not in text

    # `labelsync explain` gives the same verdicts, from the daemon's state or from Docker.
    routed = explain(daemon.env, api_name := api_backend.name)
    assert routed.returncode == 0, routed.stdout + routed.stderr
    assert routed.stdout.startswith(f"{api_name} (") and ": routed" in routed.stdout
    by_id = explain(daemon.env, off.id[:10])
    assert by_id.returncode == 1
    assert "why: switched off: labelsync.enable='false'" in by_id.stdout
    assert "fix: remove labelsync.enable" in by_id.stdout
    alone = explain({**daemon.env, "LABELSYNC_STATE_FILE": str(tmp_path / "none.json")}, typo.name)
    assert alone.returncode == 1
    assert "did you mean 'labelsync.host'?" in alone.stdout
    assert "labelsync is not running" in alone.stdout
    missing = explain(daemon.env, f"no-such-{uuid.uuid4().hex}")
    assert missing.returncode == 2 and "no container is named" in missing.stderr

    # A member turns unhealthy: the page shows it by itself, with why.
    flaky.set_healthy(False)
    unhealthy = watch(
        browser,
        lambda p: (pool_with(p, app) or {}).get("members", {}).get(flaky.name) == "unhealthy",
        "the flaky member to show unhealthy",
    )
    page = view(browser)
    assert "503" in (pool_with(page, app) or {})["why"][flaky.name]

    # A member stops: it leaves the pool on the page and is listed as not routed.
    stopped_at = time.monotonic()
    steady.container.stop(timeout=1)
    stop_seen = time.monotonic() - stopped_at
    left = watch(
        browser,
        lambda p: (
            steady.name not in (pool_with(p, app) or {}).get("members", {"x": 1})
            and "container is exited" in p["unrouted"].get(steady.name, "")
        ),
        "the stopped member to leave its pool and be listed as not routed",
    )
    browser.screenshot(LOG_DIR / "dashboard-after.png")
    assert not [line for line in browser.console if line.startswith("exception")], browser.console
    print(
        f"\ndashboard: unhealthy shown {unhealthy:.2f}s after the check started failing; "
        f"stop shown {left + stop_seen:.2f}s after `docker stop` began ({stop_seen:.2f}s of it "
        "the stop itself)"
    )


def synthetic_report(pools: int) -> dict[str, Any]:
    """A report of `pools` pools with two members each, one in three unhealthy."""
    report: dict[str, Any] = {
        "version": 1,
        "caddy": {"admin": "http://127.0.0.1:2019", "server": "labelsync"},
        "daemon": {
            "pid": 1,
            "upstreams": "dynamic",
            "docker_up": True,
            "caddy_up": True,
            "last_apply_ok": True,
            "last_error": None,
            "updated": "2026-01-01T00:00:00.000+00:00",
        },
        "pools": [],
        "notes": [],
        "containers": [],
        "other_problems": [],
    }
    for n in range(pools):
        members = []
        for m in range(2):
            unhealthy = (n * 2 + m) % 3 == 0
            members.append(
                {
                    "container": f"svc-{n:03d}-{m}",
                    "origin": "container",
                    "address": f"172.20.{n // 250}.{n % 250 + m}:8080",
                    "health": "unhealthy" if unhealthy else "healthy",
                    "reason": "active check failing: status 503" if unhealthy else "passing",
                    "active_requests": m,
                    "failures": 0,
                    "total_requests": None,
                    "caddy_upstream": None,
                }
            )
        report["pools"].append(
            {
                "id": f"labelsync-svc-{n:03d}-test-0000{n:04d}",
                "hosts": [f"svc-{n:03d}.test"],
                "path": None,
                "policy": "round_robin",
                "upstreams": "dynamic",
                "note": None,
                "members": members,
            }
        )
    return report


def test_dashboard_at_500_pools_draws_and_filters(browser: Chromium) -> None:
    """500 pools: the page draws them (300 at once, the rest behind the filter) and the
    filter finds one pool by host and one member by container name."""
    with dashboard_serving(synthetic_report(500)) as port:
        started = time.monotonic()
        browser.navigate(f"http://127.0.0.1:{port}/")
        count = "document.querySelectorAll('#pools [data-pool-id]').length"
        wait_until(lambda: browser.evaluate(count) == 300, timeout=15, message="300 pool cards")
        drawn = time.monotonic() - started
        assert "200 more pool(s) match" in browser.evaluate("document.body.innerText")
        set_filter = (
            "(() => { const f = document.getElementById('filter'); f.value = %s;"
            " f.dispatchEvent(new Event('input')); return true; })()"
        )
        browser.evaluate(set_filter % json.dumps("svc-417.test"))
        assert browser.evaluate(count) == 1
        browser.evaluate(set_filter % json.dumps("svc-042-1"))
        rows = (
            "[...document.querySelectorAll('#pools tr[data-container]')]"
            ".map((r) => r.dataset.container)"
        )
        assert browser.evaluate(rows) == ["svc-042-1"]
        browser.screenshot(LOG_DIR / "dashboard-500-filtered.png")
        print(f"\ndashboard: 500 pools loaded and drawn in {drawn:.2f}s")
