"""Several Docker engines in what the daemon tells the outside: the snapshot and its state
file, `status` (text and JSON), `/metrics`, `/healthz`, systemd's STATUS= line and
`explain`. Records built by hand, no Docker: engine `local` answers, engine `b` is out.
With one engine none of it shows (the other report tests hold that output)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import io
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from labelsync.app.explain import _engine_notes, render, run_explain
from labelsync.core.engines import EngineState
from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import ContainerInfo
from labelsync.core.pools import build_desired
from labelsync.loop.reconcile import SyncState
from labelsync.report.healthz import healthz
from labelsync.report.metrics import Metrics
from labelsync.report.observability import Observability, status_line
from labelsync.report.snapshot import LiveView, Snapshot
from labelsync.report.status_report import render_table, report_json
from labelsync.report.views import engine_warning
from labelsync.settings import Settings
from tests.support.snapshots import FakeLoop, report_of

OUT_SINCE = datetime.datetime(2026, 3, 1, 12, 30, 5, tzinfo=datetime.UTC).timestamp()
LOCAL = EngineState("local", "unix:///var/run/docker.sock", up=True, containers=2)
B_OUT = EngineState(
    "b",
    "tcp://10.0.0.2:2376",
    up=False,
    reason="its event stream was lost",
    since=OUT_SINCE,
    containers=1,
)
B_WARNING = (
    "Docker engine b (tcp://10.0.0.2:2376) is out since 2026-03-01T12:30:05Z: its event "
    "stream was lost; its 1 container(s) keep the state of its last listing"
)


def tagged(name: str, engine: str, ip: str, **fields: Any) -> ContainerInfo:
    """A container as the EngineSet lists it among several engines: `name@engine`."""
    return ContainerInfo(
        id=f"{name}-{engine}".ljust(64, "0"),
        name=f"{name}@{engine}",
        created=1.0,
        labels={"labelsync.host": "app.test"},
        networks={"bridge": ip},
        exposed_ports=(8080,),
        engine=engine,
        **fields,
    )


CONTAINERS = (
    tagged("web-1", "local", "10.0.0.5"),
    tagged("web-2", "local", "10.0.0.6", health="unhealthy"),  # withheld: not a member
    tagged("web-1", "b", "10.0.1.5"),
)


class Engines:
    """`EngineSet.states` as the daemon passes it to the live view."""

    def __init__(self, *states: EngineState) -> None:
        self.now = tuple(states)
        self.calls = 0

    def __call__(self) -> tuple[EngineState, ...]:
        self.calls += 1
        return self.now


def loop_of(containers: tuple[ContainerInfo, ...] = CONTAINERS) -> FakeLoop:
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.containers = containers
    state.desired = build_desired(containers)
    state.synced.set()
    return FakeLoop(state)


def live(engines: Engines | None) -> LiveView:
    return LiveView([loop_of()], settings=Settings(), engines=engines)


# -- the snapshot and its state file -----------------------------------------------------------


def test_the_snapshot_holds_the_engines_and_each_members_engine() -> None:
    snapshot = live(Engines(LOCAL, B_OUT)).snapshot()
    assert snapshot.engines == (LOCAL, B_OUT)
    assert snapshot.engines_out == (B_OUT,)
    (pool,) = snapshot.pools
    engines = {m.container: (m.engine, m.in_pool) for m in pool.members}
    assert engines == {
        "web-1@local": ("local", True),
        "web-1@b": ("b", True),
        "web-2@local": ("local", False),  # withheld by Docker's health check
    }
    assert snapshot.engine_members() == {"local": 1, "b": 1}
    assert {v.name: v.engine for v in snapshot.containers} == {
        "web-1@local": "local",
        "web-2@local": "local",
        "web-1@b": "b",
    }


def test_one_engine_has_no_engines_and_no_member_engine() -> None:
    single = tuple(dataclasses.replace(c, engine=None) for c in CONTAINERS[:2])
    snapshot = LiveView([loop_of(single)], settings=Settings()).snapshot()
    assert snapshot.engines == () and snapshot.engine_members() == {}
    assert all(m.engine is None for pool in snapshot.pools for m in pool.members)


def test_the_state_file_round_trips_the_engines_and_member_engines() -> None:
    snapshot = live(Engines(LOCAL, B_OUT)).snapshot()
    payload = json.loads(json.dumps(snapshot.to_json()))
    assert payload["engines"][1] == {
        "name": "b",
        "endpoint": "tcp://10.0.0.2:2376",
        "up": False,
        "reason": "its event stream was lost",
        "since": OUT_SINCE,
        "containers": 1,
    }
    read_back = Snapshot.from_json(payload)
    assert read_back.engines == snapshot.engines
    assert read_back.pools == snapshot.pools
    assert read_back.containers == snapshot.containers


def test_a_state_file_without_engines_reads_with_the_defaults() -> None:
    """An earlier version's file: no `engines`, no member `engine`, no verdict `engine`."""
    payload = json.loads(json.dumps(live(Engines(LOCAL, B_OUT)).snapshot().to_json()))
    del payload["engines"]
    for pool in payload["pools"]:
        for member in pool["members"]:
            del member["engine"]
    for verdict in payload["containers"]:
        del verdict["engine"]
    read_back = Snapshot.from_json(payload)
    assert read_back.engines == ()
    assert all(m.engine is None for pool in read_back.pools for m in pool.members)
    assert all(v.engine is None for v in read_back.containers)


def test_the_live_view_keeps_its_snapshot_until_changed() -> None:
    engines = Engines(LOCAL, dataclasses.replace(B_OUT, up=True, reason=None, since=None))
    view = live(engines)
    assert view.snapshot().engines_out == ()
    engines.now = (LOCAL, B_OUT)
    assert view.snapshot().engines_out == ()  # cached: nothing said it changed
    view.changed()
    assert view.snapshot().engines_out == (B_OUT,)
    assert engines.calls == 2


@pytest.mark.parametrize("kind", [EventKind.ENGINE_DOWN, EventKind.ENGINE_UP])
async def test_an_engine_event_marks_the_live_view_changed(tmp_path: Path, kind: EventKind) -> None:
    """The EngineSet updates an engine's state before it sends engine-up/down; the
    observers are told of the event and look again on the next turn of the loop."""
    before, after = (LOCAL, B_OUT), (LOCAL, dataclasses.replace(B_OUT, up=True))
    if kind is EventKind.ENGINE_DOWN:
        before, after = after, before
    engines = Engines(*before)
    view = live(engines)
    observability = Observability(view, state_file=tmp_path / "state.json")
    assert view.snapshot().engines == before
    engines.now = after
    observability.on_event(DockerEvent(kind, "", None, 0, engine="b"))
    await asyncio.sleep(0)  # the observers look on the next turn
    await asyncio.sleep(0)  # and the state file is written on the one after
    assert view.snapshot().engines == after
    written = json.loads((tmp_path / "state.json").read_text())
    assert [e["up"] for e in written["engines"]] == [e.up for e in after]


def test_systemd_status_line_names_the_engines_that_are_out() -> None:
    line = status_line(live(Engines(LOCAL, B_OUT)).snapshot())
    assert line == (
        "in sync: 1 pool(s), 2 member(s), 0 label problem(s); "
        "Docker engine(s) out: b (last listing kept)"
    )
    assert "engine" not in status_line(live(Engines(LOCAL)).snapshot())


# -- status --------------------------------------------------------------------------------------


def test_status_json_lists_the_engines_and_each_members_engine() -> None:
    body = report_json(report_of(live(Engines(LOCAL, B_OUT)).snapshot()))
    assert list(body)[-1] == "engines"  # added after the fields that were there
    assert body["engines"] == [
        {
            "name": "local",
            "endpoint": "unix:///var/run/docker.sock",
            "up": True,
            "reason": None,
            "since": None,
            "containers": 2,
            "members": 1,
        },
        {
            "name": "b",
            "endpoint": "tcp://10.0.0.2:2376",
            "up": False,
            "reason": "its event stream was lost",
            "since": "2026-03-01T12:30:05Z",
            "containers": 1,
            "members": 1,
        },
    ]
    members = {m["container"]: m for m in body["pools"][0]["members"]}
    assert {name: m["engine"] for name, m in members.items()} == {
        "web-1@local": "local",
        "web-1@b": "b",
        "web-2@local": "local",
    }
    assert list(members["web-1@b"])[-1] == "engine"
    assert body["warnings"] == [B_WARNING]  # served from its last listing, as a stale file
    assert {c["name"]: c["engine"] for c in body["containers"]} == {
        "web-1@local": "local",
        "web-2@local": "local",
        "web-1@b": "b",
    }


def test_status_json_with_one_engine_has_no_engine_fields() -> None:
    single = tuple(dataclasses.replace(c, engine=None) for c in CONTAINERS[:2])
    snapshot = LiveView([loop_of(single)], settings=Settings()).snapshot()
    body = report_json(report_of(snapshot))
    assert "engines" not in body
    assert all("engine" not in m for m in body["pools"][0]["members"])
    assert all("engine" not in c for c in body["containers"])


def test_status_table_has_a_line_per_engine_under_the_daemon_line() -> None:
    table = render_table(report_of(live(Engines(LOCAL, B_OUT)).snapshot()))
    lines = table.splitlines()
    assert lines[1:3] == [
        "  engine local (unix:///var/run/docker.sock): up, 2 container(s), 1 member(s)",
        "  engine b (tcp://10.0.0.2:2376): OUT since 2026-03-01T12:30:05Z: its event stream "
        "was lost; 1 container(s), 1 member(s), as last listed",
    ]
    assert "STALE" not in table  # the engine's line says it, once
    assert "  web-1@b  " in table  # the member's engine is in its name


def test_status_table_with_every_engine_up() -> None:
    b_up = dataclasses.replace(B_OUT, up=True, reason=None)
    table = render_table(report_of(live(Engines(LOCAL, b_up)).snapshot()))
    assert "  engine b (tcp://10.0.0.2:2376): up, 1 container(s), 1 member(s)\n" in table
    assert "OUT" not in table


# -- /metrics and /healthz -----------------------------------------------------------------------


def scrape(view: LiveView) -> dict[str, Any]:
    text = generate_latest(Metrics(view, []).registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_metrics_have_each_engine_up_and_its_members() -> None:
    found = scrape(live(Engines(LOCAL, B_OUT)))
    up = {
        (s.labels["engine"], s.labels["endpoint"]): s.value
        for s in found["labelsync_docker_engine_up"].samples
    }
    assert up == {("local", "unix:///var/run/docker.sock"): 1.0, ("b", "tcp://10.0.0.2:2376"): 0.0}
    members = {
        s.labels["engine"]: s.value for s in found["labelsync_docker_engine_members"].samples
    }
    assert members == {"local": 1.0, "b": 1.0}
    assert found["labelsync_docker_up"].samples[0].value == 1.0  # one engine answers


def test_metrics_with_one_engine_have_no_engine_families() -> None:
    found = scrape(LiveView([loop_of()], settings=Settings()))
    assert "labelsync_docker_engine_up" not in found
    assert "labelsync_docker_engine_members" not in found


def test_healthz_is_degraded_not_unavailable_while_another_engine_answers() -> None:
    healthy, body = healthz(live(Engines(LOCAL, B_OUT)).snapshot(), [("caddy", True)])
    assert healthy  # 200: the other engine is served, b's last listing too
    assert (body["status"], body["reasons"], body["warnings"]) == ("degraded", [], [B_WARNING])
    assert body["docker_up"] is True


def test_healthz_is_ok_when_every_engine_answers() -> None:
    b_up = dataclasses.replace(B_OUT, up=True, reason=None)
    healthy, body = healthz(live(Engines(LOCAL, b_up)).snapshot(), [("caddy", True)])
    assert (healthy, body["status"], body["warnings"]) == (True, "ok", [])


def test_healthz_is_unavailable_when_no_engine_answers() -> None:
    view = live(Engines(dataclasses.replace(LOCAL, up=False, reason="refused"), B_OUT))
    view.loops[0].state.docker_up = False  # the last engine's stream went: stream-down
    healthy, body = healthz(view.snapshot(), [("caddy", True)])
    assert not healthy and body["status"] == "unavailable"
    assert body["reasons"] == ["Docker is unreachable"]
    assert len(body["warnings"]) == 2


def test_an_engine_out_before_its_first_change_has_no_since() -> None:
    never = EngineState("c", "ssh://deploy@10.0.0.3", up=False, reason="no route to host")
    assert engine_warning(never) == (
        "Docker engine c (ssh://deploy@10.0.0.3) is out: no route to host; its 0 container(s) "
        "keep the state of its last listing"
    )


# -- explain -------------------------------------------------------------------------------------


@pytest.fixture
def judged() -> Iterator[dict[str, dict[str, Any]]]:
    body = report_json(report_of(live(Engines(LOCAL, B_OUT)).snapshot()))
    yield {c["name"]: c for c in body["containers"]}


def test_explain_says_which_engine_the_container_is_on(judged: dict[str, Any]) -> None:
    verdict = judged["web-1@b"]
    assert verdict["engine"] == "b"
    head = render(verdict, []).splitlines()[0]
    assert head == f"web-1@b ({verdict['id'][:12]}): routed  [container running] on engine b"
    unhealthy = render(judged["web-2@local"], []).splitlines()[0]
    assert unhealthy.endswith("[container running, unhealthy] on engine local")


def test_explain_notes_that_the_containers_engine_is_out(judged: dict[str, Any]) -> None:
    out = {"b": B_WARNING}
    assert _engine_notes(judged["web-1@b"], out) == [B_WARNING]
    assert _engine_notes(judged["web-1@local"], out) == []
    assert f"note: {B_WARNING}\n" in render(
        judged["web-1@b"], _engine_notes(judged["web-1@b"], out)
    )


def test_explain_with_one_engine_names_none() -> None:
    single = tuple(dataclasses.replace(c, engine=None) for c in CONTAINERS[:1])
    snapshot = LiveView([loop_of(single)], settings=Settings()).snapshot()
    (verdict,) = report_json(report_of(snapshot))["containers"]
    assert "engine" not in verdict
    assert "engine" not in render(verdict, [])


def closed_endpoint() -> str:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{closed.getsockname()[1]}"


async def test_explain_reads_the_engine_from_a_running_daemons_state(tmp_path: Path) -> None:
    """`labelsync explain` in its own process: the daemon's state file, Caddy away."""
    path = tmp_path / "state.json"
    path.write_text(json.dumps(live(Engines(LOCAL, B_OUT)).snapshot().to_json()))
    settings = Settings(state_file=path, caddy_admin=closed_endpoint())
    out = io.StringIO()
    assert await run_explain(settings, "web-1@b", as_json=True, out=out) == 0
    verdict = json.loads(out.getvalue())
    assert verdict["engine"] == "b"
    assert B_WARNING in verdict["notes"]
    text = io.StringIO()
    assert await run_explain(settings, "web-1@local", out=text) == 0
    assert text.getvalue().splitlines()[0].endswith("routed  [container running] on engine local")
    assert "Docker engine b" not in text.getvalue()  # another engine's outage is not its note
