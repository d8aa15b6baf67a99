"""`labelsync run` when its surroundings fail or change under it: Caddy restarted empty,
Docker unreachable, SIGTERM, the static file edited or broken, SIGHUP.

Each scenario runs in both upstream modes (`dynamic`, `static`).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import StartDaemon
from tests.support.caddy import CaddyProcess
from tests.support.containers import ContainerHandle, short_uuid
from tests.support.daemon import Daemon, wait_routed
from tests.support.docker_relay import DockerRelay
from tests.support.load import run_load
from tests.support.loopback import LoopbackBackend
from tests.support.scenario import Scenario, routes_for, unrouted
from tests.support.waiting import wait_until

MODES = ["dynamic", "static"]
MakeHost = Callable[[str], str]
StartBackend = Callable[..., ContainerHandle]


def kill_and_restart(caddy: CaddyProcess) -> None:
    """SIGKILL Caddy, then start it again from its base config (no labelsync server)."""
    process = caddy._process  # the harness has no kill(): a crash is what this test needs
    assert process is not None
    process.kill()
    process.wait(timeout=10)
    caddy.start()


@pytest.fixture
def private_daemons() -> Iterator[list[Daemon]]:
    """Daemons a test builds itself (for its own Caddy); closed when the test ends."""
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        daemon.close()


@pytest.mark.parametrize("mode", MODES)
def test_caddy_restarted_with_its_base_config_gets_the_routes_back(
    mode: str,
    caddy_factory: Callable[[], CaddyProcess],
    private_daemons: list[Daemon],
    backend: StartBackend,
    unique_host: str,
) -> None:
    """Seed: Caddy is killed and restarted with only its base config; labelsync re-creates
    its server and routes (at the next resync, 1s here) and the host answers again."""
    private = caddy_factory()
    prefix = f"ls{short_uuid()}"
    daemon = Daemon(
        private,
        name=f"ls-restart-{short_uuid()}",
        upstreams=mode,
        env={"LABELSYNC_LABEL_PREFIX": prefix, "LABELSYNC_RESYNC_INTERVAL": "1s"},
    )
    private_daemons.append(daemon)
    daemon.start()
    web = backend(labels={f"{prefix}.host": unique_host})
    wait_routed(daemon, unique_host, {web.name})
    log_start = len(daemon.logs())

    kill_and_restart(private)

    daemon.wait_log(rf"created Caddy server '{daemon.server}'", after=log_start, timeout=30)
    wait_routed(daemon, unique_host, {web.name}, timeout=30)
    assert len(daemon.routes()) == 1


@pytest.mark.parametrize("mode", MODES)
def test_docker_outage_removes_nothing_and_catches_up_afterwards(
    mode: str,
    start_daemon: StartDaemon,
    backend: StartBackend,
    make_host: MakeHost,
    tmp_path: Path,
) -> None:
    """Seed: the Docker API is unreachable for a few seconds: every route keeps answering
    and Caddy's routes stay as they were (resyncs every 1s fail meanwhile); a container
    started and one stopped during the outage are picked up once Docker answers again."""
    relay = DockerRelay(tmp_path / "docker.sock").start()
    try:
        scenario = Scenario(
            start_daemon,
            mode,
            LABELSYNC_DOCKER_HOST=relay.url,
            LABELSYNC_RESYNC_INTERVAL="1s",
        )
        daemon = scenario.daemon
        steady_host, leaving_host, new_host = (make_host(n) for n in ("steady", "leave", "new"))
        steady = backend(name="steady", labels=scenario.labels({"host": steady_host}))
        leaving = backend(name="leaving", labels=scenario.labels({"host": leaving_host}))
        wait_routed(daemon, steady_host, {steady.name})
        wait_routed(daemon, leaving_host, {leaving.name})
        hosts = {steady_host, leaving_host, new_host}
        before = routes_for(daemon, hosts)
        log_start = len(daemon.logs())

        relay.cut()
        daemon.wait_log(r"Docker event stream .* lost", after=log_start)
        newcomer = backend(name="newcomer", labels=scenario.labels({"host": new_host}))
        leaving.container.stop(timeout=1)
        # Resyncs keep failing while Docker is away; one failed listing is logged.
        daemon.wait_log(r"cannot reach the Docker engine", after=log_start)
        for _ in range(20):  # a few seconds of traffic across several failed resyncs
            assert daemon.body(steady_host) == steady.name
            time.sleep(0.1)
        assert routes_for(daemon, hosts) == before, "routes changed while Docker was away"

        relay.restore()
        daemon.wait_log(r"Docker event stream connected", after=log_start, timeout=30)
        wait_routed(daemon, new_host, {newcomer.name}, timeout=30)
        wait_until(lambda: unrouted(daemon, leaving_host), timeout=30, message="leaving gone")
        wait_routed(daemon, steady_host, {steady.name})
    finally:
        relay.close()


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_exits_cleanly_and_caddy_keeps_serving(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: SIGTERM stops labelsync at once with exit code 0, every route keeps its shape,
    and the routes keep serving without labelsync (checked for 3 s). In dynamic mode Caddy
    can no longer ask the resolver and falls back to each route's static member list,
    which labelsync brings up to date on its way out."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    web = backend(labels=scenario.labels({"host": unique_host}))
    wait_routed(daemon, unique_host, {web.name})
    shapes = daemon.shapes()

    started = time.monotonic()
    code = daemon.stop(signal.SIGTERM, timeout=10)
    print(f"SIGTERM [{mode}]: exit code {code} after {time.monotonic() - started:.2f}s")

    assert code == 0, daemon.logs()[-2000:]
    assert "Caddy keeps its config" in daemon.logs()
    assert daemon.shapes() == shapes, "labelsync changed a route on its way out"
    if mode == "dynamic":
        assert list(daemon.fallbacks().values()) == [[web.address()]]
    after = run_load(daemon.url, unique_host, clients=2, max_seconds=3, max_requests=3000)
    print(f"after SIGTERM [{mode}]: {after.summary()}")
    assert after.failed == 0, after.summary()
    assert set(after.backends) == {web.name}


def _static_routes(host: str, *upstreams: str) -> str:
    quoted = ", ".join(f'"{u}"' for u in upstreams)
    return f'[routes.site]\nhost = "{host}"\nupstreams = [{quoted}]\n'


@pytest.fixture
def loopback_backends() -> Iterator[tuple[LoopbackBackend, LoopbackBackend]]:
    """Two HTTP servers on 127.0.0.1 (not containers): `static-one`, `static-two`."""
    with LoopbackBackend("static-one") as one, LoopbackBackend("static-two") as two:
        yield one, two


def publish_version(directory: Path, version: str, content: str) -> None:
    """Publish `content` as `directory/routes.toml` the way a Kubernetes ConfigMap volume
    does: `routes.toml -> ..data/routes.toml`, `..data -> ..<version>`; a new version is a
    new directory and an atomic switch of `..data`, after which the old one is deleted."""
    fresh = directory / f"..{version}"
    fresh.mkdir()
    (fresh / "routes.toml").write_text(content)
    data = directory / "..data"
    previous = data.resolve() if data.is_symlink() else None
    staged = directory / "..data_tmp"
    staged.symlink_to(fresh.name)
    os.replace(staged, data)
    if previous is not None:
        shutil.rmtree(previous)
    link = directory / "routes.toml"
    if not link.is_symlink():
        link.symlink_to("..data/routes.toml")


@pytest.mark.parametrize("mode", MODES)
def test_static_file_routes_follow_edits_and_a_broken_file_keeps_the_last_good(
    mode: str,
    start_daemon: StartDaemon,
    make_host: MakeHost,
    tmp_path: Path,
    loopback_backends: tuple[LoopbackBackend, LoopbackBackend],
) -> None:
    """Seed: a route from `LABELSYNC_STATIC_FILE` to a loopback backend is served; editing
    the file re-routes; a broken file is logged and the last good version stays in service;
    the fixed file is picked up; so are new versions published ConfigMap-style (a switched
    symlink, the old target deleted), one after another."""
    one, two = loopback_backends
    host = make_host("static")
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    publish_version(config_dir, "v1", _static_routes(host, one.address))
    routes_file = config_dir / "routes.toml"
    scenario = Scenario(start_daemon, mode, LABELSYNC_STATIC_FILE=str(routes_file))
    daemon = scenario.daemon
    wait_routed(daemon, host, {"static-one"})

    routes_file.write_text(_static_routes(host, two.address))  # edited in place
    wait_routed(daemon, host, {"static-two"})

    log_start = len(daemon.logs())
    routes_file.write_text('[routes.site\nhost = "broken')
    daemon.wait_log(r"static file .*keeping the last good version", after=log_start)
    wait_routed(daemon, host, {"static-two"})

    routes_file.write_text(_static_routes(host, one.address, two.address))
    wait_routed(daemon, host, {"static-one", "static-two"})

    publish_version(config_dir, "v2", _static_routes(host, one.address))
    wait_routed(daemon, host, {"static-one"})
    publish_version(config_dir, "v3", _static_routes(host, two.address))
    wait_routed(daemon, host, {"static-two"})


@pytest.mark.parametrize("mode", MODES)
def test_sighup_reloads_the_static_file_and_resyncs(
    mode: str,
    start_daemon: StartDaemon,
    backend: StartBackend,
    make_host: MakeHost,
    tmp_path: Path,
    loopback_backends: tuple[LoopbackBackend, LoopbackBackend],
) -> None:
    """Seed: SIGHUP re-reads the static file and resyncs: a new version of the file that the
    watcher cannot see (switched in a directory it does not watch) is served after SIGHUP,
    and a route deleted from Caddy behind labelsync's back is restored."""
    one, two = loopback_backends
    static_host, container_host = make_host("static"), make_host("web")
    for version, upstream in (("v1", one), ("v2", two)):
        (tmp_path / version).mkdir()
        (tmp_path / version / "routes.toml").write_text(
            _static_routes(static_host, upstream.address)
        )
    # config/routes.toml -> current/routes.toml, current -> v1: the watcher watches config/
    # and v1/; switching `current` happens in tmp_path, which it does not watch.
    (tmp_path / "current").symlink_to("v1")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "routes.toml").symlink_to(tmp_path / "current" / "routes.toml")
    scenario = Scenario(
        start_daemon, mode, LABELSYNC_STATIC_FILE=str(tmp_path / "config" / "routes.toml")
    )
    daemon = scenario.daemon
    web = backend(labels=scenario.labels({"host": container_host}))
    wait_routed(daemon, static_host, {"static-one"})
    wait_routed(daemon, container_host, {web.name})

    # Drift: the container's route vanishes from Caddy without labelsync knowing. (On a
    # shared engine, other projects' container events also trigger a sync that repairs it.)
    [drifted] = routes_for(daemon, {container_host})
    deleted = httpx.delete(f"{daemon.caddy.admin_url}/id/{drifted['@id']}", trust_env=False)
    deleted.raise_for_status()
    (tmp_path / "current.next").symlink_to("v2")
    os.replace(tmp_path / "current.next", tmp_path / "current")
    log_start = len(daemon.logs())

    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)

    daemon.wait_log(r"SIGHUP: settings and static file reloaded; resyncing", after=log_start)
    wait_routed(daemon, static_host, {"static-two"})
    wait_routed(daemon, container_host, {web.name})
