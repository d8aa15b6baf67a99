"""A static file that breaks: the loop keeps its last good routes in Caddy, and says so
everywhere an operator looks (the log, the state file read back by `status`, the text and
JSON report, the dashboard's data, `/healthz`) until the file is fixed.

The loop writes into the in-memory Caddy (tests/support/memory_caddy.py); no Docker."""

from __future__ import annotations

import datetime
import socket
from collections.abc import AsyncIterator
from pathlib import Path

from labelsync.app.status import live_report
from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import ContainerInfo
from labelsync.loop.reconcile import Reconciler
from labelsync.report.healthz import healthz
from labelsync.report.snapshot import build_snapshot
from labelsync.report.status_report import render_table, report_json
from labelsync.settings import Settings
from labelsync.sources.static import StaticFile
from tests.support.caddy import free_port
from tests.support.memory_caddy import MemoryCaddy
from tests.support.snapshots import report_of

GOOD = '[routes.site]\nhost = "site.test"\nupstreams = ["10.9.9.9:80"]\n'
BROKEN = '[routes.site\nhost = "site.test"\n'  # line 1: the table's `]` is missing
BROKEN_AGAIN = '[routes.site]\nhost = = "site.test"\n'  # line 2: no value
FIRST_FAILURE = datetime.datetime(2026, 3, 1, 12, 30, 5, tzinfo=datetime.UTC)


class NoContainers:
    endpoint = "test://listing"

    async def snapshot(self) -> list[ContainerInfo]:
        return []

    async def events(self) -> AsyncIterator[DockerEvent]:
        yield DockerEvent(EventKind.STREAM_UP, "", None, 0)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = FIRST_FAILURE

    def __call__(self) -> datetime.datetime:
        return self.now


def closed_endpoint() -> str:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{closed.getsockname()[1]}"


async def test_a_broken_static_file_is_stale_everywhere_until_it_is_fixed(
    tmp_path: Path, errors_logged: list[str]
) -> None:
    path = tmp_path / "static.toml"
    path.write_text(GOOD)
    clock = Clock()
    static = StaticFile(path, clock=clock)
    settings = Settings(
        caddy_server="stale-static",
        listen=f"127.0.0.1:{free_port()}",
        auto_https="off",
        upstreams="static",
    )
    memory = MemoryCaddy()
    admin = memory.admin()
    loop = Reconciler(settings, NoContainers(), admin, static=static)
    try:
        static.reload()
        assert (await loop.sync_once()).ok
        routes_before = memory.routes("stale-static")
        assert [r["match"][0]["host"] for r in routes_before] == [["site.test"]]

        path.write_text(BROKEN)
        assert static.reload()  # what it yields changed: the watch wakes the loop up
        clock.now += datetime.timedelta(minutes=5)
        path.write_text(BROKEN_AGAIN)
        assert static.reload()  # another reason, still stale since the first failure
        await loop.sync_once()
        assert memory.routes("stale-static") == routes_before  # the last good routes serve

        expected = (
            f"static file {path}: not valid TOML: Invalid value (at line 2, column 8); "
            "stale since 2026-03-01T12:30:05Z: keeping the last good version (its routes "
            "still serve)"
        )
        assert expected in errors_logged[-1]
        snapshot = build_snapshot([loop], settings=settings)

        healthy, body = healthz(snapshot, [("memory", True)])
        assert healthy  # 200: the daemon does its job, with the last good routes
        assert body["status"] == "degraded"
        assert body["reasons"] == []
        assert body["warnings"] == [expected]

        report = report_of(snapshot)
        as_json = report_json(report)
        assert as_json["warnings"] == [expected]
        (problem,) = as_json["other_problems"]
        assert (problem["severity"], problem["text"]) == ("error", expected)
        table = render_table(report)
        assert f"  STALE: {expected}\n" in table
        assert f"  error: {expected}\n" in table

        dashboard = await live_report(settings, snapshot, closed_endpoint())
        assert dashboard["warnings"] == [expected]
        assert [p["text"] for p in dashboard["other_problems"]] == [expected]

        path.write_text(GOOD.replace("10.9.9.9", "10.9.9.8"))
        assert static.reload()
        assert (await loop.sync_once()).ok
        fixed = build_snapshot([loop], settings=settings)
        healthy, body = healthz(fixed, [("memory", True)])
        assert (healthy, body["status"], body["warnings"]) == (True, "ok", [])
        assert report_json(report_of(fixed))["warnings"] == []
        assert report_json(report_of(fixed))["other_problems"] == []
        assert "STALE" not in render_table(report_of(fixed))
    finally:
        await admin.aclose()
        loop.close()
