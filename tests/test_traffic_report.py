"""Traffic per pool where users read it (issue 18): the daemon's snapshot and state file,
`status` (table and `--json`), `explain`, and `/metrics`, from a book the loop filled."""

from __future__ import annotations

import json
from typing import Any

from labelsync.app.explain import render
from labelsync.core.caddy_metrics import MetricsState, how_to_count
from labelsync.core.model import ContainerInfo
from labelsync.core.pools import build_desired
from labelsync.core.traffic import SAMPLE_INTERVAL, CaddyCounting, TrafficBook
from labelsync.loop.reconcile import SyncState
from labelsync.report.metrics import Metrics
from labelsync.report.snapshot import LiveView, Snapshot
from labelsync.report.status_report import StatusReport, build_report, render_table, report_json
from labelsync.settings import Settings
from tests.support.caddy_counters import Counters
from tests.support.snapshots import FakeLoop


def web(name: str, host: str, ip: str, **labels: str) -> ContainerInfo:
    return ContainerInfo(
        id=name * 8,
        name=name,
        created=1.0,
        labels={"labelsync.host": host, **labels},
        networks={"bridge": ip},
        exposed_ports=(8080,),
    )


def loop() -> FakeLoop:
    containers = (
        web("web-1", "app.test", "10.0.0.5"),
        web("web-2", "app.test", "10.0.0.6"),
        web("api-1", "app.test", "10.0.0.7", **{"labelsync.path": "/api/*"}),
        web("other-1", "other.test", "10.0.0.8"),
    )
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.containers, state.desired = containers, build_desired(containers)
    state.synced.set()
    return FakeLoop(state)


def counted_book() -> TrafficBook:
    """20 requests to app.test, 5 of them failing; 2 under `_other`."""
    caddy, book = Counters("app.test", "other.test"), TrafficBook()
    book.set_counting(caddy.endpoint, CaddyCounting(MetricsState.ON))
    caddy.read_into(book, at=1_767_225_600.0)
    book.tick(0.0)
    caddy.serve("app.test", n=15, seconds=0.004)
    caddy.serve("app.test", 500, n=5, seconds=0.2)
    caddy.serve("app.test:8080", n=2)
    caddy.read_into(book)
    book.tick(SAMPLE_INTERVAL)
    return book


def status_of(snapshot: Snapshot) -> dict[str, Any]:
    """`status --json` as another process builds it, from the state file's JSON."""
    read_back = Snapshot.from_json(json.loads(json.dumps(snapshot.to_json())))
    report = build_report(
        caddy_admin="a",
        caddy_server="labelsync",
        routes=None,
        upstreams=[],
        caddy_health=None,
        snapshot=read_back,
    )
    return report_json(report)


def test_status_json_and_the_table_show_each_pools_traffic_from_the_state_file() -> None:
    view = LiveView([loop()], settings=Settings(), traffic=counted_book())
    body = status_of(view.snapshot())
    pools = {(p["hosts"][0], p["path"]): p for p in body["pools"]}
    app = pools[("app.test", None)]["traffic"]
    assert (app["requests"], app["failed"], app["responses"]) == (20, 5, {"2xx": 15, "5xx": 5})
    assert app["series"] == {"interval_seconds": 5.0, "requests": [20], "failed": [5]}
    assert app["last_minute"]["requests_per_second"] == 4.0
    assert app["last_minute"]["p50_ms"] is not None and app["last_minute"]["p95_ms"] >= 100
    # The /api/* pool is on the same host: the host's numbers, and both pools say so.
    api = pools[("app.test", "/api/*")]["traffic"]
    assert api["requests"] == 20 and api["shared_with"] == [pools[("app.test", None)]["id"]]
    assert "Caddy counts per host" in app["note"]
    assert pools[("other.test", None)]["traffic"]["requests"] == 0
    overview = body["traffic"]
    assert overview["caddy_metrics"] == "on" and overview["since"] == "2026-01-01T00:00:00+00:00"
    assert overview["other_requests"] == 2 and "app.localhost:8080" in overview["notes"][0]
    # Members: Caddy keeps no totals per upstream.
    assert all(m["total_requests"] is None for p in body["pools"] for m in p["members"])

    table = render_table(build_report_from(view.snapshot()))
    assert "requests counted since 2026-01-01T00:00:00+00:00" in table
    assert "  traffic: 20 request(s), 5 failed (5xx), 0 proxy error(s)" in table
    assert "last 5 s: 4.00 req/s, 1.00 failed/s, p50" in table
    assert "note: 2 request(s) to labelsync's routes were counted" in table


def build_report_from(snapshot: Snapshot | None) -> StatusReport:
    return build_report(
        caddy_admin="a",
        caddy_server="labelsync",
        routes=None,
        upstreams=[],
        caddy_health=None,
        snapshot=snapshot,
    )


def test_explain_shows_the_pool_traffic_of_each_route() -> None:
    view = LiveView([loop()], settings=Settings(), traffic=counted_book())
    body = status_of(view.snapshot())
    (verdict,) = [c for c in body["containers"] if c["name"] == "web-1"]
    (route,) = verdict["routes"]
    assert route["traffic"]["requests"] == 20 and route["traffic"]["series"] is None
    text = render(verdict, [])
    assert "pool traffic since labelsync started: 20 request(s), 5 failed (5xx)" in text


def test_without_counting_the_pages_say_how_to_turn_it_on() -> None:
    book = TrafficBook()
    fix = how_to_count(MetricsState.OFF, bundled=False)
    book.set_counting("http://localhost:2019", CaddyCounting(MetricsState.OFF, fix))
    view = LiveView([loop()], settings=Settings(), traffic=book)
    body = status_of(view.snapshot())
    assert all(pool["traffic"] is None for pool in body["pools"])
    assert body["traffic"]["caddy_metrics"] == "off"
    assert body["traffic"]["notes"] == [fix]
    table = render_table(build_report_from(view.snapshot()))
    assert f"note: {fix}" in table and "traffic:" not in table
    # Without a daemon there is nothing counted, and nothing said about it.
    bare = report_json(build_report_from(None))
    assert bare["traffic"] is None


async def test_metrics_add_the_pool_to_host_mapping_only() -> None:
    """Caddy's own `/metrics` has the counts per host; labelsync's says which pool a host
    belongs to, and exports no request counts of its own."""
    view = LiveView([loop()], settings=Settings(), traffic=counted_book())
    metrics = Metrics(view, [])
    text = (await metrics.exposition()).decode()
    hosts = [line for line in text.splitlines() if line.startswith("labelsync_pool_host{")]
    assert len(hosts) == 3 and all(line.endswith(" 1.0") for line in hosts)
    assert 'host="app.test"' in hosts[0]
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert not [name for name in names if "http_request" in name or "latency" in name]
