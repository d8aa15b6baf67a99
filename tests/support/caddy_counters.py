"""Caddy's request counters as its `/metrics` shows them, for requests a test says were
served: what the in-memory Caddy answers (`memory_caddy.py`).

Modelled on Caddy 2.11.7 (`labelsync/core/caddy_metrics.py` has the facts): nothing
without `apps.http.metrics`; counts per server and handler, per host too with
`per_host` (a host no host matcher names, or a Host header with a port, as `_other`);
requests, handler errors and the duration histogram with Prometheus' default buckets,
labels in Go's sorted order; and the time the config last loaded.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from labelsync.core.caddy_metrics import read_http_counts
from labelsync.core.traffic import TrafficBook

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)


@dataclass(frozen=True)
class Served:
    """One request Caddy served: the Host header, the status it answered, how long it took."""

    host: str
    status: int = 200
    seconds: float = 0.002
    server: str = "labelsync"
    handler: str = "reverse_proxy"
    method: str = "GET"
    proxy_error: bool = False  # the handler failed (a dial), Caddy answered `status`


def metrics_text(config: Any, served: Iterable[Served], loaded_at: float) -> str:
    """Caddy's `/metrics` (the parts labelsync reads) for `served` under `config`."""
    lines = [
        "# HELP caddy_config_last_reload_success_timestamp_seconds Timestamp of the last "
        "successful configuration reload.",
        "# TYPE caddy_config_last_reload_success_timestamp_seconds gauge",
        f"caddy_config_last_reload_success_timestamp_seconds {loaded_at!r}",
    ]
    http = ((config or {}).get("apps") or {}).get("http") or {}
    metrics = http.get("metrics")
    if isinstance(metrics, dict):
        named = _host_matchers(http)
        lines += _series(served, named if metrics.get("per_host") is True else None)
    return "\n".join(lines) + "\n"


def _host_matchers(http: dict[str, Any]) -> set[str]:
    hosts: set[str] = set()
    for server in (http.get("servers") or {}).values():
        for route in server.get("routes") or []:
            for matcher in route.get("match") or []:
                hosts.update(h.lower() for h in matcher.get("host") or [] if "*" not in h)
    return hosts


def _labels(**labels: str) -> str:
    return ",".join(f'{name}="{labels[name]}"' for name in sorted(labels))


def _series(served: Iterable[Served], named: set[str] | None) -> Iterator[str]:
    """Requests, errors and the duration histogram; `named`: the hosts counted apart
    (None: per_host off, no host label)."""
    requests: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    durations: dict[str, list[float]] = {}
    for one in served:
        host = {}
        if named is not None:
            header = one.host.lower()
            host = {"host": header if header in named else "_other"}
        base = _labels(handler=one.handler, server=one.server, **host)
        requests[base] += 1
        if one.proxy_error:
            errors[base] += 1
        code = {"code": str(one.status), "method": one.method}
        key = _labels(handler=one.handler, server=one.server, **host, **code)
        durations.setdefault(key, []).append(one.seconds)
    yield "# TYPE caddy_http_request_duration_seconds histogram"
    for key, seconds in sorted(durations.items()):
        yield from _histogram("caddy_http_request_duration_seconds", key, seconds)
    yield "# TYPE caddy_http_request_errors_total counter"
    yield from (f"caddy_http_request_errors_total{{{k}}} {n}" for k, n in sorted(errors.items()))
    yield "# TYPE caddy_http_requests_total counter"
    yield from (f"caddy_http_requests_total{{{k}}} {n}" for k, n in sorted(requests.items()))


def _histogram(name: str, labels: str, observations: list[float]) -> Iterator[str]:
    counts = [0] * len(BUCKETS)
    for seconds in observations:
        counts[bisect.bisect_left(BUCKETS, seconds)] += 1
    cumulative = 0
    for bound, count in zip(BUCKETS, counts, strict=True):
        cumulative += count
        le = "+Inf" if bound == math.inf else f"{bound:g}"
        yield f'{name}_bucket{{{labels},le="{le}"}} {cumulative}'
    yield f"{name}_sum{{{labels}}} {sum(observations)!r}"
    yield f"{name}_count{{{labels}}} {len(observations)}"


def per_host_config(*hosts: str, server: str = "labelsync") -> dict[str, Any]:
    """A Caddy config with per-host metrics and a route for each host in `server`."""
    routes = [{"match": [{"host": [host]}]} for host in hosts]
    http = {"metrics": {"per_host": True}, "servers": {server: {"routes": routes}}}
    return {"apps": {"http": http}}


class Counters:
    """One Caddy's counters as a book reads them: requests served, config loads.

    caddy = Counters("a.test")
    caddy.serve("a.test", 500, n=3)
    caddy.read_into(book)
    """

    endpoint = "unix:///run/caddy.sock"

    def __init__(self, *hosts: str) -> None:
        self.config = per_host_config(*hosts)
        self.served: list[Served] = []
        self.loaded_at = 1000.0

    def serve(self, host: str, status: int = 200, seconds: float = 0.002, n: int = 1) -> None:
        self.served += [Served(host, status, seconds)] * n

    def load(self) -> None:
        """A config write: the counters start again at zero."""
        self.served = []
        self.loaded_at += 1

    def read_into(self, book: TrafficBook, at: float = 0.0) -> None:
        text = metrics_text(self.config, self.served, self.loaded_at)
        book.fold(self.endpoint, read_http_counts(text, "labelsync"), at=at)
