"""Traffic per pool (issue 18) against a real Caddy, real containers and a real
`labelsync run`: after N requests through Caddy, some of them answered 500 by the member,
the dashboard (headless Chromium), `status --json` and `explain` show N and the failures
for that pool, within one refresh. labelsync writes to Caddy twice in between (two new
pools), and each write restarts Caddy's counters: the requests sent just before still
count. Screenshot: `.test-logs/dashboard-traffic.png`."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from labelsync.core.traffic import SAMPLE_INTERVAL
from tests.support.browser import Chromium
from tests.support.caddy import LOG_DIR, CaddyProcess, free_port
from tests.support.containers import ContainerHandle, short_uuid
from tests.support.daemon import Daemon, wait_routed
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]

# One refresh: the daemon reads Caddy's counters every SAMPLE_INTERVAL and writes its state
# file within a second; the page polls every second.
ONE_REFRESH = SAMPLE_INTERVAL + 2.5

# The pool card's traffic figures, as the page sets them (dashboard.js, `trafficLine`).
CARD = """JSON.stringify([...document.querySelectorAll("#pools [data-pool-id]")]
  .filter((card) => card.dataset.hosts.split(",").includes(%s))
  .map((card) => {
    const traffic = card.querySelector(".traffic");
    return traffic && {requests: Number(traffic.dataset.requests),
      failed: Number(traffic.dataset.failed), text: traffic.textContent,
      lines: traffic.querySelectorAll("svg.spark polyline").length};
  })[0] || null)"""


@dataclass
class Sent:
    """Every request the test sent to one host, by the status Caddy answered."""

    statuses: list[int] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return len(self.statuses)

    @property
    def failed(self) -> int:
        return sum(1 for status in self.statuses if status >= 500)


def traffic_of(daemon: Daemon, host: str) -> dict[str, Any] | None:
    pools = [p for p in daemon.status_json()["pools"] if p["hosts"] == [host]]
    return pools[0]["traffic"] if pools else None


def routed(daemon: Daemon, host: str) -> bool:
    """Caddy holds a route of the daemon's for `host`."""
    return any(
        host in matcher.get("host", [])
        for route in daemon.routes()
        for matcher in route.get("match", [])
    )


@pytest.fixture
def counting_daemon(caddy_factory: Callable[[], CaddyProcess]) -> Iterator[tuple[Daemon, int]]:
    """A daemon that turns per-host metrics on in a Caddy of its own (whose counters no
    other test's writes restart), with its dashboard; and the dashboard's port."""
    port = free_port()
    env = {"LABELSYNC_CADDY_METRICS": "on", "LABELSYNC_DASHBOARD_LISTEN": f"127.0.0.1:{port}"}
    daemon = Daemon(caddy_factory(), name=f"ls-traffic-{short_uuid()}", env=env)
    try:
        yield daemon.start(), port
    finally:
        daemon.close()


def test_requests_and_failures_per_pool_reach_the_page_status_and_explain(
    counting_daemon: tuple[Daemon, int],
    backend: StartBackend,
    make_host: Callable[[str], str],
    browser: Chromium,
) -> None:
    daemon, port = counting_daemon
    wait_until(
        lambda: (daemon.status_json().get("traffic") or {}).get("caddy_metrics") == "on",
        timeout=SAMPLE_INTERVAL * 3,
        interval=0.25,
        message="labelsync to turn on Caddy's per-host metrics (LABELSYNC_CADDY_METRICS=on)",
    )
    app = make_host("app")
    member = backend("web", labels={"labelsync.host": app})
    sent = Sent()

    def send(path: str = "/") -> None:
        response = daemon.request(app, path, timeout=5.0)  # `Host: <app>`, no port
        sent.statuses.append(response.status_code)

    # Once Caddy holds the pool's route every request goes through it, and counts (a 502
    # while the member is not yet dialled too); before, Caddy answers no route's requests.
    wait_until(lambda: routed(daemon, app), timeout=15, message=f"Caddy to hold {app}'s route")

    def answered() -> bool:
        send()
        return sent.statuses[-1] == 200

    wait_until(answered, timeout=15, message=f"{app} to reach {member.name}")
    for round_ in range(2):
        for _ in range(6):
            send()
        for _ in range(2):
            send("/status/500")
        # A new pool right after: one admin write, and Caddy's counters start again.
        other = make_host(f"other{round_}")
        wait_routed(daemon, other, {backend("other", labels={"labelsync.host": other}).name})
    for _ in range(3):
        send("/status/500")
    last_sent = time.monotonic()
    assert sent.requests >= 20 and sent.failed == 7

    def counted() -> dict[str, Any] | None:
        traffic = traffic_of(daemon, app)
        if traffic is None or traffic["requests"] < sent.requests:
            return None
        return traffic

    traffic = wait_until(counted, timeout=ONE_REFRESH + 5, interval=0.2, message="counted")
    seen_after = time.monotonic() - last_sent
    assert (traffic["requests"], traffic["failed"]) == (sent.requests, sent.failed)
    assert traffic["responses"] == {"2xx": sent.requests - sent.failed, "5xx": sent.failed}
    assert traffic["last_minute"]["requests_per_second"] > 0
    assert traffic["last_minute"]["p50_ms"] is not None
    assert traffic["hosts"] == [app] and traffic["shared_with"] == []
    assert seen_after <= ONE_REFRESH, f"status showed the counts {seen_after:.1f}s after"

    browser.navigate(f"http://127.0.0.1:{port}/")

    def card() -> dict[str, Any] | None:
        shown = json.loads(browser.evaluate(CARD % json.dumps(app)))
        return shown if shown and shown["requests"] == sent.requests else None

    shown = wait_until(card, timeout=ONE_REFRESH, interval=0.1, message="the page's counts")
    assert shown["failed"] == sent.failed and shown["lines"] == 2  # the sparkline
    assert f"{sent.requests} requests · {sent.failed} failed (5xx)" in shown["text"]
    browser.screenshot(LOG_DIR / "dashboard-traffic.png")
    assert not [line for line in browser.console if line.startswith("exception")]

    explained = daemon.cli("explain", member.name)
    assert explained.returncode == 0, explained.stdout + explained.stderr
    assert (
        f"pool traffic since labelsync started: {sent.requests} request(s), "
        f"{sent.failed} failed (5xx)"
    ) in explained.stdout
    print(
        f"\ntraffic: {sent.requests} requests ({sent.failed} failed) across 2 config writes; "
        f"status showed them {seen_after:.1f}s after the last one"
    )
