"""core/explain.py: why a container is or is not routed, the same for `labelsync explain`,
the dashboard and `status --json`; and the `explain` command's choice of container."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from labelsync.app.explain import NotFound, pick
from labelsync.core.explain import (
    NOT_ROUTED,
    ROUTED,
    UNHEALTHY,
    ContainerVerdict,
    declared_routes,
    explain_all,
    judge_verdict,
    verdict_json,
)
from labelsync.core.model import ContainerInfo, HealthStatus
from labelsync.core.pools import build_desired
from labelsync.loop.reconcile import SyncState
from labelsync.report.snapshot import Snapshot
from labelsync.report.status_report import build_report, render_table, report_json
from tests.support.cli import run_cli
from tests.support.snapshots import snapshot_of


def container(
    name: str,
    labels: Mapping[str, str] | None = None,
    *,
    networks: Mapping[str, str] | None = None,
    ports: tuple[int, ...] = (8080,),
    **fields: Any,
) -> ContainerInfo:
    full = {"labelsync.host": f"{name}.test"} if labels is None else {}
    full.update(
        {
            k if "." in k and k.startswith("io.") else f"labelsync.{k}": v
            for k, v in (labels or {}).items()
        }
    )
    return ContainerInfo(
        id=fields.pop("id", f"{name}-id".ljust(64, "0")),
        name=name,
        created=float(fields.pop("created", 100.0)),
        labels=full,
        networks={"bridge": "172.17.0.2"} if networks is None else networks,
        exposed_ports=ports,
        **fields,
    )


def explain(*containers: ContainerInfo) -> dict[str, ContainerVerdict]:
    desired = build_desired(containers)
    return {v.name: v for v in explain_all(containers, desired)}


def whys(verdict: ContainerVerdict) -> list[str]:
    return [r.why for route in verdict.routes for r in route.reasons] + [
        r.why for r in verdict.reasons
    ]


def test_a_serving_container_is_routed_with_its_pool_and_address() -> None:
    verdict = explain(container("web"))["web"]
    assert verdict.status == ROUTED
    (route,) = verdict.routes
    assert (route.address, route.hosts, route.reasons) == ("172.17.0.2:8080", ("web.test",), ())
    assert route.pool is not None and route.pool.startswith("labelsync-web-test-")


@pytest.mark.parametrize(
    ("fields", "why", "fix"),
    [
        ({"state": "exited"}, "container is exited, not running", "docker start web"),
        ({"state": "paused"}, "container is paused", "docker unpause web"),
        ({"health": "unhealthy"}, "Docker health check: unhealthy", "docker inspect"),
        ({"health": "starting"}, "Docker health check: starting", "HEALTHCHECK"),
    ],
)
def test_container_state_and_docker_health_say_why_and_what_to_do(
    fields: dict[str, Any], why: str, fix: str
) -> None:
    verdict = explain(container("web", **fields))["web"]
    assert verdict.status == NOT_ROUTED
    (reason,) = verdict.routes[0].reasons
    assert reason.why.startswith(why)
    assert reason.fix is not None and fix in reason.fix


def test_enable_false_is_switched_off_not_an_error() -> None:
    verdict = explain(container("web", {"host": "a.test", "enable": "false"}))["web"]
    assert verdict.status == NOT_ROUTED
    (reason,) = verdict.routes[0].reasons
    assert reason.why == "switched off: labelsync.enable='false'"
    assert reason.fix == "remove labelsync.enable"
    assert verdict.problems == ()


def test_label_problems_that_drop_a_route_are_its_reasons() -> None:
    found = explain(
        container("noport", {"host": "a.test"}, ports=()),
        container("twoports", {"host": "b.test"}, ports=(80, 8080)),
        container("wrongnet", {"host": "c.test", "network": "frontend"}),
        container("twonets", {"host": "d.test"}, networks={"a": "10.1.0.2", "b": "10.2.0.2"}),
        container("policy", {"host": "e.test", "lb.policy": "rond_robin"}),
    )
    assert all(v.status == NOT_ROUTED for v in found.values())
    assert "container exposes no port; set labelsync.port" in whys(found["noport"])[0]
    assert "several ports (80, 8080)" in whys(found["twoports"])[0]
    assert "not one of the container's networks" in whys(found["wrongnet"])[0]
    assert "set labelsync.network to one of them" in whys(found["twonets"])[0]
    assert "did you mean 'round_robin'?" in whys(found["policy"])[0]
    assert found["policy"].problems[0].key == "labelsync.lb.policy"


def test_a_typo_in_host_means_no_route_and_names_the_key_meant() -> None:
    verdict = explain(container("typo", {"hots": "a.test", "port": "8080"}))["typo"]
    assert verdict.status == NOT_ROUTED and verdict.routes == ()
    reasons = whys(verdict)
    assert reasons[0] == "no route: labelsync.host is not set"
    assert any("did you mean 'labelsync.host'?" in why for why in reasons)


def test_an_error_in_a_named_route_leaves_the_default_route_routed() -> None:
    labels = {"host": "a.test", "route.admin.host": "admin.test", "route.admin.port": "x"}
    verdict = explain(container("web", labels))["web"]
    assert declared_routes(verdict_labels(labels), "labelsync") == ["", "admin"]
    assert [(r.route, r.status) for r in verdict.routes] == [("", ROUTED), ("admin", NOT_ROUTED)]
    assert verdict.status == "partly routed"
    assert "labelsync.route.admin.port='x'" in verdict.routes[1].reasons[0].why


def verdict_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {f"labelsync.{k}": v for k, v in labels.items()}


def test_leaving_containers_are_not_members_yet_still_parse() -> None:
    web = container("web")
    desired = build_desired([web], withdrawn={web.id})
    (verdict,) = explain_all([web], desired)
    assert verdict.status == NOT_ROUTED
    assert "leaving" in verdict.routes[0].reasons[0].why


def test_containers_without_labels_under_the_prefix_are_left_out() -> None:
    plain = ContainerInfo(id="p" * 64, name="plain", created=1.0, labels={"other.host": "x"})
    assert explain_all([plain], build_desired([plain])) == []


def test_an_unhealthy_member_turns_its_route_unhealthy_with_the_reason() -> None:
    verdict = explain(container("web"))["web"]

    def health_of(pool: str, address: str) -> tuple[HealthStatus, str | None]:
        return HealthStatus.UNHEALTHY, "active check failing: status 503, expected 200"

    judged = verdict_json(judge_verdict(verdict, health_of))
    assert judged["status"] == UNHEALTHY
    (reason,) = judged["routes"][0]["reasons"]
    assert (
        reason["why"]
        == "in its pool, but unhealthy: active check failing: status 503, expected 200"
    )


def test_status_json_carries_the_verdicts_judged_with_member_health() -> None:
    """The snapshot (state file) holds the verdicts; the report judges them with the
    pools' health."""
    containers = (
        container("web-1", {"host": "app.test", "health.path": "/health"}),
        container("web-2", {"host": "app.test", "health.path": "/health"}, state="exited"),
        container("typo", {"hots": "x.test"}),
    )
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.desired = build_desired(containers)
    state.containers = containers
    payload = json.loads(json.dumps(snapshot_of([state]).to_json()))
    pool_id = payload["pools"][0]["id"]
    # labelsync's own check failed for web-1
    payload["pools"][0]["members"][0]["check"] = {"healthy": False, "reason": "status 503"}
    snapshot = Snapshot.from_json(payload)
    assert Snapshot.from_json(snapshot.to_json()).containers == snapshot.containers
    report = report_json(
        build_report(
            caddy_admin="a",
            caddy_server="s",
            routes=None,
            upstreams=[],
            caddy_health=None,
            snapshot=snapshot,
        )
    )
    by_name = {c["name"]: c for c in report["containers"]}
    assert set(by_name) == {"web-1", "web-2", "typo"}
    assert by_name["web-1"]["status"] == UNHEALTHY
    assert by_name["web-1"]["routes"][0]["pool"] == pool_id
    assert "active check failing: status 503" in by_name["web-1"]["routes"][0]["reasons"][0]["why"]
    assert by_name["web-2"]["routes"][0]["hosts"] == ["app.test"]
    assert by_name["web-2"]["routes"][0]["reasons"][0]["fix"] == "docker start web-2"
    assert "labelsync.hots" in {p["key"] for p in by_name["typo"]["problems"]}
    # nothing outside the prefix, and no environment, reaches the report
    text = json.dumps(report)
    assert "io." not in text and "PATH" not in text


CANDIDATES = [
    {"name": "web-1", "id": "abc123" + "0" * 58},
    {"name": "web-10", "id": "abd456" + "0" * 58},
    {"name": "db", "id": "ffff00" + "0" * 58},
]


@pytest.mark.parametrize(
    ("query", "name"),
    [("web-1", "web-1"), ("abd", "web-10"), ("ff", "db"), ("/db", "db"), ("d", "db")],
)
def test_explain_picks_by_name_then_id_prefix_then_name_prefix(query: str, name: str) -> None:
    assert pick(query, CANDIDATES)["name"] == name


@pytest.mark.parametrize(("query", "message"), [("ab", "several"), ("zz", "no container")])
def test_explain_refuses_ambiguous_or_unknown_names(query: str, message: str) -> None:
    with pytest.raises(NotFound, match=message):
        pick(query, CANDIDATES)


def test_explain_exits_2_when_no_daemon_runs_and_docker_is_unreachable(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "LABELSYNC_STATE_FILE": str(tmp_path / "none.json"),
        "LABELSYNC_DOCKER_HOST": f"unix://{tmp_path}/no.sock",
    }
    done = run_cli("explain", "web", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "no.sock" in done.stderr


def test_status_table_lists_containers_that_are_not_routed() -> None:
    containers = (container("web-1"), container("web-2", state="exited"))
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.desired, state.containers = build_desired(containers), containers
    snapshot = Snapshot.from_json(json.loads(json.dumps(snapshot_of([state]).to_json())))
    report = build_report(
        caddy_admin="a",
        caddy_server="s",
        routes=None,
        upstreams=[],
        caddy_health=None,
        snapshot=snapshot,
    )
    table = render_table(report)
    assert "\n  web-2  not routed: container is exited, not running\n" in table
    assert "  web-1  " not in table.split("not routed (")[1]


def test_a_pool_caddy_refused_says_so_with_caddys_reason() -> None:
    web = container("web")
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.desired, state.containers = build_desired([web]), (web,)
    pool = state.desired.pools[0].id
    state.refused = {pool: "loading new config: bad matcher"}
    snapshot = Snapshot.from_json(json.loads(json.dumps(snapshot_of([state]).to_json())))
    (verdict,) = snapshot.containers
    assert verdict.status == NOT_ROUTED
    (route,) = verdict.routes
    assert route.status == "refused by Caddy"
    assert (
        route.reasons[0].why == "Caddy refused this pool's route: loading new config: bad matcher"
    )
