"""Several Docker engines, one Caddy: real engines, real requests (issue: pools that span hosts).

Three engines stand in for three hosts: the main engine (its containers reached at their
own addresses), and two extra dockerds (tests/support/engines.py), each in a network
namespace of its own, reached at its host address and the published host port: `b` over
its unix socket, `c` over `tcp://` with TLS client certificates, or over `ssh://`. One pool
has members on all three; load runs through Caddy while replicas scale, roll, and an
engine stops and starts.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StartDaemon
from tests.support.containers import ContainerHandle, short_uuid
from tests.support.daemon import Daemon, wait_routed
from tests.support.engines import ExtraEngines
from tests.support.load import Load
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]
MakeHost = Callable[[str], str]

DRAIN = {"STOP_DELAY": "1"}  # a replica told to stop serves one more second, as real ones do
# labelsync's own checks (dynamic mode) and Caddy's passive ones: a member whose engine
# went away with it fails its dial once, is retried elsewhere, and is left out after.
CHECKS = {
    "labelsync.health.path": "/health",
    "labelsync.health.interval": "500ms",
    "labelsync.health.passive.max_fails": "1",
    "labelsync.health.passive.fail_duration": "5s",
}


def engine_hosts(engines: ExtraEngines) -> str:
    """`LABELSYNC_DOCKER_HOST` for the main engine, `b` by socket and `c` by TLS."""
    b, c = engines
    return ",".join(
        [
            "unix:///var/run/docker.sock?name=local",
            f"{b.url}?name=b&host_address={b.host_address}",
            f"{c.tls_url}?name=c&tls={c.tls_client_dir}",
        ]
    )


def member_engines(daemon: Daemon, host: str) -> dict[str, str]:
    """Each member of `host`'s pool (container name) and its engine, from `status --json`."""
    (pool,) = [p for p in daemon.status_json()["pools"] if host in p["hosts"]]
    return {m["container"]: m.get("engine") for m in pool["members"]}


def engine_state(daemon: Daemon, name: str) -> dict[str, Any]:
    (engine,) = [e for e in daemon.status_json()["engines"] if e["name"] == name]
    return dict(engine)


def test_one_pool_over_three_engines_through_scale_rolls_and_an_engine_restart(
    engines: ExtraEngines,
    backend: StartBackend,
    start_daemon: StartDaemon,
    make_host: MakeHost,
) -> None:
    b, c = engines
    host = make_host("engines")
    labels = {"labelsync.host": host, **CHECKS}
    tag = short_uuid()
    local = backend(name=f"se-a1-{tag}", labels=labels, env=DRAIN, exact_name=True)
    on_b = [b.run_backend(f"se-b{i}-{tag}", labels, env=DRAIN, restart=True) for i in (1, 2)]
    on_c = c.run_backend(f"se-c1-{tag}", labels, env=DRAIN)
    daemon = start_daemon(env={"LABELSYNC_DOCKER_HOST": engine_hosts(engines)})
    everyone = {local.name, *(r.name for r in on_b), on_c.name}
    wait_routed(daemon, host, everyone, timeout=30)
    assert member_engines(daemon, host) == {
        f"{local.name}@local": "local",
        f"{on_b[0].name}@b": "b",
        f"{on_b[1].name}@b": "b",
        f"{on_c.name}@c": "c",
    }
    etag = daemon.config_etag()

    with Load(daemon.url, host, clients=4, max_seconds=90, max_requests=60_000) as load:
        load.wait_successes(200)
        # Scale up and down on every engine: up on c and on the main engine, down on the
        # main engine and on c, and roll one of b's replicas (up, then down).
        more = c.run_backend(f"se-c2-{tag}", labels, env=DRAIN)
        local2 = backend(name=f"se-a2-{tag}", labels=labels, env=DRAIN, exact_name=True)
        wait_routed(daemon, host, everyone | {more.name, local2.name}, timeout=15)
        local.container.stop(timeout=5)
        more.container.stop(timeout=5)
        rolled = b.run_backend(f"se-b3-{tag}", labels, env=DRAIN, restart=True)
        on_b[0].container.stop(timeout=5)
        serving = {local2.name, on_b[1].name, rolled.name, on_c.name}
        wait_routed(daemon, host, serving, timeout=15)
        assert daemon.config_etag() == etag, "scaling and rolling wrote Caddy config"

        # Engine b stops (its replicas die with it) and starts again (they come back).
        before = load.wait_successes(200).total
        b.stop()
        wait_until(lambda: not engine_state(daemon, "b")["up"], timeout=15, message="b out")
        wait_routed(daemon, host, {local2.name, on_c.name}, timeout=15)
        b.start()
        wait_until(lambda: engine_state(daemon, "b")["up"], timeout=20, message="b back")
        wait_routed(daemon, host, serving, timeout=20)
        result = load.wait_successes(200)
        assert result.total > before
    result = load.stop()
    print(f"three engines, scale, roll, engine b restarted: {result.summary()}")
    assert result.failed == 0, result.summary()
    assert daemon.config_etag() == etag, "an engine restart wrote Caddy config"
    logs = daemon.logs()
    assert "Docker engine b is out" in logs
    assert "Docker engine b (unix://" in logs and "answers again" in logs


def test_an_engine_over_ssh_and_an_unpublished_port(
    engines: ExtraEngines, start_daemon: StartDaemon, make_host: MakeHost, tmp_path: Path
) -> None:
    """`ssh://` runs `ssh … docker system dial-stdio` as the Docker CLI does (here an `ssh`
    that runs the Docker CLI's dial-stdio against engine b's socket, standing in for the
    host); a route whose port is not published there is a label error naming the fix."""
    b, _ = engines
    fake_ssh = tmp_path / "bin" / "ssh"
    fake_ssh.parent.mkdir()
    fake_ssh.write_text(f'#!/bin/sh\nexec docker -H "{b.url}" system dial-stdio\n')
    fake_ssh.chmod(fake_ssh.stat().st_mode | stat.S_IXUSR)
    host, closed = make_host("ssh"), make_host("closed")
    tag = short_uuid()
    served = b.run_backend(f"se-ssh-{tag}", {"labelsync.host": host})
    unpublished = b.run_backend(
        f"se-closed-{tag}", {"labelsync.host": closed, "labelsync.port": "9999"}
    )
    daemon = start_daemon(
        env={
            "LABELSYNC_DOCKER_HOST": (
                f"unix:///var/run/docker.sock?name=local,ssh://deploy@{b.host_address}?name=b"
            ),
            "PATH": f"{fake_ssh.parent}{os.pathsep}{os.environ['PATH']}",
        }
    )
    wait_routed(daemon, host, {served.name}, timeout=30)
    assert member_engines(daemon, host) == {f"{served.name}@b": "b"}
    explained = daemon.cli("explain", f"{unpublished.name}@b")
    assert explained.returncode == 1, explained.stdout + explained.stderr
    assert "port 9999 is not published on engine 'b'" in explained.stdout
    assert 'publish it (ports: ["9999"], docker run -p 9999)' in explained.stdout


def test_the_routes_of_an_engine_silent_at_the_start_stay(
    engines: ExtraEngines, start_daemon: StartDaemon, make_host: MakeHost
) -> None:
    """labelsync restarts while engine b's API does not answer (its socket moved aside), but
    its containers serve: their pool's route stays in Caddy and keeps serving (from the
    fallback list the stopped labelsync left), and b is listed when its API is back."""
    b, _ = engines
    host = make_host("silent")
    served = b.run_backend(f"se-kept-{short_uuid()}", {"labelsync.host": host})
    env = {
        "LABELSYNC_DOCKER_HOST": (
            f"unix:///var/run/docker.sock?name=local,{b.url}?name=b&host_address={b.host_address}"
        )
    }
    first = start_daemon(env=env)
    wait_routed(first, host, {served.name}, timeout=30)
    assert first.stop() == 0
    socket = Path(b.url.removeprefix("unix://"))
    aside = socket.with_name("docker.sock.aside")
    socket.rename(aside)
    try:
        second = start_daemon(env=env, name=first.server)
        second.wait_log(r"Docker engine\(s\) b not listed yet", timeout=15)
        bodies = {first.body(host) for _ in range(20)}  # Caddy listens where `first` had it
        assert bodies == {served.name}
    finally:
        aside.rename(socket)
    second.wait_log("every Docker engine listed", timeout=20)
    wait_routed(first, host, {served.name}, timeout=10)
