"""`examples/compose.yaml` run as the README runs it: `docker compose up -d --build`, requests
through Caddy's published port, scaling under load, labelsync recreated and Caddy restarted
under load, and `down`. One stack for the module; the tests run in file order and each
leaves the stack as it found it (3 `web` replicas, everything running).

Stand-ins (tests/support/compose.py): Caddy and whoami are local images, the Python base of
the Containerfile is a Debian bookworm image, Caddy publishes on random loopback ports.

Timing targets (labelsync recreated: no request over 1 s; Caddy restarted: routes back
within 2 s) are separate tests marked `xfail(strict=False)`: XPASS when met, reported
rather than failing a run on a busy machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import httpx
import pytest

from tests.support.compose import EXAMPLES, ComposeStack, docker_socket_gid
from tests.support.load import Load, LoadResult
from tests.support.stack_images import StackImages
from tests.support.waiting import wait_until

HOST = "whoami.localhost"  # the example's own label
pytestmark = pytest.mark.timeout(600)


def from_web(response: httpx.Response) -> bool:
    """A 200 answered by a replica (the test backend names itself in `X-Backend`: its
    hostname, the container's short id), not Caddy's empty 200 for an unknown host."""
    return response.status_code == 200 and bool(response.headers.get("X-Backend"))


@pytest.fixture(scope="module")
def stack(stack_images: StackImages, request: pytest.FixtureRequest) -> Iterator[ComposeStack]:
    # Replicas shut down gracefully (serve 1 s after SIGTERM), as real servers do.
    running = ComposeStack(
        EXAMPLES / "compose.yaml",
        stack_images,
        request.node.nodeid,
        services={"web": {"environment": {"STOP_DELAY": "1"}}},
    )
    try:
        running.up("--build")
        wait_until(
            lambda: len(replicas_answering(running, 12)) == 3,
            timeout=60,
            interval=0.2,
            message="3 web replicas answering through Caddy",
        )
        yield running
    finally:
        running.down()


def url(stack: ComposeStack) -> str:
    return stack.url("caddy", 80)


def replicas_answering(stack: ComposeStack, count: int) -> set[str]:
    seen: set[str] = set()
    with httpx.Client(base_url=url(stack), trust_env=False, timeout=5.0) as client:
        for _ in range(count):
            response = client.get("/", headers={"Host": HOST})
            if from_web(response):
                seen.add(response.headers["X-Backend"])
    return seen


def caddy_config_etag(stack: ComposeStack) -> str:
    with stack.admin_client() as admin:
        response = admin.get("/config/")
        response.raise_for_status()
        return response.headers["Etag"]


def load(stack: ComposeStack, **options: object) -> Load:
    return Load(url(stack), HOST, clients=4, max_seconds=90, is_success=from_web, **options)  # type: ignore[arg-type]


# -- up ------------------------------------------------------------------------------------------


def test_up_serves_the_three_replicas_round_robin_through_the_published_port(
    stack: ComposeStack,
) -> None:
    names = {c.id[:12] for c in stack.containers("web")}
    with httpx.Client(base_url=url(stack), trust_env=False, timeout=5.0) as client:
        seen = [client.get("/", headers={"Host": HOST}).headers.get("X-Backend") for _ in range(9)]
    assert set(seen[:3]) == names, seen
    assert seen[:3] * 3 == seen, f"round robin cycles in one order: {seen}"


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
    status = labelsync.exec_run(["cat", "/proc/1/status"]).output.decode()
    ids = {
        line.split(":", 1)[0]: line.split(":", 1)[1].split()
        for line in status.splitlines()
        if line.startswith(("Uid:", "Gid:", "Groups:"))
    }
    assert ids["Uid"][0] == "10001", status
    # Its own group and the socket's: nothing else (no root group unless the socket's).
    assert docker_socket_gid() in ids["Groups"], status
    assert set(ids["Groups"]) <= {docker_socket_gid(), ids["Gid"][0]}, status
    assert ids["Gid"][0] != "0", status
    assert labelsync.attrs["Config"]["User"] == "10001"
    labels = labelsync.image.labels
    assert labels["org.opencontainers.image.title"] == "labelsync", labels
    assert "org.opencontainers.image.version" in labels, labels


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
            lambda: len(replicas_answering(stack, 20)) == 5,
            timeout=30,
            message="5 replicas answering",
        )
        traffic.wait_successes(40)
        stack.up("--no-build", "--scale", "web=3")
        wait_until(
            lambda: len(replicas_answering(stack, 12)) == 3,
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
    assert len(replicas_answering(stack, 12)) == 3


def test_recreating_labelsync_under_load_fails_no_request(labelsync_recreated: Recreated) -> None:
    """The resolver's unix socket refuses at once while labelsync is away: Caddy falls
    back to each route's member list without waiting for a DNS timeout."""
    result = labelsync_recreated.result
    assert result.failed == 0, result.summary()


# Timing targets (the reliability issue): reported as XPASS when met; a timing figure on a
# shared 2-core machine is no behaviour to fail a run on.
@pytest.mark.xfail(strict=False, reason="timing target: no request over 1 s while recreated")
def test_recreating_labelsync_under_load_stalls_no_request_over_one_second(
    labelsync_recreated: Recreated,
) -> None:
    result = labelsync_recreated.result
    assert result.slow == 0, f"{result.slow} requests over 1s: {result.summary()}"


@dataclass
class Restarted:
    """Caddy restarted under load: seconds from `restart` returning (Caddy answers on its
    admin socket within ~0.1 s, holding only its Caddyfile: no listener on :80) until the
    example's route serves again, and the load's counts."""

    restored: float
    result: LoadResult


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
        traffic.wait_successes(40)
    done = Restarted(restored_at - restarted, traffic.result)
    print(
        f"\nCaddy restarted: route back {done.restored:.2f}s after `restart` returned; "
        f"{done.result.summary()}"
    )
    return done


def test_restarting_caddy_under_load_gets_its_routes_back(
    stack: ComposeStack, caddy_restarted: Restarted
) -> None:
    # `--resume` serves the autosaved config at once; labelsync would restore it too.
    assert caddy_restarted.restored < 10
    assert len(replicas_answering(stack, 12)) == 3


@pytest.mark.xfail(strict=False, reason="timing target: routes back within 2 s of a restart")
def test_restarting_caddy_restores_its_routes_within_two_seconds(
    caddy_restarted: Restarted,
) -> None:
    assert caddy_restarted.restored <= 2.0, f"{caddy_restarted.restored:.2f}s"


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
