"""`labelsync status`: merging the daemon's state file with Caddy's view, the table and the
JSON, the state file itself, and the exit code when Caddy does not answer."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from labelsync.app.status import live_state, run_status
from labelsync.core.model import ContainerInfo
from labelsync.core.pools import build_desired
from labelsync.loop.reconcile import SyncState
from labelsync.report.snapshot import Snapshot
from labelsync.report.state_file import (
    StateFileWriter,
    read_state_file,
    state_file_candidates,
    write_state_file,
)
from labelsync.report.status_report import build_report, render_table, report_json
from labelsync.settings import Settings
from tests.support.caddy import CaddyProcess, free_port
from tests.support.cli import run_cli
from tests.support.snapshots import snapshot_of

POOL_ID = "labelsync-app-test-0123abcd"


def dynamic_state(**overrides: Any) -> dict[str, Any]:
    """A state file as a dynamic-mode daemon writes it: one pool, three containers."""
    member = {
        "origin": "container",
        "weight": 1,
        "track": "stable",
        "container_state": "running",
        "docker_health": None,
        "in_pool": True,
    }
    state = {
        "version": 1,
        "pid": os.getpid(),
        "upstreams": "dynamic",
        "caddy_server": "labelsync",
        "caddy_admin": ["http://127.0.0.1:2019"],
        "docker_up": True,
        "caddy_up": [True],
        "last_apply_ok": True,
        "last_error": None,
        "written_at": "2026-01-01T00:00:00.000+00:00",
        "pools": [
            {
                "id": POOL_ID,
                "hosts": ["app.test"],
                "path": None,
                "policy": "round_robin",
                "split": 0,
                "active_check": "/health",
                "passive": {"max_fails": 3, "fail_duration": "30s"},
                "members": [
                    {
                        **member,
                        "address": "10.0.0.5:8080",
                        "container": "web-1",
                        "container_id": "a" * 64,
                        "check": {"healthy": True, "reason": "passing"},
                    },
                    {
                        **member,
                        "address": "10.0.0.6:8080",
                        "container": "web-2",
                        "container_id": "b" * 64,
                        "check": {"healthy": False, "reason": "status 503, expected 200"},
                    },
                    {
                        **member,
                        "address": "10.0.0.7:8080",
                        "container": "web-3",
                        "container_id": "c" * 64,
                        "docker_health": "unhealthy",
                        "in_pool": False,
                        "check": None,
                    },
                ],
            }
        ],
    }
    state.update(overrides)
    return state


def snap(state: dict[str, Any] | None) -> Snapshot | None:
    """The snapshot a state file holds, as `labelsync status` reads it back."""
    return None if state is None else Snapshot.from_json(state)


def dynamic_route() -> dict[str, Any]:
    return {
        "@id": POOL_ID,
        "match": [{"host": ["app.test"]}],
        "handle": [
            {
                "handler": "reverse_proxy",
                "dynamic_upstreams": {"source": "srv", "name": "x.pool.labelsync.internal."},
                "load_balancing": {"selection_policy": {"policy": "round_robin"}},
                "health_checks": {"passive": {"fail_duration": "30s", "max_fails": 3}},
            }
        ],
    }


def members_of(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["container"]: m for m in report["pools"][0]["members"]}


def dynamic_report(upstreams: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of `dynamic_state()` with its route in Caddy, and Caddy's `upstreams`."""
    return report_json(
        build_report(
            caddy_admin="http://127.0.0.1:2019",
            caddy_server="labelsync",
            routes=[dynamic_route()],
            upstreams=upstreams,
            caddy_health=None,
            snapshot=snap(dynamic_state()),
        )
    )


def test_dynamic_members_get_counts_from_their_srv_target_names() -> None:
    upstreams = [
        {"address": "10-0-0-5.ip4.labelsync.internal.:8080", "num_requests": 2, "fails": 1},
        {"address": "10-0-0-6.ip4.labelsync.internal.:8080", "num_requests": 0, "fails": 0},
        # the same IP dialled by a static pool elsewhere: not this member's counts
        {"address": "10.0.0.5:8080", "num_requests": 9, "fails": 9},
    ]
    report = report_json(
        build_report(
            caddy_admin="http://127.0.0.1:2019",
            caddy_server="labelsync",
            routes=[dynamic_route(), {"@id": "users-own-route"}],
            upstreams=upstreams,
            caddy_health=None,
            snapshot=snap(dynamic_state()),
        )
    )
    assert [p["id"] for p in report["pools"]] == [POOL_ID]
    members = members_of(report)
    assert members["web-1"] == {
        "container": "web-1",
        "origin": "container",
        "address": "10.0.0.5:8080",
        "health": "healthy",
        "reason": "active check passing; passive: 1/3 failures",
        "active_requests": 2,
        "failures": 1,
        "total_requests": None,
        "caddy_upstream": "10-0-0-5.ip4.labelsync.internal.:8080",
    }
    assert members["web-2"]["health"] == "unhealthy"
    assert members["web-2"]["reason"] == "active check failing: status 503, expected 200"
    # Withheld by Docker's health check, never asked for by Caddy: counts unknown.
    assert members["web-3"]["health"] == "unhealthy"
    assert members["web-3"]["reason"] == "Docker health check: unhealthy"
    assert members["web-3"]["active_requests"] is None
    assert members["web-3"]["failures"] is None
    assert report["daemon"]["docker_up"] is True


def test_a_dynamic_member_gets_the_counts_of_its_own_container_not_of_its_ip() -> None:
    """Caddy lists a gone container's upstream for up to an hour: on the same IP, under
    its own name. Its failures are not the current container's."""
    upstreams = [
        {"address": "10-0-0-5.dddddddddddd.ip4.labelsync.internal.:8080", "fails": 3},
        {"address": "10-0-0-5.aaaaaaaaaaaa.ip4.labelsync.internal.:8080", "num_requests": 1},
    ]
    web = members_of(dynamic_report(upstreams))["web-1"]
    assert (web["failures"], web["active_requests"]) == (0, 1)
    assert web["caddy_upstream"] == "10-0-0-5.aaaaaaaaaaaa.ip4.labelsync.internal.:8080"


def test_passive_failures_at_max_fails_make_a_member_unhealthy() -> None:
    upstreams = [
        {"address": "10-0-0-5.ip4.labelsync.internal.:8080", "num_requests": 0, "fails": 3}
    ]
    member = members_of(dynamic_report(upstreams))["web-1"]
    assert member["health"] == "unhealthy"
    assert member["reason"] == "3 failed request(s) within 30s (max_fails 3)"


def test_first_verdict_pending_is_unknown_not_healthy() -> None:
    state = dynamic_state()
    state["pools"][0]["members"][0]["check"] = {"healthy": None, "reason": "not checked yet"}
    state["pools"][0]["passive"] = None
    route = dynamic_route()
    del route["handle"][0]["health_checks"]
    report = report_json(
        build_report(
            caddy_admin="a",
            caddy_server="s",
            routes=[route],
            upstreams=[],
            caddy_health=None,
            snapshot=snap(state),
        )
    )
    member = members_of(report)["web-1"]
    assert member["health"] == "unknown"
    assert member["reason"] == "active check: not checked yet"


def static_route(active: bool = True) -> dict[str, Any]:
    checks: dict[str, Any] = {"passive": {"fail_duration": "10s", "max_fails": 2}}
    if active:
        checks["active"] = {"uri": "/health"}
    return {
        "@id": POOL_ID,
        "match": [{"host": ["app.test"], "path": ["/api/*"]}],
        "handle": [
            {
                "handler": "reverse_proxy",
                "upstreams": [{"dial": "10.0.0.5:8080"}, {"dial": "10.0.0.6:8080"}],
                "load_balancing": {"selection_policy": {"policy": "first"}},
                "health_checks": checks,
            }
        ],
    }


def test_static_mode_without_a_daemon_reads_everything_from_caddy() -> None:
    upstreams = [
        {"address": "10.0.0.5:8080", "num_requests": 1, "fails": 0},
        {"address": "10.0.0.6:8080", "num_requests": 0, "fails": 0},
    ]
    report = report_json(
        build_report(
            caddy_admin="unix:///run/labelsync/admin.sock",
            caddy_server="labelsync",
            routes=[static_route()],
            upstreams=upstreams,
            caddy_health={"10.0.0.5:8080": True, "10.0.0.6:8080": False},
            snapshot=snap(None),
        )
    )
    pool = report["pools"][0]
    assert (pool["hosts"], pool["path"], pool["policy"]) == (["app.test"], "/api/*", "first")
    assert pool["upstreams"] == "static"
    first, second = pool["members"]
    assert first["container"] is None and first["origin"] is None  # only Caddy was asked
    assert (first["address"], first["health"], first["active_requests"]) == (
        "10.0.0.5:8080",
        "healthy",
        1,
    )
    assert second["health"] == "unhealthy"
    assert second["reason"] == "Caddy's active check failing"
    assert report["daemon"] is None


def test_static_active_check_not_yet_reported_by_caddy_is_unknown() -> None:
    report = report_json(
        build_report(
            caddy_admin="a",
            caddy_server="s",
            routes=[static_route()],
            upstreams=[],
            caddy_health={},
            snapshot=snap(None),
        )
    )
    member = report["pools"][0]["members"][0]
    assert member["health"] == "unknown"
    assert member["failures"] is None  # not reported: not guessed as 0


def test_dynamic_pool_without_a_daemon_says_members_are_unknown() -> None:
    report = build_report(
        caddy_admin="a",
        caddy_server="s",
        routes=[dynamic_route()],
        upstreams=[],
        caddy_health=None,
        snapshot=snap(None),
    )
    assert report.pools[0].members == ()
    assert report.pools[0].note is not None and "not running" in report.pools[0].note
    assert "members unknown" in render_table(report)


def test_table_is_aligned_and_shows_unknown_as_a_dash() -> None:
    upstreams = [
        {"address": "10-0-0-5.ip4.labelsync.internal.:8080", "num_requests": 12, "fails": 0}
    ]
    report = build_report(
        caddy_admin="http://127.0.0.1:2019",
        caddy_server="labelsync",
        routes=[dynamic_route()],
        upstreams=upstreams,
        caddy_health=None,
        snapshot=snap(dynamic_state()),
    )
    table = render_table(report)
    lines = table.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("MEMBER"))
    rows = [line for line in lines if line.lstrip().startswith("web-")]
    assert len(rows) == 3
    health_column = header.index("HEALTH")
    assert all(row[health_column:].split()[0] in ("healthy", "unhealthy") for row in rows)
    # Right-aligned counts end under the end of their header.
    active_end = header.index("ACTIVE") + len("ACTIVE")
    assert rows[0][active_end - 2 : active_end] == "12"
    assert rows[2][active_end - 1] == "-"
    assert "\x1b[" not in table
    coloured = render_table(report, colour=True)
    assert "\x1b[32mhealthy" in coloured and "\x1b[31munhealthy" in coloured


def test_json_is_stable() -> None:
    report = build_report(
        caddy_admin="a",
        caddy_server="s",
        routes=[dynamic_route()],
        upstreams=[],
        caddy_health=None,
        snapshot=snap(dynamic_state()),
    )
    first = json.dumps(report_json(report))
    assert first == json.dumps(report_json(report))
    body = report_json(report)
    assert body["pools"][0]["membership"] == "resolver"
    assert list(body) == [
        "version",
        "caddy",
        "daemon",
        "pools",
        "notes",
        "containers",
        "other_problems",
        "warnings",
        "traffic",  # issue 18: added after the fields that were there
    ]
    assert list(body["pools"][0])[-1] == "traffic"
    assert list(body["pools"][0]["members"][0]) == [
        "container",
        "origin",
        "address",
        "health",
        "reason",
        "active_requests",
        "failures",
        "total_requests",
        "caddy_upstream",
    ]


# -- the state file ---------------------------------------------------------------------------


def container(name: str, ip: str, **fields: Any) -> ContainerInfo:
    labels = {"labelsync.host": "app.test", "labelsync.health.path": "/health"}
    return ContainerInfo(
        id=name * 4,
        name=name,
        created=float(len(fields)),
        labels=labels,
        networks={"bridge": ip},
        exposed_ports=(8080,),
        **fields,
    )


def test_state_records_members_and_containers_withheld_by_docker_health() -> None:
    containers = (
        container("web-1", "10.0.0.5"),
        container("web-2", "10.0.0.6", health="unhealthy"),
        container("web-3", "10.0.0.7", state="paused"),
        container("web-4", "10.0.0.8", state="exited"),
    )
    desired = build_desired(containers)
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.desired, state.containers = desired, containers
    payload = snapshot_of([state], endpoints=["http://127.0.0.1:2019"]).to_json()
    (pool,) = payload["pools"]
    by_name = {m["container"]: m for m in pool["members"]}
    assert set(by_name) == {"web-1", "web-2", "web-3"}  # exited: not listed at all
    assert by_name["web-1"]["in_pool"] is True
    assert (by_name["web-2"]["in_pool"], by_name["web-2"]["docker_health"]) == (False, "unhealthy")
    assert by_name["web-3"]["container_state"] == "paused"
    assert pool["active_check"] == "/health"
    assert pool["passive"] == {"max_fails": 3, "fail_duration": "30s"}
    report = report_json(
        build_report(
            caddy_admin="a",
            caddy_server="s",
            routes=None,
            upstreams=[],
            caddy_health=None,
            snapshot=snap(json.loads(json.dumps(payload))),
        )
    )
    health = {m["container"]: (m["health"], m["reason"]) for m in members_of_all(report)}
    assert health["web-2"] == ("unhealthy", "Docker health check: unhealthy")
    assert health["web-3"] == ("unhealthy", "container paused")


def members_of_all(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for pool in report["pools"] for m in pool["members"]]


def test_state_file_is_replaced_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "run" / "state.json"
    write_state_file(path, {"version": 1, "pid": 1})
    write_state_file(path, {"version": 1, "pid": 2})
    assert read_state_file(path) == {"version": 1, "pid": 2}
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temporary left
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    path.write_text('{"version": 99}')
    assert read_state_file(path) is None
    path.write_text("{torn")
    assert read_state_file(path) is None


async def test_writer_coalesces_requests_and_skips_unchanged_states(tmp_path: Path) -> None:
    calls = []

    def snapshot() -> Snapshot:
        calls.append(1)
        return Snapshot.from_json({"version": 1, "pid": os.getpid(), "written_at": str(len(calls))})

    writer = StateFileWriter(tmp_path / "state.json", snapshot)
    for _ in range(5):
        writer.request()
    await asyncio.sleep(0)
    assert writer.writes == 1
    writer.write_if_changed()  # only the time differs
    assert writer.writes == 1
    writer.remove()
    assert not writer.path.exists()


def test_a_dead_daemons_state_file_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = tmp_path / "state.json"
    write_state_file(path, dynamic_state(pid=int(dead.stdout)))
    settings = Settings(state_file=path)
    state, notes = live_state(settings)
    assert state is None and "not running" in notes[0]
    write_state_file(path, dynamic_state())
    state, notes = live_state(settings)
    assert state is not None and notes == []


def test_unreachable_caddy_exits_2_with_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"
    settings = Settings(caddy_admin=endpoint, state_file=tmp_path / "none.json")
    out = io.StringIO()
    code = asyncio.run(run_status(settings, as_json=True, out=out))
    assert code == 2
    assert out.getvalue() == ""
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and endpoint in error


def test_cli_exit_code_2_when_caddy_is_unreachable(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LABELSYNC_CADDY_ADMIN": f"http://127.0.0.1:{free_port()}",
        "LABELSYNC_STATE_FILE": str(tmp_path / "none.json"),
    }
    done = run_cli("status", "--json", env=env)
    assert done.returncode == 2
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert "did not answer" in done.stderr


def test_state_file_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert state_file_candidates(Settings()) == [
        tmp_path / "labelsync" / "state.json",
        Path("/run/labelsync/state.json"),
    ]
    chosen = tmp_path / "elsewhere.json"
    assert state_file_candidates(Settings(state_file=chosen)) == [chosen]
    monkeypatch.setenv("LABELSYNC_STATE_FILE", str(chosen))
    assert Settings().state_file == chosen


def test_a_stopping_daemon_leaves_another_daemons_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    writer = StateFileWriter(path, lambda: Snapshot.from_json({"version": 1, "pid": os.getpid()}))
    writer.write_now()
    write_state_file(path, {"version": 1, "pid": os.getpid() + 100_000})  # someone else's
    writer.remove()
    assert path.exists()


def test_a_canary_pool_shows_the_labels_policy_and_caddys() -> None:
    """A split in dynamic mode: weighted by the labels, round_robin in Caddy; both said."""
    state = dynamic_state()
    state["pools"][0]["policy"] = "weighted_round_robin"
    state["pools"][0]["split"] = 10
    report = build_report(
        caddy_admin="http://127.0.0.1:2019",
        caddy_server="labelsync",
        routes=[dynamic_route()],
        upstreams=[],
        caddy_health=None,
        snapshot=snap(state),
    )
    pool = report_json(report)["pools"][0]
    assert (pool["policy"], pool["caddy_policy"]) == ("weighted_round_robin", "round_robin")
    assert "policy weighted_round_robin (Caddy: round_robin), dynamic" in render_table(report)
    same = report_json(
        build_report(
            caddy_admin="http://127.0.0.1:2019",
            caddy_server="labelsync",
            routes=[dynamic_route()],
            upstreams=[],
            caddy_health=None,
            snapshot=snap(dynamic_state()),
        )
    )
    assert same["pools"][0]["caddy_policy"] is None


def test_a_pool_outside_the_dynamic_budget_says_so() -> None:
    """Past LABELSYNC_DYNAMIC_BUDGET a quiet pool carries its members in Caddy's JSON."""
    route = dynamic_route()
    handler = route["handle"][0]
    del handler["dynamic_upstreams"]
    handler["upstreams"] = [{"dial": "10.0.0.5:8080"}]
    state = dynamic_state()
    state["pools"][0]["membership"] = "json"
    report = build_report(
        caddy_admin="http://127.0.0.1:2019",
        caddy_server="labelsync",
        routes=[route],
        upstreams=[],
        caddy_health=None,
        snapshot=snap(state),
    )
    body = report_json(report)
    assert body["pools"][0]["upstreams"] == "static"
    assert body["pools"][0]["membership"] == "json"
    assert "static (outside the dynamic budget: members in Caddy's JSON)" in render_table(report)
    # Caddy runs no active checks for it: labelsync's verdicts still count.
    members = members_of(body)
    assert members["web-1"]["health"] == "healthy"
    assert members["web-2"]["health"] == "unhealthy"
    assert "status 503, expected 200" in members["web-2"]["reason"]


# -- label problems in the table; the exit code without a daemon --------------------------


def labelled(name: str, ip: str, created: float, **labels: str) -> ContainerInfo:
    return ContainerInfo(
        id=name * 4,
        name=name,
        created=created,
        labels={f"labelsync.{key}": value for key, value in labels.items()},
        networks={"bridge": ip},
        exposed_ports=(8080,),
    )


def test_the_table_lists_every_label_problem_and_conflict_of_the_json() -> None:
    containers = (
        labelled("web-1", "10.0.0.5", 1.0, host="app.test", **{"lb.policy": "round_robin"}),
        labelled("web-2", "10.0.0.6", 2.0, host="app.test", **{"lb.policy": "first"}),
        labelled("web-3", "10.0.0.7", 3.0, host="app.test", **{"lb.policy": "first"}),
        labelled("api-1", "10.0.0.8", 4.0, host="api.test", **{"lb.policy": "rond_robin"}),
        labelled("typo-1", "10.0.0.9", 5.0, host="typo.test", **{"lb.polcy": "first"}),
    )
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.desired, state.containers = build_desired(containers), containers
    report = build_report(
        caddy_admin="a",
        caddy_server="s",
        routes=None,
        upstreams=[],
        caddy_health=None,
        snapshot=snap(json.loads(json.dumps(snapshot_of([state]).to_json()))),
    )
    body = report_json(report)
    in_json = [p for c in body["containers"] for p in c["problems"]] + body["other_problems"]
    texts = {p["text"] for p in in_json}
    assert any("disagree" in t for t in texts)  # the pool conflict, web-2 and web-3
    assert any("rond_robin" in t for t in texts)  # the bad value, api-1 not routed
    assert any("lb.polcy" in t for t in texts)  # the unknown key, typo-1 routed
    table = render_table(report)
    assert "problems (1 error(s), 2 warning(s)):" in table
    for problem in in_json:
        assert f"  {problem['severity']}: {problem['text']}\n" in table


def daemon_state(caddy: CaddyProcess, **overrides: Any) -> dict[str, Any]:
    return dynamic_state(caddy_admin=[caddy.admin_url], pools=[], **overrides)


async def test_status_exits_2_when_no_daemon_runs_after_showing_caddys_view(
    tmp_path: Path, caddy: CaddyProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "state.json"
    settings = Settings(caddy_admin=caddy.admin_url, state_file=path)
    for as_json in (False, True):
        out = io.StringIO()
        assert await run_status(settings, as_json=as_json, out=out) == 2
        assert "labelsync is not running" in out.getvalue()  # Caddy's view, with the note
        assert as_json is False or json.loads(out.getvalue())["daemon"] is None
        error = capsys.readouterr().err
        assert error.count("\n") == 1
        assert error.startswith(
            f"labelsync: status: no labelsync daemon is running (no state file of a live one "
            f"at {path}): above is Caddy's view only"
        )
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    write_state_file(path, daemon_state(caddy, pid=int(dead.stdout)))
    assert await run_status(settings, as_json=False, out=io.StringIO()) == 2
    error = capsys.readouterr().err
    assert f"{path} is from labelsync pid {int(dead.stdout)}, which is not running" in error

    write_state_file(path, daemon_state(caddy))  # this process: a daemon that runs
    out = io.StringIO()
    assert await run_status(settings, as_json=False, out=out) == 0
    assert f"labelsync pid {os.getpid()}" in out.getvalue()
    assert capsys.readouterr().err == ""


def test_status_without_daemon_or_caddy_says_both_in_one_line(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LABELSYNC_CADDY_ADMIN": f"http://127.0.0.1:{free_port()}",
        "LABELSYNC_STATE_FILE": str(tmp_path / "none.json"),
    }
    done = run_cli("status", env=env)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("labelsync: status: no labelsync daemon is running (no state file")
    assert str(tmp_path / "none.json") in line
    assert "and Caddy's admin API did not answer (tried http://127.0.0.1:" in line
