"""labelsync's own running totals of Caddy's request counters, per host. Pure.

Caddy starts its counters again at every config load (`caddy_metrics.py`), so labelsync
keeps totals of its own, since it started. Each read of a Caddy's `/metrics` (`fold`)
adds what its counters rose by since the previous read of the same Caddy; a counter
that fell or vanished, or a moved config load time, means Caddy began again from zero,
and what it holds now is all new. The first read of each Caddy is the baseline: what it
counted before labelsync started is not labelsync's to report. What Caddy counts between
the last read and a config load is lost, so the loop reads right before every write it
makes (`loop/traffic.py`); a write by anyone else loses up to one `SAMPLE_INTERVAL`.

Every `SAMPLE_INTERVAL` the loop closes an interval (`tick`): the last `HISTORY_TICKS`
intervals are the sparkline (requests and failures per interval), those ending within
`WINDOW_SECONDS` give the rates and the latency histogram of the last minute.

    book = TrafficBook()
    book.fold("unix:///run/caddy.sock", read_http_counts(text, "labelsync"), at=time.time())
    book.tick(time.monotonic())
    book.host("app.example.com").total.requests
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, NamedTuple

from labelsync.core.caddy_metrics import CaddyReading, HostCounts, MetricsState

SAMPLE_INTERVAL: Final = 5.0
"""Seconds between two reads of each Caddy's `/metrics` (and one interval of the series)."""
WINDOW_SECONDS: Final = 60.0
"""The rates and latency quantiles are those of the intervals ending this long ago or later."""
HISTORY_TICKS: Final = 120
"""Intervals kept for the sparkline: ten minutes of `SAMPLE_INTERVAL`."""

NOTHING: Final = HostCounts()


class Flow(NamedTuple):
    """Requests and failed requests (5xx) in one interval."""

    requests: int
    failed: int


@dataclass(frozen=True)
class _Interval:
    """What each host's counts rose by between two ticks (monotonic seconds)."""

    start: float
    end: float
    hosts: Mapping[str, HostCounts]  # the hosts with any traffic


@dataclass(frozen=True)
class _PastInterval:
    """An interval older than the window: its flows only (no latency histogram kept)."""

    hosts: Mapping[str, Flow]


@dataclass(frozen=True)
class HostTraffic:
    """One host's traffic as the book holds it."""

    total: HostCounts  # since labelsync started counting
    window: HostCounts  # in the intervals of the last `WINDOW_SECONDS`
    window_seconds: float  # how long those intervals span; 0 before the first one closed
    series: tuple[Flow, ...]  # per interval, oldest first, as many as the book holds


@dataclass(frozen=True)
class CaddyCounting:
    """Whether one Caddy counts per host, and what to change if it does not."""

    state: MetricsState
    fix: str | None = None


class TrafficBook:
    """Totals per host since labelsync started, summed over every Caddy it writes to."""

    def __init__(self) -> None:
        self._last: dict[str, CaddyReading] = {}  # per Caddy endpoint, its last reading
        self._totals: dict[str, HostCounts] = {}
        self._pending: dict[str, HostCounts] = {}  # since the last tick
        self._recent: deque[_Interval] = deque()
        self._past: deque[_PastInterval] = deque()
        self._last_tick: float | None = None
        self._views: dict[str, HostTraffic] = {}  # `host()`'s answers at this version
        self.counting_since: float | None = None  # wall-clock seconds of the first read
        self.counting: dict[str, CaddyCounting] = {}  # per Caddy endpoint
        self.version = 0  # moves with every change of what the book answers

    def fold(self, endpoint: str, reading: CaddyReading, *, at: float) -> None:
        """Add what the counters of the Caddy at `endpoint` rose by since its last
        reading (`at`: wall-clock seconds of this one)."""
        before = self._last.get(endpoint)
        self._last[endpoint] = reading
        if before is None:
            if self.counting_since is None:
                self.counting_since = at
            return  # the baseline
        restarted = None not in (reading.loaded_at, before.loaded_at) and (
            reading.loaded_at != before.loaded_at
        )
        for host, counts in reading.hosts.items():
            previous = None if restarted else before.hosts.get(host)
            increase = counts if previous is None else (counts.since(previous) or counts)
            if increase.is_zero:
                continue
            self._totals[host] = self._totals.get(host, NOTHING).plus(increase)
            self._pending[host] = self._pending.get(host, NOTHING).plus(increase)
            self._changed()

    def tick(self, now: float) -> None:
        """Close the interval since the last tick (`now`: monotonic seconds)."""
        start, self._last_tick = self._last_tick, now
        if start is None:
            return  # the first tick opens the first interval
        self._recent.append(_Interval(start, now, self._pending))
        self._pending = {}
        while self._recent and self._recent[0].end <= now - WINDOW_SECONDS:
            old = self._recent.popleft()
            flows = {host: Flow(c.requests, c.failed) for host, c in old.hosts.items()}
            self._past.append(_PastInterval(flows))
        while self._past and len(self._past) + len(self._recent) > HISTORY_TICKS:
            self._past.popleft()
        self._changed()

    def set_counting(self, endpoint: str, counting: CaddyCounting) -> None:
        if self.counting.get(endpoint) != counting:
            self.counting[endpoint] = counting
            self._changed()

    def host(self, host: str) -> HostTraffic:
        """What the book holds of `host` (a host Caddy never counted: all zero)."""
        view = self._views.get(host)
        if view is None:
            view = self._views[host] = self._host_traffic(host)
        return view

    def _host_traffic(self, host: str) -> HostTraffic:
        recent = [interval.hosts.get(host) for interval in self._recent]
        window = HostCounts.total(counts for counts in recent if counts is not None)
        idle = Flow(0, 0)
        series = [past.hosts.get(host, idle) for past in self._past]
        series += [idle if c is None else Flow(c.requests, c.failed) for c in recent]
        seconds = self._recent[-1].end - self._recent[0].start if self._recent else 0.0
        return HostTraffic(self._totals.get(host, NOTHING), window, seconds, tuple(series))

    def _changed(self) -> None:
        self.version += 1
        self._views.clear()
