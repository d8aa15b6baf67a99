"""`examples/compose.yaml` run as the README runs it: `docker compose up -d --build`, requests
through Caddy's published port, scaling under load, labelsync recreated and Caddy restarted
under load, and `down`. One stack for the module; the tests run in file order and each
leaves the stack as it found it (3 `web` replicas, everything running).

Stand-ins (tests/support/compose.py): Caddy and whoami are local images, the Python base of
the Containerfile is a Debian bookworm image, Caddy publishes on random loopback ports.
Nothing is exported (no DOCKER_GID, none of the file's variables), and the Docker socket
labelsync mounts is owned `root:4242`, mode 0660, as a stock Linux host's `root:docker`
(a pass-through to the engine's own socket, whatever this host's is like).

The file's variables (ports, network, project name) are checked with `docker compose
config`: what `up` would run, without a second stack.

What can fail anywhere is checked here: served again, no failed request, no request
waiting for a DNS timeout. How fast (the longest request while labelsync is recreated,
the time until a restarted Caddy serves again, against their targets) is measured by
`python -m bench --only deploy` (bench/deploy.py), which runs this stack the same way.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import docker
import httpx
import pytest

from tests.support.compose import (
    EXAMPLES,
    ComposeStack,
    GroupOwnedDockerSocket,
    compose_available,
    compose_command,
    compose_environment,
    from_web,
    replicas_answering,
)
from tests.support.load import Load, LoadResult, run_load
from tests.support.requirements import skip_or_fail_under_ci
from tests.support.stack_images import StackImages
from tests.support.waiting import wait_until

HOST = "whoami.localhost"  # the example's own label
COMPOSE_FILE = EXAMPLES / "compose.yaml"
# The Docker socket's group as labelsync's container sees it: not root's, not the image's
# user's (10001), and no group the image names.
SOCKET_GID = 4242
IMAGE_USER = "10001"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def docker_socket() -> Iterator[GroupOwnedDockerSocket]:
    """The engine's socket as `root:4242 0660`, whatever this host's own is like."""
    with GroupOwnedDockerSocket(SOCKET_GID) as socket:
        yield socket


@pytest.fixture(scope="module")
def stack(
    stack_images: StackImages,
    docker_socket: GroupOwnedDockerSocket,
    request: pytest.FixtureRequest,
) -> Iterator[ComposeStack]:
    # Replicas shut down gracefully (serve 1 s after SIGTERM), as real servers do. The
    # example's socket mount, from the group-owned socket (the same target: it replaces it).
    running = ComposeStack(
        COMPOSE_FILE,
        stack_images,
        request.node.nodeid,
        services={
            "web": {"environment": {"STOP_DELAY": "1"}},
            "labelsync": {"volumes": [f"{docker_socket.path}:/var/run/docker.sock:ro"]},
        },
    )
    try:
        running.up("--build")
        # The first test says what is wrong when it does not serve; every later one needs it.
        with contextlib.suppress(AssertionError):
            wait_until(
                lambda: len(replicas_answering(url(running), HOST, 12)) == 3,
                timeout=60,
                interval=0.2,
                message="3 web replicas answering through Caddy",
            )
        yield running
    finally:
        running.down()


def url(stack: ComposeStack) -> str:
    return stack.url("caddy", 80)


def caddy_config_etag(stack: ComposeStack) -> str:
    with stack.admin_client() as admin:
        response = admin.get("/config/")
        response.raise_for_status()
        return response.headers["Etag"]


def load(stack: ComposeStack, **options: object) -> Load:
    return Load(url(stack), HOST, clients=4, max_seconds=90, is_success=from_web, **options)  # type: ignore[arg-type]


# -- the file's variables: defaults and overrides (`docker compose config`) ---------------------


def compose_config(*options: str, **variables: str) -> dict[str, Any]:
    """`docker compose [OPTIONS] -f examples/compose.yaml config` with nothing exported but
    `variables`; fails on any warning (a variable without a default, say)."""
    missing = compose_available()
    if missing:
        skip_or_fail_under_ci(missing, ci_note=" (CI is set: deployment tests must run)")
    result = subprocess.run(
        [*compose_command(), *options, "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=compose_environment(variables),
        cwd="/",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "WARN" not in result.stderr and "not set" not in result.stderr, result.stderr
    loaded = json.loads(result.stdout)
    assert isinstance(loaded, dict)
    return loaded


def published(config: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    """Caddy's published ports as (host address, host port, container port)."""
    return [
        (str(port.get("host_ip", "")), str(port["published"]), int(port["target"]))
        for port in config["services"]["caddy"]["ports"]
    ]


def test_the_file_needs_no_variable_and_keeps_todays_names_and_ports_by_default() -> None:
    config = compose_config()
    assert config["name"] == "labelsync-example"
    assert published(config) == [("", "80", 80), ("", "443", 443)]
    assert config["networks"]["edge"]["name"] == "edge"
    labelsync = config["services"]["labelsync"]
    assert labelsync["environment"]["LABELSYNC_NETWORK"] == "edge"
    # Nothing to export for the socket's group: the image takes it itself.
    assert not labelsync.get("group_add"), labelsync.get("group_add")
    assert not labelsync.get("user"), labelsync.get("user")
    volumes = [(v["source"], v["target"]) for v in labelsync["volumes"] if v["type"] == "bind"]
    assert volumes == [("/var/run/docker.sock", "/var/run/docker.sock")], volumes


def test_ports_network_and_project_name_follow_the_environment() -> None:
    config = compose_config(
        LABELSYNC_EXAMPLE_HTTP_PORT="127.0.0.1:8080",
        LABELSYNC_EXAMPLE_HTTPS_PORT="8443",
        LABELSYNC_EXAMPLE_NETWORK="lb-edge",
        COMPOSE_PROJECT_NAME="lb-two",
    )
    assert config["name"] == "lb-two"
    assert published(config) == [("127.0.0.1", "8080", 80), ("", "8443", 443)]
    assert config["networks"]["edge"]["name"] == "lb-edge"
    # labelsync's default network follows: the one Caddy dials the members on.
    assert config["services"]["labelsync"]["environment"]["LABELSYNC_NETWORK"] == "lb-edge"
    for service in ("caddy", "labelsync", "web"):
        assert list(config["services"][service]["networks"]) == ["edge"], service
    # `-p` wins over the file's `name:` too; volumes are the project's.
    assert compose_config("-p", "lb-three")["name"] == "lb-three"


# -- up ------------------------------------------------------------------------------------------


def test_up_with_nothing_exported_routes_through_a_socket_of_a_non_root_group(
    stack: ComposeStack, docker_socket: GroupOwnedDockerSocket
) -> None:
    """A stock Linux host: the socket is `root:docker 0660` and nobody exported its gid."""
    assert "DOCKER_GID" not in stack.env()
    assert not any(name.startswith("LABELSYNC_EXAMPLE_") for name in stack.env())
    labelsync = stack.container("labelsync")
    # What labelsync's container mounts: root-owned, a group other than root's, 0660.
    mounted = labelsync.exec_run(
        [
            "python",
            "-c",
            "import os; s = os.stat('/var/run/docker.sock'); "
            "print(s.st_uid, s.st_gid, oct(s.st_mode & 0o777))",
        ]
    ).output.decode()
    assert mounted.split() == ["0", str(docker_socket.gid), "0o660"], mounted
    try:
        wait_until(
            lambda: len(replicas_answering(url(stack), HOST, 12)) == 3,
            timeout=30,
            interval=0.2,
            message="3 web replicas answering through Caddy",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; labelsync's log:\n{stack.logs('labelsync')[-3000:]}"
        ) from None
    # Nothing handed to the container for it: no group added, no user given.
    assert not labelsync.attrs["HostConfig"].get("GroupAdd"), labelsync.attrs["HostConfig"]
    assert not labelsync.attrs["Config"].get("User"), labelsync.attrs["Config"]


def test_up_serves_the_three_replicas_round_robin_through_the_published_port(
    stack: ComposeStack,
) -> None:
    names = {c.id[:12] for c in stack.containers("web")}
    with httpx.Client(base_url=url(stack), trust_env=False, timeout=5.0) as client:
        seen = [client.get("/", headers={"Host": HOST}).headers.get("X-Backend") for _ in range(9)]
    assert set(seen[:3]) == names, seen
    assert seen[:3] * 3 == seen, f"round robin cycles in one order: {seen}"


def process_status(container: Any, pid: int = 1) -> dict[str, list[str]]:
    """`/proc/PID/status` of a process in `container`, each field's words."""
    status = container.exec_run(["cat", f"/proc/{pid}/status"]).output.decode()
    return {
        line.split(":", 1)[0]: line.split(":", 1)[1].split()
        for line in status.splitlines()
        if ":" in line
    }


def test_the_image_runs_unprivileged_with_the_socket_group_and_turns_healthy(
    stack: ComposeStack,
) -> None:
    labelsync = stack.container("labelsync")
    wait_until(
        lambda: (
            labelsync.client.containers.get(labelsync.id).attrs["State"]["Health"]["Status"]
            == "healthy"
        ),
        timeout=60,
        interval=0.5,
        message="labelsync's HEALTHCHECK (/healthz) to pass",
    )
    # PID 1 is labelsync itself (the entrypoint exec'd it: signals reach it), as uid and gid
    # 10001 (real, effective, saved, filesystem), with the socket's group and no other
    # (not root's), and no capability left from starting as root.
    status = process_status(labelsync)
    assert status["Name"] == ["labelsync"], status
    assert status["Uid"] == [IMAGE_USER] * 4, status
    assert status["Gid"] == [IMAGE_USER] * 4, status
    assert status["Groups"] == [str(SOCKET_GID)], status
    assert int(status["CapEff"][0], 16) == 0 and int(status["CapPrm"][0], 16) == 0, status
    logs = labelsync.logs().decode(errors="replace")
    took = f"took the group of /var/run/docker.sock (gid {SOCKET_GID}, mode 0660)"
    assert took in logs, logs[-2000:]
    labels = labelsync.image.labels
    assert labels["org.opencontainers.image.title"] == "labelsync", labels
    assert "org.opencontainers.image.version" in labels, labels


def reached_docker(code: int, output: str) -> bool:
    """`labelsync check` listed the containers (its exit status and output say so)."""
    return code in (0, 1) and "container(s) with" in output and "Traceback" not in output


def test_the_entrypoint_follows_docker_host_and_leaves_a_given_user_be(
    stack: ComposeStack, docker_socket: GroupOwnedDockerSocket
) -> None:
    """The image's entrypoint run again beside the daemon (`docker exec`: root, as the
    container starts), then `docker run` as the image's user with `--group-add`, as the
    README documented before. `labelsync check` lists the containers once: 0, or 1 for
    another run's bad labels, after its summary line; 2 when it cannot reach Docker."""
    labelsync = stack.container("labelsync")
    image_entrypoint = list(labelsync.image.attrs["Config"]["Entrypoint"])

    def entrypoint(*, user: str = "", **environment: str) -> tuple[int, str]:
        result = labelsync.exec_run(
            [*image_entrypoint, "check"], user=user, environment=environment, demux=False
        )
        return result.exit_code, result.output.decode(errors="replace")

    # The socket where DOCKER_HOST says (a link to the mounted one: the same group).
    labelsync.exec_run(["ln", "-sf", "/var/run/docker.sock", "/tmp/engine.sock"])
    code, output = entrypoint(DOCKER_HOST="unix:///tmp/engine.sock")
    assert reached_docker(code, output), output
    assert f"took the group of /tmp/engine.sock (gid {SOCKET_GID}, mode 0660)" in output, output
    # Already the image's user: it execs labelsync unchanged, and without the socket's
    # group the socket refuses (the group is what opens it)...
    code, output = entrypoint(user=IMAGE_USER)
    assert code == 2 and "permission denied" in output, output
    assert "took the group" not in output, output
    # ...while `docker run --user 10001 --group-add GID` reaches Docker.
    container = stack.client.containers.run(
        labelsync.image.id,
        ["check"],
        detach=True,
        network_mode="none",
        user=IMAGE_USER,
        group_add=[str(SOCKET_GID)],
        volumes={str(docker_socket.path): {"bind": "/var/run/docker.sock", "mode": "ro"}},
        labels=stack.test_labels,
    )
    try:
        code = int(container.wait(timeout=60)["StatusCode"])
        output = container.logs().decode(errors="replace")
    finally:
        container.remove(force=True)
    assert reached_docker(code, output), output
    assert "took the group" not in output, output


# -- item 7: the admin API belongs to labelsync alone --------------------------------------------


def test_an_app_container_cannot_reach_caddys_admin_api_nor_the_resolver(
    stack: ComposeStack,
) -> None:
    app = stack.containers("web")[0]

    def run(command: str) -> tuple[int, str]:
        result = app.exec_run(["sh", "-c", command])
        return result.exit_code, result.output.decode(errors="replace")

    # Caddy is on the app's network, but its admin API listens on no port there.
    code, output = run("echo | nc -w 2 caddy 80 && echo reached")
    assert code == 0 and "reached" in output, f"positive control: Caddy's :80 ({output})"
    for port in (2019, 2020, 2999):
        code, output = run(f"echo | nc -w 2 caddy {port} && echo reached")
        assert "reached" not in output, f"an app reached caddy:{port}: {output}"
    # Nor are the two sockets' volumes mounted there.
    for directory in ("/run/caddy-admin", "/run/labelsync-dns"):
        code, output = run(f"ls {directory}")
        assert code != 0, f"{directory} in an app container: {output}"
    # The resolver listens on no network: from `edge`, nothing answers on labelsync:8053.
    code, output = run("nslookup -port=8053 -timeout=2 -type=SRV x labelsync 2>&1")
    assert code != 0 or "no servers" in output or "timed out" in output, output
    # Caddy does use it: the scaling test below sees new replicas with no Caddy write.


# -- scaling -------------------------------------------------------------------------------------


def test_scaling_up_and_down_under_load_fails_nothing_and_writes_no_caddy_config(
    stack: ComposeStack,
) -> None:
    etag = caddy_config_etag(stack)
    with load(stack) as traffic:
        traffic.wait_successes(40)
        stack.up("--no-build", "--scale", "web=5")
        wait_until(
            lambda: len(replicas_answering(url(stack), HOST, 20)) == 5,
            timeout=30,
            message="5 replicas answering",
        )
        traffic.wait_successes(40)
        stack.up("--no-build", "--scale", "web=3")
        wait_until(
            lambda: len(replicas_answering(url(stack), HOST, 12)) == 3,
            timeout=30,
            message="back to 3 replicas",
        )
        traffic.wait_successes(40)
    result = traffic.result
    print(f"\nscale 3 -> 5 -> 3 under load: {result.summary()}")
    assert result.failed == 0, result.summary()
    assert len(result.backends) == 5, result.summary()
    assert caddy_config_etag(stack) == etag, "scaling changed Caddy's config"


# -- labelsync recreated, Caddy restarted: one action each, several targets checked -----------


@dataclass
class Recreated:
    """What the load saw while labelsync's container was recreated."""

    result: LoadResult


@pytest.fixture(scope="module")
def labelsync_recreated(stack: ComposeStack) -> Recreated:
    old = stack.container("labelsync").id
    with load(stack) as traffic:
        traffic.wait_successes(40)
        stack.up("--no-build", "--no-deps", "--force-recreate", "labelsync")
        new = stack.container("labelsync")
        assert new.id != old
        wait_until(
            lambda: "applied:" in new.logs().decode(errors="replace"),
            timeout=30,
            message="the new labelsync's first sync",
        )
        traffic.wait_successes(40)
    print(f"\nlabelsync recreated under load: {traffic.result.summary()}")
    return Recreated(traffic.result)


def test_recreating_labelsync_under_load_keeps_serving_every_replica(
    stack: ComposeStack, labelsync_recreated: Recreated
) -> None:
    result = labelsync_recreated.result
    assert result.successes > 80, result.summary()
    assert len(result.backends) == 3, result.summary()
    assert len(replicas_answering(url(stack), HOST, 12)) == 3


def test_recreating_labelsync_under_load_fails_no_request(labelsync_recreated: Recreated) -> None:
    """The resolver's unix socket refuses at once while labelsync is away: Caddy falls
    back to each route's member list without waiting for a DNS timeout."""
    result = labelsync_recreated.result
    assert result.failed == 0, result.summary()


# Go's resolver waits this long for an answer before Caddy falls back to the member list.
DNS_TIMEOUT = 5.0


def test_recreating_labelsync_under_load_makes_no_request_wait_for_a_dns_timeout(
    labelsync_recreated: Recreated,
) -> None:
    """Had the resolver gone silent rather than refusing, requests would wait for Go's DNS
    timeout. (The target, no request over 1 s, is measured by `python -m bench --only
    deploy`.)"""
    result = labelsync_recreated.result
    assert result.slowest < DNS_TIMEOUT, result.summary()


# Fresh load once a restarted Caddy serves again: labelsync notices the restart within a
# second (it asks Caddy twice a second) and checks what Caddy holds.
AFTER_RESTART_SECONDS = 3.0


@dataclass
class Restarted:
    """Caddy restarted under load: seconds from `restart` returning (Caddy answers on its
    admin socket within ~0.1 s, holding only its Caddyfile: no listener on :80) until the
    example's route serves again, the load's counts through the restart, and those of a
    fresh load for AFTER_RESTART_SECONDS once the route is back."""

    restored: float
    result: LoadResult
    after: LoadResult


@pytest.fixture(scope="module")
def caddy_restarted(stack: ComposeStack) -> Restarted:
    base = url(stack)
    with load(stack, pause=0.05, timeout=3.0, retry_stale=True) as traffic:
        traffic.wait_successes(40)
        stack.run("restart", "-t", "3", "caddy")
        restarted = time.monotonic()
        restored_at: float | None = None
        with httpx.Client(base_url=base, trust_env=False, timeout=2.0) as probe:
            while restored_at is None and time.monotonic() < restarted + 120:
                try:
                    if from_web(probe.get("/", headers={"Host": HOST})):
                        restored_at = time.monotonic()
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.02)
        assert restored_at is not None, "the route never came back"
    # A restart is a reload: a stale keep-alive connection is sent again, as browsers do.
    after = run_load(
        base,
        HOST,
        retry_stale=True,
        clients=4,
        max_seconds=AFTER_RESTART_SECONDS,
        pause=0.05,
        timeout=3.0,
        is_success=from_web,
    )
    done = Restarted(restored_at - restarted, traffic.result, after)
    print(
        f"\nCaddy restarted: route back {done.restored:.2f}s after `restart` returned; "
        f"{done.result.summary()}; once back: {done.after.summary()}"
    )
    return done


def test_restarting_caddy_under_load_gets_its_routes_back(
    stack: ComposeStack, caddy_restarted: Restarted
) -> None:
    # `--resume` serves the autosaved config at once; labelsync would restore it too.
    assert caddy_restarted.restored < 10
    assert len(replicas_answering(url(stack), HOST, 12)) == 3


def test_restarting_caddy_under_load_fails_no_request_once_its_routes_are_back(
    caddy_restarted: Restarted,
) -> None:
    """Once the route is back (from the autosave), nothing fails while labelsync notices
    the restart and checks what Caddy holds. (The target, routes back within 2 s of a
    restart, is measured by `python -m bench --only deploy`.)"""
    after = caddy_restarted.after
    assert after.successes >= 40, after.summary()
    assert after.failed == 0, after.summary()


# -- down ----------------------------------------------------------------------------------------


def test_down_removes_the_stack(stack: ComposeStack) -> None:
    client = docker.from_env()
    try:
        volume = f"{stack.project}_caddy-admin"
        stack.run("down", "-v", "--remove-orphans", "-t", "3")
        left = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={stack.project}"}
        )
        assert left == [], [c.name for c in left]
        networks = [n.name for n in client.networks.list() if n.name.startswith(stack.project)]
        assert networks == [], networks
        assert volume not in {v.name for v in client.volumes.list()}
    finally:
        client.close()
