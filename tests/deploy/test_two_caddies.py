"""`examples/recipes/two-caddies.yaml`: one labelsync writing to two Caddy containers. Both
serve every pool; one restarted empty gets its routes back while the other serves on; the
two share one Docker event stream. How fast it gets them back (target: 2 s) is measured by
`python -m bench --only deploy` (bench/deploy.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.compose import EXAMPLES, ComposeStack, from_web, replicas_answering
from tests.support.load import Load, LoadResult, run_load
from tests.support.stack_images import StackImages
from tests.support.waiting import wait_until

HOST = "whoami.localhost"
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(stack_images: StackImages, request: pytest.FixtureRequest) -> Iterator[ComposeStack]:
    running = ComposeStack(
        [EXAMPLES / "compose.yaml", EXAMPLES / "recipes" / "two-caddies.yaml"],
        stack_images,
        request.node.nodeid,
        prefix="ls2caddies",
    )
    try:
        running.up("--build")
        for service in ("caddy", "caddy-b"):

            def serves_all_three(service: str = service) -> bool:
                return len(replicas_answering(running.url(service, 80), HOST, 12)) == 3

            wait_until(
                serves_all_three,
                timeout=60,
                interval=0.3,
                message=f"{service} serving the 3 replicas",
            )
        yield running
    finally:
        running.down()


def test_both_caddies_serve_every_pool_from_one_event_stream(stack: ComposeStack) -> None:
    replicas = {c.id[:12] for c in stack.containers("web")}
    assert replicas_answering(stack.url("caddy", 80), HOST, 12) == replicas
    assert replicas_answering(stack.url("caddy-b", 80), HOST, 12) == replicas
    logs = stack.logs("labelsync")
    assert logs.count("Docker event stream connected") == 1, logs


# Fresh load through caddy-b once it serves again: labelsync may still be writing to it.
AFTER_RESTART_SECONDS = 3.0


@dataclass
class RestartedEmpty:
    """caddy-b restarted from its Caddyfile alone while `caddy` carried load: seconds until
    caddy-b served the route again, the load's counts on `caddy`, and those of a fresh
    load through caddy-b for AFTER_RESTART_SECONDS once it served again."""

    restored: float
    other: LoadResult
    after: LoadResult


@pytest.fixture(scope="module")
def caddy_b_restarted_empty(stack: ComposeStack) -> RestartedEmpty:
    caddy_b = stack.container("caddy-b")
    with Load(
        stack.url("caddy", 80), HOST, clients=3, max_seconds=120, is_success=from_web
    ) as load:
        load.wait_successes(30)
        caddy_b.exec_run(["rm", "-f", "/config/caddy/autosave.json"])
        stack.run("restart", "-t", "3", "caddy-b")
        restarted = time.monotonic()
        url_b = stack.url("caddy-b", 80)
        wait_until(lambda: replicas_answering(url_b, HOST, 1), timeout=90, interval=0.05,
                   message="caddy-b serving the route again")  # fmt: skip
        restored = time.monotonic() - restarted
        # Caddy reloads on each write: a stale keep-alive connection is sent again.
        after = run_load(
            url_b,
            HOST,
            retry_stale=True,
            clients=3,
            max_seconds=AFTER_RESTART_SECONDS,
            pause=0.05,
            timeout=3.0,
            is_success=from_web,
        )
        load.wait_successes(30)
    done = RestartedEmpty(restored, load.result, after)
    print(
        f"\ncaddy-b restarted empty: route back {restored:.2f}s later; caddy: "
        f"{done.other.summary()}; caddy-b once back: {done.after.summary()}"
    )
    return done


def test_a_caddy_restarted_empty_gets_its_routes_back_while_the_other_serves(
    stack: ComposeStack, caddy_b_restarted_empty: RestartedEmpty
) -> None:
    other = caddy_b_restarted_empty.other
    assert other.failed == 0, other.summary()
    assert caddy_b_restarted_empty.restored < 60
    assert len(replicas_answering(stack.url("caddy-b", 80), HOST, 12)) == 3


def test_a_caddy_restarted_empty_fails_no_request_once_its_routes_are_back(
    caddy_b_restarted_empty: RestartedEmpty,
) -> None:
    after = caddy_b_restarted_empty.after
    assert after.successes >= 30, after.summary()
    assert after.failed == 0, after.summary()
