"""The `/healthz` verdict: is this daemon doing its job right now?

Healthy (200) when Docker answers, every Caddy admin endpoint answers, and the last apply
succeeded; otherwise 503 with the reasons. Whether Caddy answers is asked at request time
(the snapshot only knows how the last request went), so the caller pings and passes the
answers in.

A config source the daemon cannot use (a static file that cannot be read or parsed) does
not make it unhealthy: it keeps serving that source's last good version, and a probe
that restarted it on a 503 would lose exactly that. It is listed under `warnings` (with
the file, the reason and since when), and `status` reads `degraded`, still with a 200.
So is one of several Docker engines that is out while another answers: the daemon serves
its containers as its last listing had them, and carries on with the others.
"""

from __future__ import annotations

from collections.abc import Sequence

from labelsync.core.model import JSON
from labelsync.report.views import Snapshot, engine_warning


def healthz(snapshot: Snapshot, caddy_answers: Sequence[tuple[str, bool]]) -> tuple[bool, JSON]:
    """(healthy, body) for `/healthz`; `caddy_answers` pairs each endpoint with its ping."""
    reasons = []
    if not snapshot.docker_up:
        reasons.append("Docker is unreachable")
    for endpoint, answers in caddy_answers:
        if not answers:
            reasons.append(f"Caddy's admin API at {endpoint} does not answer")
    if not snapshot.last_apply_ok:
        reasons.append("the last apply failed" if snapshot.synced else "no successful sync yet")
    warnings = [str(problem) for problem in snapshot.stale]
    warnings += [engine_warning(engine) for engine in snapshot.engines_out]
    body = {
        "status": "unavailable" if reasons else ("degraded" if warnings else "ok"),
        "reasons": reasons,
        "warnings": warnings,
        "docker_up": snapshot.docker_up,
        "caddy_up": all(answers for _, answers in caddy_answers),
        "last_apply_ok": snapshot.last_apply_ok,
        "last_error": snapshot.last_error,
    }
    return not reasons, body
