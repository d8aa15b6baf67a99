"""Traffic per pool from Caddy's per-host counters (issue 18), in the pure core: reading
Caddy's `/metrics`, the running totals across Caddy's counter restarts, the last minute's
rates and quantiles, which pool a host's numbers belong to, and the JSON of it all."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelsync.core.caddy_metrics import (
    HostCounts,
    MetricsState,
    counted_host,
    how_to_count,
    metrics_state,
    read_http_counts,
    turns_metrics_on,
    with_per_host,
)
from labelsync.core.pool_traffic import describe, pool_traffic, traffic_overview
from labelsync.core.quantile import histogram_quantile
from labelsync.core.traffic import (
    HISTORY_TICKS,
    SAMPLE_INTERVAL,
    CaddyCounting,
    TrafficBook,
)
from labelsync.core.traffic_json import (
    overview_from_json,
    overview_json,
    traffic_from_json,
    traffic_json,
)
from tests.support.caddy_counters import Counters, Served

CADDY_METRICS = Path(__file__).parent / "data" / "caddy-2.11.7-metrics.txt"
ENDPOINT = Counters.endpoint
HOSTS = ("a.test", "b.test", "c.test")


def counting(book: TrafficBook) -> TrafficBook:
    book.set_counting(ENDPOINT, CaddyCounting(MetricsState.ON))
    return book


# -- reading Caddy's /metrics ------------------------------------------------------------------


def test_caddys_real_metrics_read_per_host_for_labelsyncs_server_and_proxy_only() -> None:
    """Captured from Caddy 2.11.7 (tests/data): labelsync's server `labelsync` proxies
    app.localhost (7 x 200, 2 x 500, and a POST with `Host: App.Localhost`), api.localhost
    (3 x 200), gone.localhost (a failed dial: 502, a handler error) and `app.localhost:28080`
    (a port in the Host header: `_other`); a second server answers the proxied requests."""
    reading = read_http_counts(CADDY_METRICS.read_text(), "labelsync")
    assert reading.loaded_at is not None and reading.loaded_at > 1.7e9
    assert set(reading.hosts) == {"app.localhost", "api.localhost", "gone.localhost", "_other"}
    app = reading.hosts["app.localhost"]
    assert (app.requests, app.failed, app.proxy_errors) == (10, 2, 0)
    assert app.responses == {"2xx": 8, "5xx": 2}
    assert app.buckets[math.inf] == 10 and len(app.buckets) == 12
    gone = reading.hosts["gone.localhost"]
    assert (gone.requests, gone.failed, gone.proxy_errors) == (1, 1, 1)
    assert reading.hosts["_other"].requests == 1
    assert read_http_counts(CADDY_METRICS.read_text(), "backend").hosts == {}


def test_a_host_label_counts_for_its_host_without_a_port() -> None:
    assert counted_host("App.Example.COM") == "app.example.com"
    assert counted_host("app.localhost:8443") == "app.localhost"  # an HTTPS server's label
    assert counted_host("[::1]:8443") == "[::1]"
    assert counted_host("_other") == "_other"


def test_what_turns_counting_on_and_what_the_page_says_when_it_is_off() -> None:
    assert metrics_state(None) is MetricsState.OFF
    assert metrics_state({}) is MetricsState.NOT_PER_HOST
    assert metrics_state({"per_host": True}) is MetricsState.ON
    assert with_per_host({"observe_catchall_hosts": False}) == {
        "observe_catchall_hosts": False,
        "per_host": True,
    }
    assert with_per_host(None) == {"per_host": True}
    # Opt-in in the bundled Caddy too: they cost it more than 5 % (docs/performance.md).
    assert not turns_metrics_on("auto", bundled=True)
    assert not turns_metrics_on("auto", bundled=False)
    assert turns_metrics_on("on", bundled=True)
    assert turns_metrics_on("on", bundled=False)
    assert not turns_metrics_on("off", bundled=True)
    external = how_to_count(MetricsState.OFF, bundled=False)
    assert external is not None
    assert "LABELSYNC_CADDY_METRICS=on" in external and "metrics { per_host }" in external
    assert "per_host" in (how_to_count(MetricsState.NOT_PER_HOST, bundled=False) or "")
    assert how_to_count(MetricsState.ON, bundled=False) is None


# -- running totals ------------------------------------------------------------------------------


def test_the_first_read_is_the_baseline_and_a_write_restarts_nothing_that_was_read() -> None:
    caddy, book = Counters(*HOSTS), TrafficBook()
    caddy.serve("a.test", n=4)
    caddy.read_into(book, at=1234.5)  # before labelsync: not its to report
    assert book.host("a.test").total.requests == 0
    assert book.counting_since == 1234.5
    caddy.serve("a.test", n=3)
    caddy.serve("a.test", 500)
    caddy.read_into(book)  # right before a write
    caddy.load()
    caddy.serve("a.test", 502, n=2)
    caddy.read_into(book)
    total = book.host("a.test").total
    assert (total.requests, total.failed) == (6, 3)
    assert total.responses == {"2xx": 3, "5xx": 3}


def test_a_counter_that_fell_is_new_even_without_the_load_time() -> None:
    before = HostCounts(10, 1, {"2xx": 10}, {1.0: 10, math.inf: 10})
    after = HostCounts(3, 0, {"2xx": 3}, {1.0: 3, math.inf: 3})
    assert after.since(before) is None
    assert HostCounts(12, 1, {"2xx": 12}, {1.0: 12, math.inf: 12}).since(before) == HostCounts(
        2, 0, {"2xx": 2}, {1.0: 2, math.inf: 2}
    )
    # A status class that vanished: Caddy started again.
    assert HostCounts(12, 1, {"4xx": 12}, {}).since(HostCounts(10, 1, {"2xx": 10}, {})) is None


class Serve(NamedTuple):
    """`n` requests to `host`, answered `status` after `seconds`."""

    host: str
    status: int
    seconds: float
    n: int


Step = tuple[str, Serve | None]  # "serve" (with what), "read", "load" or "tick"


@st.composite
def histories(draw: st.DrawFn) -> list[Step]:
    """Steps: requests served, reads, and config loads (each right after a read, as the
    writer's hook does), in any order."""
    served = st.builds(
        Serve,
        st.sampled_from(HOSTS),
        st.sampled_from((200, 204, 301, 404, 500, 502)),
        st.sampled_from((0.001, 0.02, 0.3, 4.0, 30.0)),
        st.integers(1, 5),
    )
    step: st.SearchStrategy[Step] = st.one_of(
        served.map(lambda s: ("serve", s)),
        st.sampled_from([("read", None), ("load", None), ("tick", None)]),
    )
    return draw(st.lists(step, max_size=40))


@given(histories(), st.integers(0, 5))
@settings(max_examples=200, deadline=None)
def test_totals_are_every_request_served_since_the_first_read_across_any_restarts(
    steps: list[Step], before_start: int
) -> None:
    caddy, book = Counters(*HOSTS), TrafficBook()
    caddy.serve("a.test", n=before_start)
    caddy.read_into(book)
    expected: dict[str, list[Served]] = {host: [] for host in HOSTS}
    clock = 0.0
    for kind, serve in steps:
        if serve is not None:
            caddy.serve(serve.host, serve.status, serve.seconds, serve.n)
            expected[serve.host] += [Served(serve.host, serve.status, serve.seconds)] * serve.n
        elif kind == "read":
            caddy.read_into(book)
        elif kind == "load":
            caddy.read_into(book)  # the hook: a read right before every write
            caddy.load()
        else:
            clock += SAMPLE_INTERVAL
            book.tick(clock)
    caddy.read_into(book)
    for host, served in expected.items():
        total = book.host(host).total
        assert total.requests == len(served)
        assert total.failed == sum(1 for s in served if s.status >= 500)
        assert sum(total.responses.values()) == len(served)
        assert total.buckets.get(math.inf, 0) == len(served)
        assert total.buckets.get(0.5, 0) == sum(1 for s in served if s.seconds <= 0.5)


def test_a_load_nobody_read_before_loses_what_came_since_the_last_read() -> None:
    """Someone else's write: labelsync reads before its own writes only (docs say so)."""
    caddy, book = Counters(*HOSTS), TrafficBook()
    caddy.read_into(book)
    caddy.serve("a.test", n=5)
    caddy.load()  # not read before
    caddy.serve("a.test", n=2)
    caddy.read_into(book)
    assert book.host("a.test").total.requests == 2


# -- intervals: the last minute and the sparkline ----------------------------------------------


def test_the_last_minute_and_the_series_follow_the_ticks() -> None:
    caddy, book = Counters(*HOSTS), TrafficBook()
    caddy.read_into(book)
    book.tick(0.0)
    assert book.host("a.test").window_seconds == 0
    for tick in range(1, 16):  # 75 s of 5 s intervals, 10 requests each, 1 failing
        caddy.serve("a.test", n=9, seconds=0.004)
        caddy.serve("a.test", 500, seconds=0.2)
        caddy.read_into(book)
        book.tick(tick * SAMPLE_INTERVAL)
    view = book.host("a.test")
    assert view.total.requests == 150
    assert len(view.series) == 15 and set(view.series) == {(10, 1)}
    assert view.window_seconds == pytest.approx(60.0)
    assert view.window.requests == 120  # the 12 intervals of the last minute
    for _ in range(HISTORY_TICKS + 5):
        book.tick(book.host("a.test").window_seconds + 10_000.0 + _ * SAMPLE_INTERVAL)
    assert len(book.host("a.test").series) == HISTORY_TICKS


def test_quantiles_interpolate_inside_the_bucket_as_prometheus_does() -> None:
    buckets = {0.1: 5, 0.2: 10, math.inf: 10}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.19)
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # the first starts at 0
    # Past the highest finite bucket: its bound, never a guess beyond it.
    assert histogram_quantile(0.99, {0.1: 1, 10.0: 1, math.inf: 4}) == 10.0
    assert histogram_quantile(0.5, {0.1: 0, math.inf: 0}) is None
    assert histogram_quantile(0.5, {0.1: 3, 0.2: 4}) is None  # no +Inf bucket
    assert histogram_quantile(0.5, {math.inf: 3}) is None
    assert histogram_quantile(0.5, {0.1: 6, 0.2: 5, math.inf: 6}) == pytest.approx(0.05)


@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=8),
    st.floats(0, 1),
    st.floats(0, 1),
)
def test_quantiles_grow_with_the_quantile_and_stay_inside_the_buckets(
    increments: list[int], low: float, high: float
) -> None:
    bounds = [0.005 * 2**i for i in range(len(increments))] + [math.inf]
    cumulative, buckets = 0, {}
    for bound, n in zip(bounds, [*increments, 0], strict=True):
        cumulative += n
        buckets[bound] = cumulative
    low, high = sorted((low, high))
    lower, upper = histogram_quantile(low, buckets), histogram_quantile(high, buckets)
    if cumulative == 0:
        assert lower is None and upper is None
        return
    assert lower is not None and upper is not None
    assert 0 <= lower <= upper <= bounds[-2]


# -- pools ---------------------------------------------------------------------------------------


def test_a_pools_numbers_are_its_hosts_and_say_so_when_another_pool_shares_one() -> None:
    caddy, book = Counters("a.test", "c.test", "d.test"), counting(TrafficBook())
    caddy.read_into(book)
    caddy.serve("a.test", n=4)
    caddy.serve("c.test", n=2)
    caddy.serve("d.test", 503)
    caddy.read_into(book)
    book.tick(0.0)
    book.tick(SAMPLE_INTERVAL)
    pools = {
        "web": ("a.test",),
        "api": ("a.test",),  # the same host, another path
        "two-hosts": ("c.test", "d.test"),
        "wild": ("*.w.test",),
        "quiet": ("q.test",),
    }
    traffic = pool_traffic(pools, book)
    assert traffic is not None
    assert traffic["web"].requests == traffic["api"].requests == 4
    assert traffic["web"].shared_with == ("api",) and traffic["api"].shared_with == ("web",)
    assert "shared with api" in (traffic["web"].note or "")
    both = traffic["two-hosts"]
    assert (both.requests, both.failed, both.hosts, both.shared_with) == (
        3,
        1,
        ("c.test", "d.test"),
        (),
    )
    assert both.note == "Caddy counts per host: the sum of c.test, d.test"
    assert traffic["wild"].requests == 0 and traffic["wild"].uncounted == ("*.w.test",)
    assert "_other" in (traffic["wild"].note or "")
    quiet = traffic["quiet"]
    assert (quiet.requests, quiet.series) == (0, None)
    assert quiet.last_minute is not None and quiet.last_minute.requests_per_second == 0
    assert "4 request(s), 0 failed (5xx)" in describe(traffic["web"])


def test_no_pool_numbers_while_no_caddy_counts_per_host() -> None:
    book = TrafficBook()
    assert pool_traffic({"web": ("a.test",)}, book) is None
    fix = how_to_count(MetricsState.OFF, bundled=False)
    book.set_counting(ENDPOINT, CaddyCounting(MetricsState.OFF, fix))
    assert pool_traffic({"web": ("a.test",)}, book) is None
    overview = traffic_overview(book)
    assert overview.state is MetricsState.OFF and overview.notes == [fix]


def test_requests_counted_under_other_are_said_with_the_fix() -> None:
    caddy, book = Counters("a.test"), counting(TrafficBook())
    caddy.read_into(book, at=1_767_225_600.0)
    caddy.serve("a.test:8080", n=3)
    caddy.read_into(book)
    overview = traffic_overview(book)
    assert overview.other_requests == 3
    assert overview.since == "2026-01-01T00:00:00+00:00"
    assert "3 request(s)" in overview.notes[0] and "app.localhost:8080" in overview.notes[0]


def test_the_json_reads_back_as_written() -> None:
    caddy, book = Counters("a.test"), counting(TrafficBook())
    caddy.read_into(book)
    book.tick(0.0)
    caddy.serve("a.test", n=5, seconds=0.003)
    caddy.serve("a.test", 500, seconds=0.04)
    caddy.read_into(book)
    book.tick(SAMPLE_INTERVAL)
    traffic = (pool_traffic({"web": ("a.test",)}, book) or {})["web"]
    payload = traffic_json(traffic)
    assert payload["requests"] == 6 and payload["failed"] == 1
    assert payload["series"] == {"interval_seconds": 5.0, "requests": [6], "failed": [1]}
    assert payload["last_minute"]["requests_per_second"] == 1.2
    assert payload["last_minute"]["p50_ms"] == pytest.approx(3.0)  # 3 of 5 in 0..5 ms
    assert traffic_json(traffic_from_json(payload)) == payload
    assert traffic_json(traffic, series=False)["series"] is None
    overview = traffic_overview(book)
    assert overview_from_json(overview_json(overview)) == overview
