"""`labelsync explain CONTAINER`: why a container is, or is not, routed, and what to change.

The verdicts are `core.explain`'s, the ones the dashboard and `status --json` show. With
a daemon running they come from its live state (its settings, its health checks' and
Docker's verdicts, Caddy's passive counts through `status`), with the traffic of each
route's pool (Caddy counts per host: the pool's numbers, not the container's); without
one, labelsync reads Docker itself and says what a daemon with these settings would do.

CONTAINER is a container name, or a prefix of its id (or of its name, when no name
matches exactly). Exit codes: 0 routed (every route its labels declare serves), 1 not
routed or only partly (or it has no labels under the prefix), 2 no such container, an
ambiguous prefix, or Docker and the daemon both unreachable.

When labelsync reads several Docker engines, the verdict names the container's engine
(`engine` in JSON, `on engine b` in text), and a note says so when that engine is out (the
container's state is then its last listing's).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from labelsync.app.status import find_admin, gather_report, live_state
from labelsync.core.explain import ROUTED, carries_labels, explain_all, verdict_json
from labelsync.core.model import JSON, ContainerInfo
from labelsync.core.pool_traffic import describe
from labelsync.core.pools import build_desired
from labelsync.core.traffic_json import traffic_from_json
from labelsync.errors import CaddyError, DockerUnavailable
from labelsync.report.status_report import build_report
from labelsync.report.views import engine_warning
from labelsync.settings import Settings

EXIT_ROUTED, EXIT_NOT_ROUTED, EXIT_UNAVAILABLE = 0, 1, 2


class NotFound(Exception):
    """No container, or several (`ambiguous`), match what was asked for."""

    def __init__(self, message: str, *, ambiguous: bool = False) -> None:
        super().__init__(message)
        self.ambiguous = ambiguous


def pick(query: str, candidates: Sequence[JSON]) -> JSON:
    """The one candidate (with `name` and `id`) that `query` names: an exact name, else
    an exact id, else the only id prefix, else the only name prefix."""
    wanted = query.strip().lstrip("/")
    tests: list[Callable[[JSON], bool]] = [
        lambda c: bool(c["name"] == wanted),
        lambda c: bool(c["id"] == wanted),
        lambda c: bool(wanted) and str(c["id"]).startswith(wanted),
        lambda c: bool(wanted) and str(c["name"]).startswith(wanted),
    ]
    for test in tests:
        found = [c for c in candidates if test(c)]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(sorted(f"{c['name']} ({c['id'][:12]})" for c in found)[:10])
            raise NotFound(f"{query!r} matches several containers: {names}", ambiguous=True)
    raise NotFound(f"no container is named {query!r} or has an id starting with it")


def _list_docker(settings: Settings) -> list[ContainerInfo]:
    from labelsync.sources.engines import list_once

    return list_once(settings.engines, swarm=settings.swarm)


async def verdicts(settings: Settings) -> tuple[list[JSON], list[str], bool]:
    """Every labelled container's verdict, notes to print, and whether a daemon gave them.

    DockerUnavailable when no daemon runs and Docker does not answer."""
    found, notes, from_daemon, _ = await _verdicts(settings)
    return found, notes, from_daemon


async def _verdicts(settings: Settings) -> tuple[list[JSON], list[str], bool, dict[str, str]]:
    """`verdicts`, and the engines that are out (by name: the warning that says so)."""
    state, notes = live_state(settings)
    if state is not None:
        try:
            endpoint = await find_admin(settings, state)
            report = await gather_report(settings, state, endpoint, notes)
        except CaddyError as exc:
            notes.append(f"Caddy could not be read ({exc}): passive failure counts are missing")
            report = build_report(
                caddy_admin="-",
                caddy_server=settings.caddy_server,
                routes=None,
                upstreams=[],
                caddy_health=None,
                snapshot=state,
                notes=notes,
            )
        counting = report.traffic.notes if report.traffic is not None else []
        out = {e.name: engine_warning(e) for e in report.engines if not e.up}
        return list(report.containers), [*report.notes, *counting], True, out
    containers = await asyncio.to_thread(_list_docker, settings)
    desired = build_desired(
        containers,
        prefix=settings.label_prefix,
        default_network=settings.network,
        dynamic=settings.upstreams == "dynamic",
    )
    found = explain_all(
        containers, desired, prefix=settings.label_prefix, default_network=settings.network
    )
    notes.append(
        "labelsync is not running: this is what it would do with these labels and settings "
        "(its own health checks have not run)"
    )
    return [verdict_json(v) for v in found], notes, False, {}


def render(verdict: JSON, notes: Sequence[str]) -> str:
    """The human form of one container's verdict."""
    state = verdict["state"] + (f", {verdict['docker_health']}" if verdict["docker_health"] else "")
    head = f"{verdict['name']} ({verdict['id'][:12]}): {verdict['status']}  [container {state}]"
    if verdict.get("engine"):
        head += f" on engine {verdict['engine']}"
    out = [head]
    for reason in verdict["reasons"]:
        out += _reason_lines(reason, "  ")
    for route in verdict["routes"]:
        name = f"route {route['route']}" if route["route"] else "default route"
        target = ", ".join(route["hosts"]) + (route["path"] or "")
        head = f"  {name}" + (f" ({target})" if target else "") + f": {route['status']}"
        if route["status"] == ROUTED:
            head += f", member {route['address']} of {route['pool']}"
        out.append(head)
        for reason in route["reasons"]:
            out += _reason_lines(reason, "    ")
        out += _traffic_lines(route.get("traffic"))
    said = {r["why"] for r in verdict["reasons"]}
    said |= {r["why"] for route in verdict["routes"] for r in route["reasons"]}
    others = [p for p in verdict["problems"] if p["text"].partition(": ")[2] not in said]
    if others:
        out.append("  label problems:")
        out += [f"    {p['severity']}: {p['text']}" for p in others]
    out += [f"note: {note}" for note in notes]
    return "\n".join(out) + "\n"


def _engine_notes(verdict: JSON, engines_out: Mapping[str, str]) -> list[str]:
    """Its engine's warning, when the container is on an engine that is out."""
    warning = engines_out.get(str(verdict.get("engine")))
    return [warning] if warning is not None else []


def _traffic_lines(traffic: JSON | None) -> list[str]:
    """The route's pool traffic (Caddy counts per host: the pool's, not this member's)."""
    if not traffic:
        return []
    counted = traffic_from_json(traffic)
    lines = [f"    pool traffic since labelsync started: {describe(counted)}"]
    return lines + ([f"    ({counted.note})"] if counted.note else [])


def _reason_lines(reason: JSON, indent: str) -> list[str]:
    lines = [f"{indent}why: {reason['why']}"]
    if reason.get("fix"):
        lines.append(f"{indent}fix: {reason['fix']}")
    return lines


async def run_explain(
    settings: Settings, query: str, *, as_json: bool = False, out: TextIO | None = None
) -> int:
    stream = out or sys.stdout
    try:
        found, notes, _, engines_out = await _verdicts(settings)
    except DockerUnavailable as exc:
        print(f"labelsync: explain: no labelsync runs, and {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        verdict = pick(query, found)
    except NotFound as exc:
        return _unlabelled(settings, query, exc)
    notes = [*notes, *_engine_notes(verdict, engines_out)]
    if as_json:
        stream.write(json.dumps({**verdict, "notes": notes}, indent=2) + "\n")
    else:
        stream.write(render(verdict, notes))
    return EXIT_ROUTED if verdict["status"] == ROUTED else EXIT_NOT_ROUTED


def _unlabelled(settings: Settings, query: str, error: NotFound) -> int:
    """No labelled container matches: a container without labels is 'not routed' (1)."""
    if not error.ambiguous:
        try:
            listed = _list_docker(settings)
        except DockerUnavailable:
            listed = []
        plain = [
            {"name": c.name, "id": c.id}
            for c in listed
            if not carries_labels(c, settings.label_prefix)
        ]
        try:
            match = pick(query, plain)
        except NotFound:
            match = None
        if match is not None:
            print(
                f"{match['name']} ({match['id'][:12]}): not routed\n"
                f"  why: it has no {settings.label_prefix}.* labels, so labelsync ignores it\n"
                f"  fix: set {settings.label_prefix}.host (and {settings.label_prefix}.port if "
                "it exposes several ports)"
            )
            return EXIT_NOT_ROUTED
    print(f"labelsync: explain: {error}", file=sys.stderr)
    return EXIT_UNAVAILABLE
