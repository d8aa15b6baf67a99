"""Every recipe in `examples/recipes/` run through compose next to one shared stack
(`examples/compose.yaml` plus `recipes/static-routes.yaml`: Caddy and labelsync in
containers), each asserting what its comment block promises. The recipes' hosts differ, so
one Caddy and one labelsync serve them all; each recipe is its own compose project on the
stack's `edge` network, removed when the module ends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import docker
import httpx
import pytest
from docker.models.containers import Container

from tests.support.compose import EXAMPLES, ComposeStack
from tests.support.containers import ContainerHandle
from tests.support.load import Load
from tests.support.stack_images import StackImages
from tests.support.waiting import wait_until

RECIPES = EXAMPLES / "recipes"
pytestmark = pytest.mark.timeout(600)

StartRecipe = Callable[..., ComposeStack]


def static_file(stack_project: str) -> str:
    """The static recipe's routes, aimed at two test backends instead of LAN addresses."""
    return (
        "[routes.legacy]\n"
        'host = "legacy.localhost"\n'
        f'upstreams = ["{stack_project}-legacy-a:8080", "{stack_project}-legacy-b:8080"]\n'
        'lb.policy = "round_robin"\n'
    )


@pytest.fixture(scope="module")
def stack(stack_images: StackImages, request: pytest.FixtureRequest) -> Iterator[ComposeStack]:
    files = [EXAMPLES / "compose.yaml", RECIPES / "static-routes.yaml"]
    # The example's own `web` service is not needed here: no replicas.
    running = ComposeStack(
        files,
        stack_images,
        request.node.nodeid,
        prefix="lsrecipes",
        services={"web": {"deploy": {"replicas": 0}}},
    )
    running.override["configs"] = {"static-routes": {"content": static_file(running.project)}}
    running.write_override()
    try:
        running.up("--build")
        yield running
    finally:
        running.down()


@pytest.fixture(scope="module")
def recipes(stack: ComposeStack, request: pytest.FixtureRequest) -> Iterator[StartRecipe]:
    started: list[ComposeStack] = []

    def start(name: str, **options: Any) -> ComposeStack:
        recipe = ComposeStack(
            RECIPES / f"{name}.yaml",
            stack.images,
            request.node.nodeid,
            prefix=f"r-{name[:12]}",
            label_prefix=stack.label_prefix,
            network_names={"edge": stack.edge_network},
            **options,
        )
        started.append(recipe)
        recipe.up()
        return recipe

    try:
        yield start
    finally:
        for recipe in started:
            recipe.down()


def short_ids(containers: list[Container]) -> set[str]:
    """The test backend answers with its hostname: the container's short id."""
    return {c.id[:12] for c in containers}


def answers(stack: ComposeStack, host: str, count: int, **options: Any) -> list[str | None]:
    with httpx.Client(base_url=stack.url("caddy", 80), trust_env=False, timeout=10.0) as one:
        return [
            r.headers.get("X-Backend") if r.status_code == 200 else None
            for r in (one.get("/", headers={"Host": host}, **options) for _ in range(count))
        ]


def wait_serving(stack: ComposeStack, host: str, expected: set[str], timeout: float = 30) -> None:
    wait_until(
        lambda: set(answers(stack, host, max(6, 3 * len(expected)))) == expected,
        timeout=timeout,
        interval=0.2,
        message=f"{host} served by {expected}",
    )


def from_any(response: httpx.Response) -> bool:
    return response.status_code == 200 and bool(response.headers.get("X-Backend"))


# -- the recipes -------------------------------------------------------------------------------


def test_round_robin_cycles_three_backends_and_a_crash_is_never_seen(
    stack: ComposeStack, recipes: StartRecipe
) -> None:
    host = "rr.localhost"
    recipe = recipes("round-robin", services={"app": {"environment": {"STOP_DELAY": "1"}}})
    replicas = short_ids(recipe.containers("app"))
    wait_serving(stack, host, replicas)
    seen = answers(stack, host, 9)
    assert set(seen[:3]) == replicas and seen[:3] * 3 == seen, seen

    crashed = recipe.containers("app")[0]
    with Load(stack.url("caddy", 80), host, clients=4, max_seconds=60, is_success=from_any) as load:
        load.wait_successes(60)
        crashed.kill()
        load.wait_successes(200)
    result = load.result
    print(f"\nround robin, one replica killed under load: {result.summary()}")
    assert result.failed == 0, result.summary()
    wait_serving(stack, host, replicas - {crashed.id[:12]})


def test_first_fails_over_to_the_fallback_and_comes_back(
    stack: ComposeStack, recipes: StartRecipe
) -> None:
    host = "chat.localhost"
    graceful = {"environment": {"STOP_DELAY": "1"}}
    recipe = recipes("failover-first", services={"gpu": graceful, "fallback": graceful})
    gpu, fallback = recipe.container("gpu"), recipe.container("fallback")
    wait_serving(stack, host, {gpu.id[:12]})

    with Load(
        stack.url("caddy", 80), host, clients=3, max_seconds=120, is_success=from_any
    ) as load:
        load.wait_successes(30)
        recipe.run("stop", "gpu")
        wait_until(
            lambda: load.result.backends[fallback.id[:12]] >= 30,
            timeout=30,
            message="the fallback to serve",
        )
        recipe.run("start", "gpu")
        at_return = load.result.backends[gpu.id[:12]]
        started = time.monotonic()
        wait_until(
            lambda: load.result.backends[gpu.id[:12]] >= at_return + 30,
            timeout=60,
            message="the gpu to serve again",
        )
        back_after = time.monotonic() - started
    result = load.result
    print(f"\nfirst failover: gpu back {back_after:.1f}s after start; {result.summary()}")
    assert result.failed == 0, result.summary()
    wait_serving(stack, host, {gpu.id[:12]})


def test_least_conn_sends_new_requests_to_the_idle_backend(
    stack: ComposeStack, recipes: StartRecipe
) -> None:
    host = "lc.localhost"
    recipe = recipes("least-conn", services={"app": {"deploy": {"replicas": 1}}})
    jammed = recipe.container("app")
    wait_serving(stack, host, {jammed.id[:12]})

    slow_answers: list[str | None] = []

    def slow_request() -> None:
        with httpx.Client(trust_env=False, timeout=30.0) as one:
            response = one.get(f"{stack.url('caddy', 80)}/slow?8", headers={"Host": host})
            slow_answers.append(response.headers.get("X-Backend"))

    slow = [threading.Thread(target=slow_request) for _ in range(3)]
    for thread in slow:
        thread.start()
    recipe.up("--scale", "app=2")
    idle = next(c for c in recipe.containers("app") if c.id != jammed.id)
    wait_serving(stack, host, {idle.id[:12]})
    quick = answers(stack, host, 20)
    still_jammed = all(thread.is_alive() for thread in slow)
    for thread in slow:
        thread.join(timeout=30)
    assert still_jammed, "the slow requests ended before the check: inconclusive"
    assert quick == [idle.id[:12]] * 20, quick
    assert slow_answers == [jammed.id[:12]] * 3, slow_answers


def test_ip_hash_keeps_each_client_address_on_one_backend(
    stack: ComposeStack, recipes: StartRecipe, backend: Callable[..., ContainerHandle]
) -> None:
    host = "iphash.localhost"
    recipe = recipes("ip-hash")
    replicas = short_ids(recipe.containers("app"))
    wait_until(
        lambda: set(answers(stack, host, 3)) <= replicas and None not in answers(stack, host, 3),
        timeout=30,
        message="the ip_hash pool to serve",
    )
    # Clients with addresses of their own: containers on the stack's network asking Caddy,
    # four pipelined requests on one connection each (the last one closes it). stdin stays
    # open a moment: busybox nc gives up on the socket once its input ends.
    one = f"GET / HTTP/1.1\\r\\nHost: {host}\\r\\n"
    last = f"GET / HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n"
    request = f"(printf '{one}\\r\\n{one}\\r\\n{one}\\r\\n{last}'; sleep 1) | nc -w 5 caddy 80"
    chosen: dict[str, list[str]] = {}
    for _ in range(6):
        client = backend(name="client", network=stack.edge_network)
        output = client.exec("sh", "-c", request)
        chosen[client.ip] = [
            line.split(":", 1)[1].strip()
            for line in output.splitlines()
            if line.lower().startswith("x-backend:")
        ]
    assert all(len(picks) == 4 for picks in chosen.values()), chosen
    assert all(len(set(picks)) == 1 for picks in chosen.values()), chosen
    spread = {name for picks in chosen.values() for name in picks}
    assert spread <= replicas and len(spread) >= 2, chosen


def test_cookie_keeps_each_session_on_one_backend(
    stack: ComposeStack, recipes: StartRecipe
) -> None:
    host = "sticky.localhost"
    recipe = recipes("cookie-sticky")
    replicas = short_ids(recipe.containers("app"))
    base = stack.url("caddy", 80)
    wait_until(
        lambda: all(answers(stack, host, 3)),
        timeout=30,
        message="the cookie pool to serve",
    )
    sessions = []
    for _ in range(8):
        with httpx.Client(base_url=base, trust_env=False, timeout=10.0) as session:
            picks = {
                session.get("/", headers={"Host": host}).headers["X-Backend"] for _ in range(5)
            }
            assert "lb" in session.cookies, "the cookie policy set no cookie"
            sessions.append(picks)
    assert all(len(picks) == 1 for picks in sessions), sessions
    spread = set().union(*sessions)
    assert spread <= replicas and len(spread) >= 2, sessions


def test_canary_gets_ten_percent(stack: ComposeStack, recipes: StartRecipe) -> None:
    host = "canary.localhost"
    recipe = recipes("canary")
    canary = recipe.container("canary").id[:12]
    everyone = short_ids(recipe.containers("stable")) | {canary}
    wait_serving(stack, host, everyone)
    counts = Counter(answers(stack, host, 300))
    print(f"\ncanary at 10 %: {dict(counts)}")
    assert set(counts) == everyone, counts
    assert 15 <= counts[canary] <= 45, counts


def test_https_upstream_on_8443_is_reached_with_skip_verify(
    stack: ComposeStack, recipes: StartRecipe
) -> None:
    host = "secure.localhost"
    recipe = recipes("https-upstream")
    secure = recipe.container("secure")

    def served() -> str | None:
        with httpx.Client(base_url=stack.url("caddy", 80), trust_env=False, timeout=5.0) as one:
            response = one.get("/", headers={"Host": host})
        return response.text if response.status_code == 200 and response.text else None

    body = wait_until(served, timeout=30, interval=0.3, message="the https upstream")
    assert body.strip() == f"served over TLS by {secure.id[:12]}", body


def test_passive_health_takes_a_slow_backend_out_after_three_slow_answers(
    stack: ComposeStack, recipes: StartRecipe
) -> None:
    host = "passive.localhost"
    recipe = recipes("passive-health")
    replicas = recipe.containers("app")
    wait_serving(stack, host, short_ids(replicas))
    slow = replicas[0]
    slow.exec_run(["sh", "-c", "echo 2 > /www/delay"])

    timed: list[tuple[str | None, float]] = []
    with httpx.Client(base_url=stack.url("caddy", 80), trust_env=False, timeout=10.0) as one:
        for _ in range(45):
            started = time.monotonic()
            response = one.get("/", headers={"Host": host})
            timed.append((response.headers.get("X-Backend"), time.monotonic() - started))
    slow_id = slow.id[:12]
    from_slow = [i for i, (name, _) in enumerate(timed) if name == slow_id]
    print(f"\npassive health: answers from the slow replica at {from_slow} of {len(timed)}")
    assert all(name for name, _ in timed), timed
    # Out after about its 3rd slow answer: 3 on most runs, 5 once under a full run's load
    # (why Caddy let two more through then is not established).
    assert 3 <= len(from_slow) <= 6, timed
    # Once out, it stays out (fail_duration 30 s): the rest are fast answers from the others.
    rest = timed[from_slow[-1] + 1 :]
    assert len(rest) >= 20 and all(took < 1.0 for _, took in rest), timed


def test_static_routes_reach_backends_that_are_not_labelled_containers(
    stack: ComposeStack, docker_client: docker.DockerClient, stack_images: StackImages
) -> None:
    names = [f"{stack.project}-legacy-a", f"{stack.project}-legacy-b"]
    started = []
    try:
        for name in names:
            started.append(
                docker_client.containers.run(
                    stack_images.whoami,
                    name=name,
                    network=stack.edge_network,
                    environment={"NAME": name},
                    labels=dict(stack.test_labels),
                    detach=True,
                )
            )
        wait_serving(stack, "legacy.localhost", set(names), timeout=60)
    finally:
        for container in started:
            container.remove(force=True)
