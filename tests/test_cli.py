"""The CLI's promises: exit codes, one-line reasons, `check` of compose files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import run_cli

COMPOSE = """
services:
  web:
    image: example/web
    expose: ["8080"]
    labels:
      labelsync.host: web.example.com
      labelsync.lb.policy: round_robin
  api:
    image: example/api
    ports: ["127.0.0.1:9000:8000/tcp"]
    deploy:
      labels:
        labelsync.host: api.example.com
        labelsync.lb.policy: rond_robin
  worker:
    image: example/worker
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # No daemon of this machine lends its settings unless a test says so.
    environment = {**os.environ, "LABELSYNC_STATE_FILE": "/nonexistent/state.json", **(env or {})}
    return run_cli(*args, env=environment, timeout=60)


def test_version_names_the_bundled_caddy() -> None:
    result = run("version")
    assert result.returncode == 0
    assert "labelsync" in result.stdout and "Caddy 2.11" in result.stdout


def test_check_of_a_compose_file_reports_each_problem_and_exits_1(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(COMPOSE)
    result = run("check", str(compose))
    assert result.returncode == 1
    assert (
        "error: container 'api': labelsync.lb.policy='rond_robin': unknown policy; "
        "did you mean 'round_robin'?" in result.stdout
    )
    assert "1 error(s)" in result.stdout


def test_check_of_a_clean_compose_file_exits_0(tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text(COMPOSE.replace("rond_robin", "round_robin"))
    result = run("check", str(compose))
    assert result.returncode == 0, result.stdout
    assert "0 error(s)" in result.stdout


def test_a_file_that_is_not_compose_is_a_usage_error(tmp_path: Path) -> None:
    bogus = tmp_path / "x.yaml"
    bogus.write_text("just: text\n")
    result = run("check", str(bogus))
    assert result.returncode == 2
    assert "services" in result.stderr


@pytest.mark.parametrize("command", ["render", "check"])
def test_unreachable_docker_is_one_line_naming_the_socket(command: str, tmp_path: Path) -> None:
    socket = f"unix://{tmp_path}/docker.sock"
    result = run(command, env={"LABELSYNC_DOCKER_HOST": socket})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert socket in lines[0]


def test_bad_settings_are_a_usage_error() -> None:
    result = run("version", env={"LABELSYNC_DEBOUNCE": "fast"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "labelsync: settings: LABELSYNC_DEBOUNCE='fast': not a duration: 'fast' "
        "(use a number and a unit: 250ms, 5s, 1m30s)"
    )


@pytest.mark.docker
def test_check_and_render_use_the_running_daemons_settings(tmp_path: Path) -> None:
    """A daemon with a static file and other ports: the CLI sees what it sees, and says so."""
    import json
    import uuid

    from labelsync.report.snapshot_json import STATE_VERSION
    from labelsync.settings import Settings, effective_settings

    static = tmp_path / "static.toml"
    static.write_text('[routes.a]\nhost = "a.test"\nupstreams = ["h:1"]\nlb.policy = "nope"\n')
    prefix = f"cli-{uuid.uuid4().hex[:8]}"  # no container on the shared engine has it
    daemon = Settings(static_file=static, listen=":8080,:8443", label_prefix=prefix)
    state = tmp_path / "state.json"
    state.write_text(
        json.dumps(
            {"version": STATE_VERSION, "pid": os.getpid(), "settings": effective_settings(daemon)}
        )
    )
    env = {"LABELSYNC_STATE_FILE": str(state)}

    checked = run("check", env=env)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"using the settings of the running labelsync (pid {os.getpid()})" in checked.stderr
    assert f"static file {static}" in checked.stderr
    assert "static file static.toml, [routes.a], line 4: lb.policy='nope'" in checked.stdout

    rendered = run("render", env=env)
    assert rendered.returncode == 0, rendered.stderr
    config = json.loads(rendered.stdout)
    assert config["apps"]["http"]["servers"]["labelsync"]["listen"] == [":8443"]
    assert config["apps"]["http"]["http_port"] == 8080

    own = run("check", "--env", env={**env, "LABELSYNC_LABEL_PREFIX": prefix})
    assert own.returncode == 0, own.stdout + own.stderr
    assert "running labelsync" not in own.stderr


EXPOSING = """
services:
  built:
    image: {image}
    labels:
      labelsync.host: built.example.com
  elsewhere:
    image: registry.invalid/never-pulled:1
    labels:
      labelsync.host: elsewhere.example.com
"""


def test_check_of_a_compose_file_reads_the_ports_of_local_images(
    tmp_path: Path, docker_client: Any
) -> None:
    """An image with EXPOSE gives the service its port; one Docker lacks is named."""
    import io
    import tarfile
    import uuid

    image = f"labelsync-test/expose:{uuid.uuid4().hex[:10]}"
    rootfs = io.BytesIO()
    with tarfile.open(fileobj=rootfs, mode="w") as tar:
        info = tarfile.TarInfo("marker")
        tar.addfile(info, io.BytesIO(b""))
    repository, tag = image.split(":")
    docker_client.api.import_image_from_data(
        rootfs.getvalue(), repository=repository, tag=tag, changes=["EXPOSE 8080"]
    )
    try:
        compose = tmp_path / "compose.yaml"
        compose.write_text(EXPOSING.format(image=image))
        result = run("check", str(compose))
    finally:
        docker_client.images.remove(image, force=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "'built'" not in result.stdout  # port 8080 from the image: no problem
    assert (
        "error: container 'elsewhere': labelsync.port: the compose file names no port and the "
        "image 'registry.invalid/never-pulled:1' was not inspected" in result.stdout
    )
    assert "2 container(s) with labelsync labels, 1 pool(s)" in result.stdout


def test_render_into_a_reader_that_leaves_early_ends_quietly(tmp_path: Path) -> None:
    """`labelsync render | head`: no BrokenPipeError traceback when the reader is gone."""
    env = {
        **os.environ,
        "LABELSYNC_STATE_FILE": "/nonexistent/state.json",
        "LABELSYNC_LABEL_PREFIX": "broken-pipe-test",
    }
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader left before labelsync wrote anything
    try:
        result = subprocess.run(
            [sys.executable, "-m", "labelsync.app.cli", "render"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=env,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 0


@pytest.mark.docker
@pytest.mark.parametrize(("budget", "dynamic"), [("3", True), ("2", False)])
def test_render_shows_what_the_dynamic_budget_makes_of_the_pools(
    tmp_path: Path, budget: str, dynamic: bool
) -> None:
    """Three pools: within a budget of 3 each asks the resolver; past a budget of 2 each
    starts with its members in the JSON, as the daemon writes them when it starts."""
    import json
    import uuid

    static = tmp_path / "static.toml"
    static.write_text(
        "".join(f'[routes.r{i}]\nhost = "r{i}.test"\nupstreams = ["h{i}:80"]\n' for i in range(3))
    )
    env = {
        "LABELSYNC_STATIC_FILE": str(static),
        "LABELSYNC_LABEL_PREFIX": f"cli-{uuid.uuid4().hex[:8]}",
        "LABELSYNC_DYNAMIC_BUDGET": budget,
    }
    rendered = run("render", env=env)
    assert rendered.returncode == 0, rendered.stderr
    routes = json.loads(rendered.stdout)["apps"]["http"]["servers"]["labelsync"]["routes"]
    proxies = [h for r in routes for h in r["handle"] if h["handler"] == "reverse_proxy"]
    assert len(proxies) == 3
    assert all(("dynamic_upstreams" in p) == dynamic for p in proxies), proxies


# -- `check` in-process, with a listing of records (no Docker) --------------------------------


def record(name: str, **labels: str) -> Any:
    from labelsync.core.model import ContainerInfo

    return ContainerInfo(
        id=name * 4,
        name=name,
        created=1.0,
        labels=labels,
        networks={"bridge": "172.17.0.9"},
        exposed_ports=(8080,),
    )


@pytest.fixture
def checking(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """`labelsync check --env` over the records in the returned list, in this process."""
    from labelsync.app import cli

    listed: list[Any] = []
    monkeypatch.setattr(cli, "_running_containers", lambda settings: list(listed))
    monkeypatch.setenv("LABELSYNC_STATE_FILE", "/nonexistent/state.json")
    monkeypatch.delenv("LABELSYNC_STATIC_FILE", raising=False)
    monkeypatch.delenv("LABELSYNC_LABEL_PREFIX", raising=False)
    return listed


def check(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from labelsync.app.cli import main

    code = main(["check", "--env"])
    return code, capsys.readouterr().out


def test_check_counts_only_the_containers_that_carry_labels_under_the_prefix(
    checking: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    checking.extend(
        [
            record("web-1", **{"labelsync.host": "web.test"}),
            record("web-2", **{"labelsync.host": "web.test"}),
            record("off", **{"labelsync.host": "off.test", "labelsync.enable": "false"}),
            record("postgres", **{"com.docker.compose.service": "db"}),
            record("redis"),
            record("other-proxy", **{"traefik.enable": "true", "labelsyncx.host": "x.test"}),
        ]
    )
    code, out = check(capsys)
    assert code == 0, out
    assert out.splitlines()[-1] == (
        "3 container(s) with labelsync labels, 1 pool(s), 2 member(s): 0 error(s), 0 warning(s)"
    )


def test_check_counts_by_the_configured_prefix(
    checking: list[Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LABELSYNC_LABEL_PREFIX", "edge")
    checking.extend(
        [record("a", **{"edge.host": "a.test"}), record("b", **{"labelsync.host": "b"})]
    )
    code, out = check(capsys)
    assert code == 0, out
    assert out.splitlines()[-1].startswith("1 container(s) with edge labels, 1 pool(s)")


def test_check_fails_on_a_static_file_with_a_toml_syntax_error(
    checking: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    static = tmp_path / "static.toml"
    static.write_text('[routes.site]\nhost = "site.test"\nupstreams = ["h:1" "h:2"]\n')
    monkeypatch.setenv("LABELSYNC_STATIC_FILE", str(static))
    code, out = check(capsys)
    assert code == 1, out
    assert out.splitlines() == [
        f"error: static file {static}: not valid TOML: Unclosed array (at line 3, column 20); "
        "not applied: a running labelsync keeps serving the last good version it read",
        "0 container(s) with labelsync labels, 0 static route(s), 0 pool(s), 0 member(s): "
        "1 error(s), 0 warning(s)",
    ]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda path: path.mkdir(), "cannot be read: Is a directory"),
        (lambda path: path.write_bytes(b"\xff\xfe[routes]\n"), "not UTF-8 text"),
    ],
)
def test_check_fails_on_a_static_file_it_cannot_read(
    checking: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    make: Any,
    reason: str,
) -> None:
    static = tmp_path / "static.toml"
    make(static)
    monkeypatch.setenv("LABELSYNC_STATIC_FILE", str(static))
    code, out = check(capsys)
    assert code == 1, out
    assert out.startswith(f"error: static file {static}: {reason}")
    assert out.splitlines()[-1].endswith(": 1 error(s), 0 warning(s)")


def test_check_of_a_good_static_file_counts_its_routes(
    checking: list[Any],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    static = tmp_path / "static.toml"
    static.write_text('[routes.a]\nhost = "a.test"\nupstreams = ["h:1", "h:2"]\n')
    monkeypatch.setenv("LABELSYNC_STATIC_FILE", str(static))
    checking.append(record("web", **{"labelsync.host": "web.test"}))
    code, out = check(capsys)
    assert code == 0, out
    assert out.splitlines()[-1] == (
        "1 container(s) with labelsync labels, 1 static route(s), 2 pool(s), 3 member(s): "
        "0 error(s), 0 warning(s)"
    )
