"""Caddy's HTTP metrics: what labelsync reads of Caddy's `/metrics`, and what turns them on. Pure.

Facts this module is built on (measured against Caddy 2.11.7):

- `apps.http.metrics = {"per_host": true}` makes Caddy count per host, on its admin
  endpoint's `/metrics`: `caddy_http_requests_total{handler,host,server}`,
  `caddy_http_request_errors_total{handler,host,server}` (the handler returned an
  error: a failed dial answered 502, a timeout, a client gone), and the histogram
  `caddy_http_request_duration_seconds{code,handler,host,method,server}` (Prometheus'
  default buckets, 5 ms to 10 s). A proxy error is also observed in the histogram,
  with the status Caddy answered (502 for a failed dial). labelsync's routes count
  under `handler="reverse_proxy"`.
- Only hosts named in a host matcher (of any server) get a `host` label of their own,
  lower-cased; any other Host header is counted as `host="_other"`. So are a wildcard
  matcher's hosts (`*.example.com`), and, on a plain-HTTP server, a Host header that
  carries a port (`app.localhost:8080`, what a browser sends to a port other than 80);
  an HTTPS server admits that one with the port in the label.
  `observe_catchall_hosts: true` would admit any Host header, one series per name any
  client sends: labelsync never turns it on.
- Every config load makes a new metrics registry: each successful admin write restarts
  every HTTP counter at zero, and moves
  `caddy_config_last_reload_success_timestamp_seconds`. After a refused write
  (`caddy_config_last_reload_successful 0`) `/metrics` shows no HTTP counters at all,
  and the requests served until the next successful write are never shown.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, TypeVar

from labelsync.core import defaults
from labelsync.core.model import JSON
from labelsync.core.prometheus_text import Sample, parse_samples

REQUESTS: Final = "caddy_http_requests_total"
PROXY_ERRORS: Final = "caddy_http_request_errors_total"
DURATION_COUNT: Final = "caddy_http_request_duration_seconds_count"
DURATION_BUCKET: Final = "caddy_http_request_duration_seconds_bucket"
LOADED_AT: Final = "caddy_config_last_reload_success_timestamp_seconds"
READ: Final = frozenset({REQUESTS, PROXY_ERRORS, DURATION_COUNT, DURATION_BUCKET, LOADED_AT})
PROXY_HANDLER: Final = "reverse_proxy"  # the handler of every route labelsync writes
OTHER_HOST: Final = "_other"  # Caddy's label for the hosts it does not count apart
FAILED_CLASS: Final = "5xx"

K = TypeVar("K", str, float)


class MetricsState(StrEnum):
    """Whether a Caddy counts labelsync's traffic per host, as its config says."""

    ON = "on"  # apps.http.metrics.per_host: counted per host
    NOT_PER_HOST = "not_per_host"  # metrics on, per_host off: per server only
    OFF = "off"  # no apps.http.metrics: Caddy counts no HTTP traffic
    UNKNOWN = "unknown"  # not read yet, or Caddy did not answer
    NOT_READ = "not_read"  # LABELSYNC_CADDY_METRICS=off: labelsync does not look


def metrics_state(config: Any) -> MetricsState:
    """The state `apps.http.metrics` (as read: None when absent) puts Caddy in."""
    if not isinstance(config, dict):
        return MetricsState.OFF
    return MetricsState.ON if config.get("per_host") is True else MetricsState.NOT_PER_HOST


def with_per_host(config: Any) -> JSON:
    """`apps.http.metrics` counting per host, everything else in `config` kept."""
    return {**(config if isinstance(config, dict) else {}), "per_host": True}


def turns_metrics_on(setting: str, *, bundled: bool) -> bool:
    """Whether labelsync turns per-host metrics on in a Caddy (`LABELSYNC_CADDY_METRICS`):
    `on` in any Caddy, `auto` in the bundled one when `defaults.BUNDLED_CADDY_METRICS`."""
    if setting == "on":
        return True
    return setting == "auto" and bundled and defaults.BUNDLED_CADDY_METRICS


def how_to_count(state: MetricsState, *, bundled: bool) -> str | None:
    """What to change so that a Caddy in `state` counts per host; None when it does."""
    caddyfile = "`metrics { per_host }` in the Caddyfile's global options"
    if state is MetricsState.NOT_READ:
        return "LABELSYNC_CADDY_METRICS=off: labelsync does not read Caddy's request counters"
    if state is MetricsState.OFF and bundled:
        return (
            "the bundled Caddy counts no requests: set LABELSYNC_CADDY_METRICS=on "
            "(per-host metrics cost Caddy some throughput; docs/performance.md)"
        )
    if state is MetricsState.OFF:
        return (
            "Caddy counts no requests (no apps.http.metrics): set LABELSYNC_CADDY_METRICS=on "
            f"(labelsync writes it once), or add {caddyfile}"
        )
    if state is MetricsState.NOT_PER_HOST:
        return (
            "Caddy's metrics are on, but not per host: set LABELSYNC_CADDY_METRICS=on "
            f'(labelsync adds "per_host": true), or add {caddyfile}'
        )
    return None


@dataclass(frozen=True)
class HostCounts:
    """What Caddy counted for one host: labelsync's server, its `reverse_proxy` handler."""

    requests: int = 0
    proxy_errors: int = 0  # caddy_http_request_errors_total
    responses: Mapping[str, int] = field(default_factory=dict)  # by status class: "2xx" -> n
    buckets: Mapping[float, int] = field(default_factory=dict)  # duration: le -> cumulative n

    @property
    def failed(self) -> int:
        """Answers of status 5xx: the backend's, and Caddy's own for proxy errors."""
        return self.responses.get(FAILED_CLASS, 0)

    @property
    def is_zero(self) -> bool:
        return not self.requests and not self.proxy_errors and not any(self.responses.values())

    def plus(self, other: HostCounts) -> HostCounts:
        return HostCounts.total((self, other))

    @staticmethod
    def total(counts: Iterable[HostCounts]) -> HostCounts:
        """The sum of `counts` (one pass: a pool of many hosts, a minute of intervals)."""
        requests = proxy_errors = 0
        responses: dict[str, int] = {}
        buckets: dict[float, int] = {}
        for one in counts:
            requests += one.requests
            proxy_errors += one.proxy_errors
            for status, n in one.responses.items():
                responses[status] = responses.get(status, 0) + n
            for le, n in one.buckets.items():
                buckets[le] = buckets.get(le, 0) + n
        return HostCounts(requests, proxy_errors, responses, buckets)

    def since(self, before: HostCounts) -> HostCounts | None:
        """What was counted after `before`; None when a count fell or vanished (Caddy
        started counting again from zero in between)."""
        responses = _subtracted(self.responses, before.responses)
        buckets = _subtracted(self.buckets, before.buckets)
        if responses is None or buckets is None:
            return None
        if self.requests < before.requests or self.proxy_errors < before.proxy_errors:
            return None
        return HostCounts(
            self.requests - before.requests,
            self.proxy_errors - before.proxy_errors,
            responses,
            buckets,
        )


def _subtracted(after: Mapping[K, int], before: Mapping[K, int]) -> dict[K, int] | None:
    """`after - before` per key; None when a key's count fell or vanished."""
    if any(after.get(key, 0) < value for key, value in before.items()):
        return None
    return {key: value - before.get(key, 0) for key, value in after.items()}


@dataclass(frozen=True)
class CaddyReading:
    """One read of a Caddy's `/metrics`: its counts by host, and when its config loaded."""

    hosts: Mapping[str, HostCounts]  # by `counted_host`; OTHER_HOST included
    loaded_at: float | None = None  # moves with every successful config load


def counted_host(label: str) -> str:
    """The host a `host` label counts for: lower-cased, without a port (an HTTPS server
    admits `app.localhost:8443`); `_other` as it is."""
    host = label.lower()
    if host.startswith("["):  # [v6]:port
        return host.partition("]")[0] + "]"
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


class _Tally:
    """The counts of one host while a reading is summed up (over codes and methods)."""

    def __init__(self) -> None:
        self.requests = 0
        self.proxy_errors = 0
        self.responses: dict[str, int] = {}
        self.buckets: dict[float, int] = {}

    def add(self, sample: Sample) -> None:
        value = int(sample.value)
        if sample.name == REQUESTS:
            self.requests += value
        elif sample.name == PROXY_ERRORS:
            self.proxy_errors += value
        elif sample.name == DURATION_COUNT:
            status = sample.labels.get("code", "")[:1] + "xx"
            self.responses[status] = self.responses.get(status, 0) + value
        else:
            le = float(sample.labels.get("le", "inf"))
            self.buckets[le] = self.buckets.get(le, 0) + value

    def counts(self) -> HostCounts:
        return HostCounts(self.requests, self.proxy_errors, self.responses, self.buckets)


def read_http_counts(text: str, server: str) -> CaddyReading:
    """The counts of server `server`'s `reverse_proxy` handlers by host in one `/metrics`
    text; series without a host label (per_host off) are not counted."""
    tallies: dict[str, _Tally] = {}
    loaded_at = None
    for sample in parse_samples(text, READ):
        if sample.name == LOADED_AT:
            loaded_at = sample.value
            continue
        labels = sample.labels
        host = labels.get("host")
        if host is None or labels.get("server") != server:
            continue
        if labels.get("handler") != PROXY_HANDLER:
            continue
        tallies.setdefault(counted_host(host), _Tally()).add(sample)
    return CaddyReading({host: t.counts() for host, t in tallies.items()}, loaded_at)
