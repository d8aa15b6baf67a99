"""Each pool's traffic, from the per-host counts of the book (`traffic.py`), and its JSON. Pure.

Caddy counts per host, and a pool is a set of hosts with a path: a pool's numbers are
the sum of its hosts' (each counted once). Where another pool shares one of its hosts
(the same host with another path), they are the host's, both pools' together, and the
record says so (`shared_with`) rather than invent a split. A wildcard host is counted
by Caddy under `_other`, in no pool's numbers (`uncounted`). Per member Caddy keeps no
totals at all: only requests in flight and its passive failure count
(`GET /reverse_proxy/upstreams`, shown per member by the status report).

`status --json`, the state file and the dashboard carry the same JSON (`traffic_json`);
`status` and `explain` print `describe`'s line.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from labelsync.core.caddy_metrics import FAILED_CLASS, OTHER_HOST, HostCounts, MetricsState
from labelsync.core.quantile import histogram_quantile
from labelsync.core.traffic import SAMPLE_INTERVAL, Flow, HostTraffic, TrafficBook

# Which of several states a daemon writing to several Caddys reports: the first found.
_WORST_FIRST: Final = (
    MetricsState.NOT_READ,
    MetricsState.OFF,
    MetricsState.NOT_PER_HOST,
    MetricsState.UNKNOWN,
)
OTHER_HOST_NOTE: Final = (
    "{n} request(s) to labelsync's routes were counted by Caddy under host `_other`, in no "
    "pool's numbers: on a plain-HTTP listener Caddy counts a Host header that carries a port "
    "(app.localhost:8080, what a browser sends to a port other than 80) apart from its host, "
    "and a wildcard host never has numbers of its own. Send requests to port 80 or over "
    "HTTPS to have them counted per pool"
)


@dataclass(frozen=True)
class LastMinute:
    """Rates and latency over the intervals of the last minute (or less, since start)."""

    seconds: float
    requests_per_second: float
    failed_per_second: float
    p50_seconds: float | None  # interpolated in Caddy's duration buckets (5 ms .. 10 s)
    p95_seconds: float | None


@dataclass(frozen=True)
class Series:
    """Requests and failed requests per interval, oldest first: the sparkline."""

    interval_seconds: float
    requests: tuple[int, ...]
    failed: tuple[int, ...]


@dataclass(frozen=True)
class PoolTraffic:
    """A pool's traffic since labelsync started: its hosts' counts in Caddy."""

    hosts: tuple[str, ...]  # the hosts counted
    requests: int
    failed: int  # answered 5xx, proxy errors (502, 504) included
    responses: Mapping[str, int]  # by status class
    proxy_errors: int  # Caddy's handler errors: a failed dial, a timeout, a client gone
    last_minute: LastMinute | None  # None until an interval closed
    series: Series | None  # None when no interval held any request
    shared_with: tuple[str, ...] = ()  # pools on one of these hosts: the numbers are theirs too
    uncounted: tuple[str, ...] = field(default=())  # wildcard hosts: under `_other`

    @property
    def note(self) -> str | None:
        """What the numbers are, when they are not this pool's alone."""
        notes = []
        if self.shared_with:
            notes.append(
                f"Caddy counts per host: these are the numbers of {', '.join(self.hosts)}, "
                f"shared with {', '.join(self.shared_with)}"
            )
        elif len(self.hosts) > 1:
            notes.append(f"Caddy counts per host: the sum of {', '.join(self.hosts)}")
        if self.uncounted:
            notes.append(
                f"wildcard host(s) {', '.join(self.uncounted)}: Caddy counts them under "
                "`_other`, not here"
            )
        return "; ".join(notes) or None


@dataclass(frozen=True)
class TrafficOverview:
    """Whether labelsync counts requests, since when, and what no pool's numbers hold."""

    state: MetricsState  # ON when every Caddy counts per host
    since: str | None  # ISO time the totals count from
    interval_seconds: float
    other_requests: int  # counted under `_other`
    fixes: tuple[str, ...] = ()  # how to make the Caddys that do not count per host do so

    @property
    def notes(self) -> list[str]:
        """What the report says about counting, beside the pools."""
        notes = list(self.fixes)
        if self.other_requests:
            notes.append(OTHER_HOST_NOTE.format(n=self.other_requests))
        return notes


def traffic_overview(book: TrafficBook) -> TrafficOverview:
    """The book's overview: the Caddys' counting states summed up."""
    states = [counting.state for counting in book.counting.values()]
    state = next((s for s in _WORST_FIRST if s in states), MetricsState.ON)
    if not states:
        state = MetricsState.UNKNOWN
    since = None
    if book.counting_since is not None:
        moment = datetime.datetime.fromtimestamp(book.counting_since, datetime.UTC)
        since = moment.isoformat(timespec="seconds")
    return TrafficOverview(
        state=state,
        since=since,
        interval_seconds=SAMPLE_INTERVAL,
        other_requests=book.host(OTHER_HOST).total.requests,
        fixes=tuple(dict.fromkeys(c.fix for c in book.counting.values() if c.fix)),
    )


def pool_traffic(
    pools: Mapping[str, Sequence[str]], book: TrafficBook
) -> dict[str, PoolTraffic] | None:
    """Each pool's traffic (`pools`: pool id -> hosts); None while no Caddy counts per host."""
    if not any(c.state is MetricsState.ON for c in book.counting.values()):
        return None
    by_host: dict[str, list[str]] = {}
    for pool_id, hosts in pools.items():
        for host in _counted(hosts):
            by_host.setdefault(host, []).append(pool_id)
    traffic = {}
    for pool_id, hosts in pools.items():
        counted = _counted(hosts)
        sharing = {other for host in counted for other in by_host[host]} - {pool_id}
        traffic[pool_id] = _summed(
            [book.host(host) for host in counted],
            hosts=counted,
            shared_with=tuple(sorted(sharing)),
            uncounted=tuple(h for h in hosts if "*" in h),
        )
    return traffic


def _counted(hosts: Iterable[str]) -> tuple[str, ...]:
    """The hosts Caddy counts apart (a wildcard host never is), lower-cased, once each."""
    return tuple(dict.fromkeys(h.lower() for h in hosts if "*" not in h))


def _summed(
    views: Sequence[HostTraffic],
    *,
    hosts: tuple[str, ...],
    shared_with: tuple[str, ...],
    uncounted: tuple[str, ...],
) -> PoolTraffic:
    total = HostCounts.total(view.total for view in views)
    window = HostCounts.total(view.window for view in views)
    seconds = max((view.window_seconds for view in views), default=0.0)
    series = _summed_series([view.series for view in views])
    requests = tuple(flow.requests for flow in series)
    failed = tuple(flow.failed for flow in series)
    return PoolTraffic(
        hosts=hosts,
        requests=total.requests,
        failed=total.failed,
        responses=dict(sorted(total.responses.items())),
        proxy_errors=total.proxy_errors,
        last_minute=_last_minute(window, seconds) if seconds > 0 else None,
        series=Series(SAMPLE_INTERVAL, requests, failed) if any(requests) else None,
        shared_with=shared_with,
        uncounted=uncounted,
    )


def _summed_series(each: Sequence[tuple[Flow, ...]]) -> tuple[Flow, ...]:
    """The hosts' series added up, interval by interval (the book gives all one length)."""
    if len(each) == 1:
        return each[0]
    return tuple(
        Flow(sum(f.requests for f in flows), sum(f.failed for f in flows))
        for flows in zip(*each, strict=True)
    )


def _last_minute(window: HostCounts, seconds: float) -> LastMinute:
    return LastMinute(
        seconds=seconds,
        requests_per_second=window.requests / seconds,
        failed_per_second=window.responses.get(FAILED_CLASS, 0) / seconds,
        p50_seconds=histogram_quantile(0.5, window.buckets),
        p95_seconds=histogram_quantile(0.95, window.buckets),
    )


def describe(traffic: PoolTraffic) -> str:
    """One line: the totals since labelsync started, then the last minute's rates."""
    classes = ", ".join(f"{n} {c}" for c, n in traffic.responses.items() if n)
    line = (
        f"{traffic.requests} request(s), {traffic.failed} failed (5xx), "
        f"{traffic.proxy_errors} proxy error(s)" + (f" [{classes}]" if classes else "")
    )
    minute = traffic.last_minute
    if minute is None:
        return line
    latency = ", ".join(
        f"{name} {format_seconds(value)}"
        for name, value in (("p50", minute.p50_seconds), ("p95", minute.p95_seconds))
        if value is not None
    )
    line += (
        f"; last {minute.seconds:.0f} s: {minute.requests_per_second:.2f} req/s, "
        f"{minute.failed_per_second:.2f} failed/s"
    )
    return line + (f", {latency} (bucket estimates)" if latency else "")


def format_seconds(value: float) -> str:
    """A latency as people read it: `2.5 ms`, `180 ms`, `1.25 s`."""
    if value < 1:
        return f"{value * 1000:.3g} ms"
    return f"{value:.3g} s"
