"""`labelsync run` with the bundled Caddy (the quick start): what the stop says, and a
restart after a crash that adopts the Caddy left running instead of replacing it.

Each run gets a runtime directory of its own (`XDG_RUNTIME_DIR`), a free loopback port for
Caddy and one for the resolver, and a static file routing one host to a backend on
loopback; a label prefix of its own keeps other tests' containers out of its Caddy.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from labelsync.caddy.embedded import is_running
from tests.e2e.conftest import StartDaemon
from tests.support.caddy import LOG_DIR, free_port
from tests.support.containers import short_uuid
from tests.support.daemon import LabelsyncProcess, free_udp_port
from tests.support.load import Load
from tests.support.loopback import LoopbackBackend
from tests.support.waiting import wait_until

MODES = ["dynamic", "static"]


class BundledRun(LabelsyncProcess):
    """`labelsync run` starting (or adopting) the bundled Caddy in `home/run/labelsync`.

    Runs made with the same `home` and `env` share the runtime directory, the ports
    and the static file: a second one is "the same quick start, run again".
    """

    def __init__(self, home: Path, name: str, env: dict[str, str]) -> None:
        self.home = home
        self.runtime_dir = home / "run" / "labelsync"
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = LOG_DIR / f"bundled-{name}.log"
        self.state_path = home / "state.json"
        self.env = {
            **os.environ,
            "LABELSYNC_CADDY_ADMIN": "embedded",
            "LABELSYNC_AUTO_HTTPS": "off",
            "LABELSYNC_LOG_LEVEL": "DEBUG",
            "LABELSYNC_STATE_FILE": str(self.state_path),
            "LABELSYNC_DASHBOARD_LISTEN": "off",
            "XDG_RUNTIME_DIR": str(home / "run"),
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    def start(self) -> BundledRun:
        (self.home / "run").mkdir(parents=True, exist_ok=True)
        self._log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._spawn()
        return self

    def logs(self) -> str:
        """This run's log (the file holds earlier runs' too)."""
        with self.log_path.open("rb") as log:
            log.seek(self._log_start)
            return log.read().decode(errors="replace")

    def wait_log(self, text: str, timeout: float = 20.0) -> None:
        def found() -> bool:
            self._raise_if_exited()
            return text in self.logs()

        wait_until(found, timeout=timeout, message=f"log line {text!r}")

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Wait for this run's first sync (its state file says so)."""

        def synced() -> bool:
            self._raise_if_exited()
            state = json.loads(self.state_path.read_text())
            return bool(state.get("synced")) and state.get("pid") == self.pid

        wait_until(synced, timeout=timeout, message="the first sync")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def caddy_pid(self) -> int:
        return int((self.runtime_dir / "caddy.pid").read_text())

    def admin(self) -> httpx.Client:
        """A client for the bundled Caddy's admin API (its unix socket)."""
        transport = httpx.HTTPTransport(uds=str(self.runtime_dir / "admin.sock"))
        return httpx.Client(base_url="http://localhost", transport=transport, trust_env=False)


@pytest.fixture
def bundled_runs() -> Iterator[list[BundledRun]]:
    """Runs a test starts; stopped when it ends, and any Caddy they left killed."""
    runs: list[BundledRun] = []
    yield runs
    for run in runs:
        run.stop()
    for run in runs:
        try:
            pid = run.caddy_pid()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if os.fsencode(run.runtime_dir / "caddy.json") in cmdline.split(b"\0"):
            os.kill(pid, signal.SIGKILL)


def quick_start_env(home: Path, mode: str, routes: str) -> tuple[dict[str, str], str]:
    """The settings of a run with a static file holding `routes`; and the Caddy URL."""
    static_file = home / "routes.toml"
    static_file.write_text(routes)
    port = free_port()
    env = {
        "LABELSYNC_LISTEN": f"127.0.0.1:{port}",
        "LABELSYNC_UPSTREAMS": mode,
        "LABELSYNC_RESOLVER_LISTEN": f"127.0.0.1:{free_udp_port()}",
        "LABELSYNC_STATIC_FILE": str(static_file),
        "LABELSYNC_LABEL_PREFIX": f"ls{short_uuid()}",  # no other test's containers
    }
    return env, f"http://127.0.0.1:{port}"


def static_route(host: str, upstream: str) -> str:
    return f'[routes.site]\nhost = "{host}"\nupstreams = ["{upstream}"]\n'


def get(url: str, host: str) -> httpx.Response:
    return httpx.get(url, headers={"Host": host, "Connection": "close"}, timeout=5.0)


def test_sigterm_says_the_bundled_caddy_was_stopped_with_it(
    tmp_path: Path, bundled_runs: list[BundledRun]
) -> None:
    """The last line of a SIGTERM stop says that the bundled Caddy stopped too, and where
    nothing answers now (it used to say "Caddy keeps its config")."""
    env, url = quick_start_env(tmp_path, "static", "")
    # No Docker needed: labelsync starts Caddy and waits for Docker.
    env["LABELSYNC_DOCKER_HOST"] = f"unix://{tmp_path}/no-docker.sock"
    run = BundledRun(tmp_path, f"stop-{short_uuid()}", env).start()
    bundled_runs.append(run)
    run.wait_log("bundled Caddy (pid")
    caddy_pid = run.caddy_pid()

    assert run.stop(signal.SIGTERM) == 0, run.logs()[-3000:]

    last = run.logs().strip().splitlines()[-1]
    listen = env["LABELSYNC_LISTEN"]
    assert last.endswith(
        f"labelsync stopped; the bundled Caddy (pid {caddy_pid}) was stopped with it: "
        f"nothing answers on {listen} any more"
    ), last
    assert "keeps its config" not in run.logs()
    assert not is_running(caddy_pid)
    with pytest.raises(httpx.ConnectError):
        get(url, "any.test")


def test_sigterm_with_an_external_caddy_says_it_keeps_its_config(
    start_daemon: StartDaemon,
) -> None:
    """With a Caddy labelsync did not start, the stop leaves it as it is, and says so."""
    daemon = start_daemon(upstreams="static")
    assert daemon.stop(signal.SIGTERM) == 0
    last = daemon.logs().strip().splitlines()[-1]
    assert last.endswith("labelsync stopped; Caddy keeps its config"), last
    assert "bundled" not in last


def routes_filled(admin: httpx.Client) -> bool:
    """labelsync's routes are in Caddy, each with its member list (dynamic mode's
    fallback is written a moment after the route)."""
    routes = admin.get("/config/apps/http/servers/labelsync/routes").json() or []
    return bool(routes) and all(r["handle"][0].get("upstreams") for r in routes)


@pytest.mark.parametrize("mode", MODES)
def test_a_restart_after_sigkill_adopts_the_orphaned_caddy(
    mode: str, tmp_path: Path, bundled_runs: list[BundledRun], docker_client: Any
) -> None:
    """`labelsync run` killed with -9 leaves its bundled Caddy serving; the next run in the
    same runtime directory adopts it: not one request refused or failed (a reset counts)
    while requests flow through the orphan and the new run starts, syncs and runs, the
    Caddy pid stays, and nothing is written to it. SIGTERM then stops the adopted Caddy,
    and the stop line says so."""
    host = f"adopt-{short_uuid()}.test"
    with LoopbackBackend("adopt-backend") as backend:
        env, url = quick_start_env(tmp_path, mode, static_route(host, backend.address))
        name = f"adopt-{mode}-{short_uuid()}"
        first = BundledRun(tmp_path, name, env).start()
        bundled_runs.append(first)
        first.wait_synced()
        with first.admin() as admin:
            wait_until(lambda: routes_filled(admin), timeout=20, message="the routes")
            etag_before = admin.get("/config/").headers["Etag"]
        assert get(url, host).status_code == 200
        caddy_pid = first.caddy_pid()

        first.stop(signal.SIGKILL)
        assert is_running(caddy_pid), "the bundled Caddy died with labelsync"

        load = Load(url, host, clients=4, max_seconds=60, max_requests=40_000, pause=0.002)
        with load:
            load.wait_successes(200)  # the orphan serves alone
            second = BundledRun(tmp_path, name, env).start()
            bundled_runs.append(second)
            second.wait_synced()
            load.wait_requests(400)  # and once the new run has synced
        result = load.result
        print(f"\nadopt [{mode}]: {result.summary()}")

        assert result.failures == 0, result.summary()
        assert result.total >= 600 and result.successes == result.total
        assert second.caddy_pid() == caddy_pid
        assert is_running(caddy_pid)
        assert f"adopted the bundled Caddy (pid {caddy_pid})" in second.logs()
        with second.admin() as admin:
            assert admin.get("/config/").headers["Etag"] == etag_before, "adopting wrote"
        assert get(url, host).status_code == 200

        assert second.stop(signal.SIGTERM) == 0, second.logs()[-3000:]
        assert f"the bundled Caddy (pid {caddy_pid}) was stopped with it" in second.logs()
        wait_until(lambda: not is_running(caddy_pid), timeout=5, message="Caddy to stop")
