"""`labelsync status`: find the daemon's state and Caddy, read both, print the report.

- the daemon's state file (`state_file.py`): which containers form each pool, Docker's
  health, and the verdicts of labelsync's own active checks (dynamic mode);
- Caddy's admin API: the owned routes (hosts, path, policy, passive checks, and the
  members themselves in static mode), `GET /reverse_proxy/upstreams` for in-flight
  requests and passive failures, and in static mode Caddy's own active-check verdicts
  (the `caddy_reverse_proxy_upstreams_healthy` gauge of its `/metrics`, which Caddy
  refreshes about every 10 s).

Caddy 2.11 reports per upstream only `num_requests` (requests in flight) and `fails`
(failures inside the passive `fail_duration` window), and no total: `total_requests`
stays null. Each pool's requests, failures and latency come from the daemon's state
file: Caddy counts them per host on its `/metrics`, and the daemon adds them up
(`core/traffic.py`, `loop/traffic.py`). In dynamic mode Caddy names an upstream by its
SRV target, which names the member's container
(`10-0-0-5.3f2a9b1c0d4e.ip4.labelsync.internal.:8080`): the counts of a container gone
from the same IP are not the current one's. An address in several pools shares one set
of counts: Caddy keeps them per address. The merge itself is `status_report.py`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TextIO

from labelsync.caddy.admin import CaddyAdmin, answers
from labelsync.core.endpoints import unix_endpoint
from labelsync.core.model import JSON
from labelsync.errors import CaddyError, CaddyUnavailable
from labelsync.report.snapshot import Snapshot
from labelsync.report.state_file import (
    SYSTEM_RUNTIME_DIR,
    process_alive,
    read_state_file,
    state_file_candidates,
)
from labelsync.report.status_report import (
    StatusReport,
    build_report,
    caddy_runs_active_checks,
    render_table,
    report_json,
)
from labelsync.settings import AUTO_CADDY_ADMINS, Settings


def live_state(settings: Settings) -> tuple[Snapshot | None, list[str]]:
    """The snapshot of a running daemon, and notes about state files that were skipped."""
    notes: list[str] = []
    for path in state_file_candidates(settings):
        state = read_state_file(path)
        if state is None:
            continue
        if process_alive(int(state.get("pid") or 0)):
            try:
                return Snapshot.from_json(state), notes
            except (KeyError, TypeError, ValueError) as exc:  # another version's file
                notes.append(f"{path} is not a state file this labelsync reads ({exc!r})")
                continue
        notes.append(f"{path} is from labelsync pid {state.get('pid')}, which is not running")
    return None, notes


def _embedded_sockets() -> list[Path]:
    dirs = []
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        dirs.append(Path(xdg) / "labelsync")
    dirs.append(SYSTEM_RUNTIME_DIR)
    return [d / "admin.sock" for d in dict.fromkeys(dirs)]


async def find_admin(settings: Settings, state: Snapshot | None) -> str:
    """The admin endpoint to read: the setting, else the running daemon's, else
    localhost:2019, else the bundled Caddy's socket. CaddyUnavailable names what was tried."""
    wanted = [e.strip() for e in settings.caddy_admin.split(",") if e.strip()]
    daemon_endpoints = [e.admin for e in state.endpoints] if state is not None else []
    if wanted and wanted[0] not in ("auto", "embedded"):
        candidates = [wanted[0]]
    elif daemon_endpoints:
        candidates = [daemon_endpoints[0]]
    else:
        sockets = [unix_endpoint(str(path)) for path in _embedded_sockets()]
        candidates = sockets if wanted[:1] == ["embedded"] else [*AUTO_CADDY_ADMINS, *sockets]
    for endpoint in candidates:
        if await answers(endpoint, timeout=2.0):
            return endpoint
    raise CaddyUnavailable(f"Caddy's admin API did not answer (tried {', '.join(candidates)})")


async def gather_report(
    settings: Settings, state: Snapshot | None, endpoint: str, notes: list[str]
) -> StatusReport:
    """The report from a daemon's snapshot (None: none runs) and the Caddy at `endpoint`:
    what `status` prints, and what the daemon's dashboard serves from its live view."""
    server_name = (state.caddy_server if state is not None else "") or settings.caddy_server
    admin = CaddyAdmin(endpoint, timeout=5.0)
    try:
        server, _ = await admin.server(server_name)
        upstreams = await admin.upstreams()
        routes: list[JSON] = list((server or {}).get("routes") or [])
        caddy_health = None
        if caddy_runs_active_checks(routes, state):
            caddy_health = await admin.active_health()
    finally:
        await admin.aclose()
    if server is None:
        notes.append(f"Caddy has no server named {server_name!r}")
    if state is None:
        notes.append("labelsync is not running: health and containers are Caddy's view only")
    return build_report(
        caddy_admin=endpoint,
        caddy_server=server_name,
        routes=routes,
        upstreams=upstreams,
        caddy_health=caddy_health,
        snapshot=state,
        notes=notes,
    )


def _colour_wanted(stream: TextIO) -> bool:
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def _no_daemon(settings: Settings, skipped: list[str]) -> str:
    """Why no daemon answers, naming where its state file was looked for."""
    looked = ", ".join(str(path) for path in state_file_candidates(settings))
    found = f"; {'; '.join(skipped)}" if skipped else ""
    return f"no labelsync daemon is running (no state file of a live one at {looked}{found})"


async def run_status(settings: Settings, *, as_json: bool, out: TextIO | None = None) -> int:
    """Print the status table (or JSON); the exit code: 0 with a running daemon, 2 when
    none runs (after Caddy's view, when Caddy answers) or Caddy cannot be read, with one
    line on stderr naming what was tried."""
    stream = out or sys.stdout
    state, skipped = live_state(settings)
    no_daemon = _no_daemon(settings, skipped) if state is None else None
    try:
        endpoint = await find_admin(settings, state)
        report = await gather_report(settings, state, endpoint, list(skipped))
    except CaddyError as exc:
        reason = str(exc) if no_daemon is None else f"{no_daemon}, and {exc}"
        print(f"labelsync: status: {reason}", file=sys.stderr)
        return 2
    if as_json:
        stream.write(json.dumps(report_json(report), indent=2) + "\n")
    else:
        stream.write(render_table(report, colour=_colour_wanted(stream)))
    if no_daemon is not None:
        stream.flush()
        print(f"labelsync: status: {no_daemon}: above is Caddy's view only", file=sys.stderr)
        return 2
    return 0


async def live_report(settings: Settings, snapshot: Snapshot, endpoint: str) -> JSON:
    """The daemon's own report (for its dashboard): `status --json` from its live view;
    when Caddy cannot be read, the daemon's view alone, with a note saying why."""
    try:
        report = await gather_report(settings, snapshot, endpoint, [])
    except CaddyError as exc:
        report = build_report(
            caddy_admin=endpoint,
            caddy_server=snapshot.caddy_server or settings.caddy_server,
            routes=None,
            upstreams=[],
            caddy_health=None,
            snapshot=snapshot,
            notes=[f"Caddy could not be read, counts are missing: {exc}"],
        )
    return report_json(report)
