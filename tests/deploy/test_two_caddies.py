"""`examples/recipes/two-caddies.yaml`: one labelsync writing to two Caddy containers. Both
serve every pool; one restarted empty gets its routes back while the other serves on; the
two share one Docker event stream.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.compose import EXAMPLES, ComposeStack
from tests.support.load import Load
from tests.support.stack_images import StackImages
from tests.support.waiting import wait_until

HOST = "whoami.localhost"
pytestmark = pytest.mark.timeout(600)


def from_web(response: httpx.Response) -> bool:
    return response.status_code == 200 and bool(response.headers.get("X-Backend"))


def answering(url: str, count: int) -> set[str]:
    seen: set[str] = set()
    with httpx.Client(base_url=url, trust_env=False, timeout=5.0) as client:
        for _ in range(count):
            try:
                response = client.get("/", headers={"Host": HOST})
            except httpx.HTTPError:
                continue
            if from_web(response):
                seen.add(response.headers["X-Backend"])
    return seen


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
            wait_until(
                lambda service=service: len(answering(running.url(service, 80), 12)) == 3,
                timeout=60,
                interval=0.3,
                message=f"{service} serving the 3 replicas",
            )
        yield running
    finally:
        running.down()


def test_both_caddies_serve_every_pool_from_one_event_stream(stack: ComposeStack) -> None:
    replicas = {c.id[:12] for c in stack.containers("web")}
    assert answering(stack.url("caddy", 80), 12) == replicas
    assert answering(stack.url("caddy-b", 80), 12) == replicas
    logs = stack.logs("labelsync")
    assert logs.count("Docker event stream connected") == 1, logs


@pytest.fixture(scope="module")
def caddy_b_restarted_empty(stack: ComposeStack) -> tuple[float, int, str]:
    """caddy-b restarted without its autosave (it starts from the Caddyfile alone) while
    `caddy` carries load: (seconds until caddy-b served the route again, requests failed
    on `caddy`, the load's summary)."""
    caddy_b = stack.container("caddy-b")
    with Load(
        stack.url("caddy", 80), HOST, clients=3, max_seconds=120, is_success=from_web
    ) as load:
        load.wait_successes(30)
        caddy_b.exec_run(["rm", "-f", "/config/caddy/autosave.json"])
        stack.run("restart", "-t", "3", "caddy-b")
        restarted = time.monotonic()
        url_b = stack.url("caddy-b", 80)
        wait_until(lambda: answering(url_b, 1), timeout=90, interval=0.05,
                   message="caddy-b serving the route again")  # fmt: skip
        restored = time.monotonic() - restarted
        load.wait_successes(30)
    result = load.result
    print(f"\ncaddy-b restarted empty: route back {restored:.2f}s later; caddy: {result.summary()}")
    return restored, result.failed, result.summary()


def test_a_caddy_restarted_empty_gets_its_routes_back_while_the_other_serves(
    stack: ComposeStack, caddy_b_restarted_empty: tuple[float, int, str]
) -> None:
    restored, failed, summary = caddy_b_restarted_empty
    assert failed == 0, summary
    assert restored < 60
    assert len(answering(stack.url("caddy-b", 80), 12)) == 3


@pytest.mark.xfail(strict=False, reason="timing target: routes back within 2 s of a restart")
def test_a_caddy_restarted_empty_is_restored_within_two_seconds(
    caddy_b_restarted_empty: tuple[float, int, str],
) -> None:
    assert caddy_b_restarted_empty[0] <= 2.0
