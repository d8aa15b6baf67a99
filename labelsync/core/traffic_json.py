"""The JSON of a pool's traffic and of the overview, and reading them back. Pure.

One form for the state file, `status --json`, the dashboard and `explain --json`
(docs/operations.md):

    "traffic": {"requests": 20, "failed": 5, "responses": {"2xx": 15, "5xx": 5},
                "proxy_errors": 0,
                "last_minute": {"seconds": 60.0, "requests_per_second": 0.333,
                                "failed_per_second": 0.083, "p50_ms": 2.75, "p95_ms": 4.75},
                "series": {"interval_seconds": 5.0, "requests": [0, 20], "failed": [0, 5]},
                "hosts": ["app.example.com"], "shared_with": [], "uncounted_hosts": [],
                "note": null}

Latencies are in milliseconds (bucket estimates), rates rounded to 1/1000.
"""

from __future__ import annotations

from labelsync.core.caddy_metrics import MetricsState
from labelsync.core.model import JSON
from labelsync.core.pool_traffic import LastMinute, PoolTraffic, Series, TrafficOverview


def traffic_json(traffic: PoolTraffic, *, series: bool = True) -> JSON:
    """A pool's traffic; `series=False` leaves out the sparkline (`explain`)."""
    minute = traffic.last_minute
    return {
        "requests": traffic.requests,
        "failed": traffic.failed,
        "responses": dict(traffic.responses),
        "proxy_errors": traffic.proxy_errors,
        "last_minute": None if minute is None else _minute_json(minute),
        "series": _series_json(traffic.series) if series and traffic.series else None,
        "hosts": list(traffic.hosts),
        "shared_with": list(traffic.shared_with),
        "uncounted_hosts": list(traffic.uncounted),
        "note": traffic.note,
    }


def _minute_json(minute: LastMinute) -> JSON:
    return {
        "seconds": round(minute.seconds, 1),
        "requests_per_second": round(minute.requests_per_second, 3),
        "failed_per_second": round(minute.failed_per_second, 3),
        "p50_ms": _ms(minute.p50_seconds),
        "p95_ms": _ms(minute.p95_seconds),
    }


def _series_json(series: Series) -> JSON:
    return {
        "interval_seconds": series.interval_seconds,
        "requests": list(series.requests),
        "failed": list(series.failed),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else float(ms) / 1000


def traffic_from_json(payload: JSON) -> PoolTraffic:
    """What `traffic_json` wrote, as the record again."""
    minute, series = payload.get("last_minute"), payload.get("series")
    return PoolTraffic(
        hosts=tuple(payload.get("hosts") or ()),
        requests=int(payload.get("requests") or 0),
        failed=int(payload.get("failed") or 0),
        responses={str(k): int(v) for k, v in (payload.get("responses") or {}).items()},
        proxy_errors=int(payload.get("proxy_errors") or 0),
        last_minute=None
        if not minute
        else LastMinute(
            seconds=float(minute["seconds"]),
            requests_per_second=float(minute["requests_per_second"]),
            failed_per_second=float(minute["failed_per_second"]),
            p50_seconds=_seconds(minute.get("p50_ms")),
            p95_seconds=_seconds(minute.get("p95_ms")),
        ),
        series=None
        if not series
        else Series(
            float(series["interval_seconds"]),
            tuple(int(n) for n in series["requests"]),
            tuple(int(n) for n in series["failed"]),
        ),
        shared_with=tuple(payload.get("shared_with") or ()),
        uncounted=tuple(payload.get("uncounted_hosts") or ()),
    )


def overview_json(overview: TrafficOverview) -> JSON:
    return {
        "caddy_metrics": overview.state.value,
        "since": overview.since,
        "interval_seconds": overview.interval_seconds,
        "other_requests": overview.other_requests,
        "fixes": list(overview.fixes),
        "notes": overview.notes,
    }


def overview_from_json(payload: JSON) -> TrafficOverview:
    return TrafficOverview(
        state=MetricsState(payload.get("caddy_metrics") or MetricsState.UNKNOWN),
        since=payload.get("since"),
        interval_seconds=float(payload.get("interval_seconds") or 0),
        other_requests=int(payload.get("other_requests") or 0),
        fixes=tuple(payload.get("fixes") or ()),
    )
