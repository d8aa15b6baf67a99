"""Static routes: a TOML file of non-container backends, through the same core as labels."""

from __future__ import annotations

import asyncio
import datetime
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from labelsync.core.model import Severity
from labelsync.core.pools import build_desired
from labelsync.sources.static import StaticFile, static_containers

FAILOVER = """
[routes.ollama]
host = "ollama.example.com"
upstreams = ["192.168.1.5:11434", "192.168.1.6:11434"]
lb.policy = "first"
health.path = "/api/tags"
health.interval = "10s"
"""


def test_a_failover_pair_becomes_one_first_pool_in_listed_order(tmp_path: Path) -> None:
    """Seed: the `192.168.1.5:11434` failover pair, primary first."""
    document = tomllib.loads(FAILOVER)
    containers, problems = static_containers(document, file="static.toml")
    assert problems == []
    desired = build_desired(containers, dynamic=False)
    (pool,) = desired.pools
    assert pool.shape.hosts == ("ollama.example.com",)
    assert pool.shape.settings.lb_policy == "first"
    assert pool.shape.settings.active is not None
    assert [m.address for m in pool.members] == ["192.168.1.5:11434", "192.168.1.6:11434"]
    assert {m.origin for m in pool.members} == {"static"}
    assert desired.problems == ()


def test_static_and_container_members_share_a_pool() -> None:
    from labelsync.core.model import ContainerInfo

    document = {"routes": {"app": {"host": "app.test", "upstreams": ["10.9.9.9:80"]}}}
    static, _ = static_containers(document, file="s.toml")
    web = ContainerInfo(
        id="c1",
        name="web",
        created=100.0,
        labels={"labelsync.host": "app.test"},
        networks={"net": "172.18.0.2"},
        exposed_ports=(8080,),
    )
    (pool,) = build_desired([web, *static], dynamic=False).pools
    assert sorted(m.address for m in pool.members) == ["10.9.9.9:80", "172.18.0.2:8080"]


def test_bad_keys_are_reported_like_labels_and_name_the_file_and_route() -> None:
    document = {
        "routes": {
            "api": {"host": "api.test", "upstreams": ["h:1"], "lb": {"policy": "rond_robin"}}
        }
    }
    containers, _ = static_containers(document, file="static.toml")
    desired = build_desired(containers, dynamic=False)
    assert desired.pools == ()
    (problem,) = {p for p in desired.problems if p.severity is Severity.ERROR}
    assert "did you mean 'round_robin'" in str(problem)


def test_a_route_without_upstreams_is_an_error() -> None:
    _, problems = static_containers({"routes": {"x": {"host": "x.test"}}}, file="f.toml")
    (problem,) = problems
    assert problem.severity is Severity.ERROR
    assert problem.key == "upstreams"


def test_a_broken_file_keeps_the_last_good_version_and_says_so(tmp_path: Path) -> None:
    """Kept, not hidden: one ERROR about the whole file, with the path, tomllib's line and
    column, that the last good routes still serve, and since when; gone once fixed."""
    path = tmp_path / "static.toml"
    path.write_text(FAILOVER)
    static = StaticFile(path, clock=lambda: FAILED_AT)
    assert static.reload()
    good = static.containers
    path.write_text("[routes.ollama\nhost = ")
    assert static.reload()  # what it yields changed: its problems
    assert static.containers == good
    (problem,) = static.problems
    assert problem.severity is Severity.ERROR
    assert problem.line == 1
    assert str(problem) == (
        f"static file {path}: not valid TOML: Expected ']' at the end of a table declaration "
        "(at line 1, column 15); stale since 2026-03-01T12:30:05Z: keeping the last good "
        "version (its routes still serve)"
    )
    assert static.merge_problems(()) == (problem,)
    assert not static.reload()  # the same failure again: nothing new
    path.write_text(FAILOVER.replace("192.168.1.6", "192.168.1.7"))
    assert static.reload()
    assert static.containers != good
    assert static.problems == ()


FAILED_AT = datetime.datetime(2026, 3, 1, 12, 30, 5, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: path.write_bytes(b'host = "\xff"\n'), "not UTF-8 text: 'utf-8' codec"),
        (lambda path: path.mkdir(), "cannot be read: Is a directory"),
        (lambda path: path.write_text("routes = 3\n"), "routes: must be a table"),
    ],
)
def test_a_file_never_read_whole_says_nothing_of_it_serves(
    tmp_path: Path, make: Callable[[Path], object], reason: str
) -> None:
    path = tmp_path / "static.toml"
    make(path)
    static = StaticFile(path, clock=lambda: FAILED_AT)
    assert static.reload()
    assert static.containers == ()
    (problem,) = static.problems
    assert str(problem).startswith(f"static file {path}: {reason}")
    assert str(problem).endswith(
        "; not applied since 2026-03-01T12:30:05Z: none of its routes serve until it is fixed"
    )


def test_read_once_by_the_cli_it_says_what_a_running_daemon_does(tmp_path: Path) -> None:
    path = tmp_path / "static.toml"
    path.write_text("[routes.a]\nhost = = 1\n")
    static = StaticFile(path, one_shot=True)
    static.reload()
    (problem,) = static.problems
    assert str(problem) == (
        f"static file {path}: not valid TOML: Invalid value (at line 2, column 8); not "
        "applied: a running labelsync keeps serving the last good version it read"
    )


async def test_the_watch_wakes_the_loop_when_the_file_breaks_and_when_it_is_fixed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "static.toml"
    path.write_text(FAILOVER)
    static = StaticFile(path)
    static.reload()
    changes = static.changes()
    waiting = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.3)  # the watch is set up
    path.write_text("[routes.ollama\nhost = ")
    await asyncio.wait_for(waiting, timeout=10)
    assert "stale since" in str(static.problems[0])
    waiting = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.1)
    path.write_text(FAILOVER)
    await asyncio.wait_for(waiting, timeout=10)
    assert static.problems == ()
    await changes.aclose()  # type: ignore[attr-defined]  # an async generator


LEGACY = """
[routes.legacy]
host = "legacy.example.com"
upstreams = ["127.0.0.1:9101", "127.0.0.1:9102"]
lb.policy = "round_robin"

[routes.other]
host = "other.example.com"
upstreams = ["127.0.0.1:9201"]
"""


def test_a_bad_value_is_reported_once_in_the_files_terms_and_keeps_the_route(
    tmp_path: Path,
) -> None:
    """Same rule as a syntax error: the last good version of that route stays."""
    path = tmp_path / "static.toml"
    path.write_text(LEGACY)
    static = StaticFile(path)
    assert static.reload()
    good = [c for c in static.containers if "legacy" in c.id]
    path.write_text(LEGACY.replace('"round_robin"', '"rond_robin"').replace("9201", "9202"))
    assert static.reload()
    (problem,) = static.problems
    assert str(problem) == (
        "static file static.toml, [routes.legacy], line 5: lb.policy='rond_robin': "
        "unknown policy; did you mean 'round_robin'?; keeping the last good version of "
        "this route"
    )
    assert [c for c in static.containers if "legacy" in c.id] == good
    assert any("9202" in c.labels["labelsync.address"] for c in static.containers)
    # The build reports nothing more about the file's labels: once, not per upstream.
    desired = build_desired(static.containers, dynamic=False)
    assert static.merge_problems(desired.problems) == (problem,)
    assert {p.shape.hosts for p in desired.pools} == {
        ("legacy.example.com",),
        ("other.example.com",),
    }


def test_a_bad_value_in_a_new_route_says_it_is_not_served(tmp_path: Path) -> None:
    path = tmp_path / "static.toml"
    path.write_text(
        '[routes.api]\nhost = "api.test"\nupstreams = ["h:1"]\n[routes.api.lb]\npolicy = "nope"\n'
    )
    static = StaticFile(path)
    static.reload()
    (problem,) = static.problems
    assert str(problem).startswith("static file static.toml, [routes.api], line 5: lb.policy=")
    assert str(problem).endswith("; the route is not served until this is fixed")
    assert static.containers == ()


def test_unknown_keys_are_named_without_the_label_prefix(tmp_path: Path) -> None:
    path = tmp_path / "static.toml"
    path.write_text('[routes.a]\nhost = "a.test"\nupstreams = ["h:1", "h:2"]\nlb.polcy = "first"\n')
    static = StaticFile(path)
    static.reload()
    (problem,) = static.problems
    assert str(problem) == (
        "static file static.toml, [routes.a], line 4: lb.polcy='first': unknown key; "
        "did you mean 'lb.policy'?"
    )
    assert len(static.containers) == 2  # a warning drops nothing
