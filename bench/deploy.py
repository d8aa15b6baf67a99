"""Scenario 8, deploy (real dockerd, `docker compose`, labelsync and Caddy in containers).

`examples/compose.yaml` brought up as `tests/deploy/test_compose_example.py` brings it up
(tests/support/compose.py: the file as users have it plus an override with the local
stand-in images, Caddy published on a free loopback port, a label prefix of the stack's
own; replicas serve 1 s after SIGTERM), except that labelsync's image is the one
`ensure_stack_images` built from the Containerfile (nothing is built by compose, nothing
pulled). labelsync runs in its default mode (dynamic upstreams). Then, RUNS times each,
under CLIENTS keep-alive clients through Caddy's published port:

  (a) labelsync recreated (`up -d --no-build --no-deps --force-recreate labelsync`):
      the longest request (the stall), requests over 1 s, failed requests (a keep-alive
      reset counts: nothing reloads Caddy), until the new labelsync's first sync and 40
      more answers;
  (b) Caddy restarted (`restart -t 3 caddy`; it resumes its autosaved config): seconds
      from `restart` returning until a request is answered by a replica again, failed
      requests while it was away (stale keep-alive connections sent again, as in the
      tests), and then AFTER_SECONDS of fresh load: failed requests once the route is back;
  (c) with `examples/recipes/two-caddies.yaml` on top (a second stack, the same way):
      caddy-b restarted without its autosave (from its Caddyfile alone) while `caddy`
      carries the load: seconds until caddy-b answers from a replica again, and failed
      requests on `caddy` meanwhile.

Targets, as the deploy tests' timing checks had them: no request over 1 s while labelsync
is recreated; routes back within 2 s of a restart (every run). The tests keep the checks
that can fail anywhere (served again, nothing failed); the timings are here.

Each stack is taken down (`down -v`) at the end, also on failure, Ctrl-C or SIGTERM;
compose projects left by a killed run (named `lsbench-deploy-*`, `lsbench-2caddies-*`) are
removed at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import httpx

from tests.support.compose import (
    EXAMPLES,
    PROJECT_LABEL,
    ComposeStack,
    compose_available,
    from_web,
    replicas_answering,
)
from tests.support.images import ensure_images
from tests.support.load import Load, LoadResult
from tests.support.stack_images import StackImages, ensure_stack_images
from tests.support.waiting import wait_until

from .stats import summary

Log = Callable[[str], None]

HOST = "whoami.localhost"  # the example's own label
REPLICAS = 3
CLIENTS = 4
RUNS = {"quick": 3, "full": 5}
COMPOSE_EXAMPLE = [EXAMPLES / "compose.yaml"]
TWO_CADDIES = [EXAMPLES / "compose.yaml", EXAMPLES / "recipes" / "two-caddies.yaml"]
PREFIXES = ("lsbench-deploy", "lsbench-2caddies")
STALL_TARGET_S = 1.0  # labelsync recreated: no request slower than this
RESTORE_TARGET_S = 2.0  # Caddy restarted: routes served again within this
AFTER_SECONDS = 3.0  # load once a restarted Caddy serves again (labelsync checks 2x/s)
SERVED_TIMEOUT = 60.0  # bound of every wait for routes
LOAD_SECONDS = 120.0  # bound of every load


class Stopped(Exception):
    """The run was cancelled (Ctrl-C, SIGTERM, the scenario's timeout)."""


def wait_serving_all(url: str, what: str) -> None:
    wait_until(
        lambda: len(replicas_answering(url, HOST, 4 * REPLICAS)) == REPLICAS,
        timeout=SERVED_TIMEOUT,
        interval=0.2,
        message=f"{what} serving the {REPLICAS} replicas",
    )


def served_again(url: str, since: float) -> float:
    """Seconds from `since` (monotonic) until a request through `url` is answered by a
    replica; a request every ~20 ms, each on a new connection."""
    deadline = since + SERVED_TIMEOUT
    with httpx.Client(base_url=url, trust_env=False, timeout=2.0) as probe:
        while time.monotonic() < deadline:
            try:
                if from_web(probe.get("/", headers={"Host": HOST})):
                    return time.monotonic() - since
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
    raise RuntimeError(f"{url}: the route is not served {SERVED_TIMEOUT:g} s after the restart")


def load(url: str, *, clients: int = CLIENTS, **options: Any) -> Load:
    """The deploy tests' load: keep-alive clients, a replica's answer is a success."""
    return Load(
        url, HOST, clients=clients, max_seconds=LOAD_SECONDS, is_success=from_web, **options
    )


def counts(result: LoadResult) -> dict[str, Any]:
    return {
        "requests": result.total,
        "failed": result.failed,
        "slowest_ms": round(result.slowest * 1000, 1),
        "over_1s": result.slow,
        "stale_connection_retries": result.stale_retries,
        "stale_connection_failures": result.stale_failures,
        "errors": dict(result.errors),
        "statuses": {str(k): v for k, v in result.statuses.items()},
        "first_failures": [
            f"{f.at:.2f}s c{f.client}: {f.reason}" for f in result.first_failures[:5]
        ],
        "seconds": round(result.seconds, 2),
    }


# -- stacks ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_stack(
    files: list[Path], images: StackImages, prefix: str, caddies: tuple[str, ...], log: Log
) -> Iterator[ComposeStack]:
    stack = ComposeStack(
        files,
        images,
        f"bench/deploy.py::{prefix}",
        prefix=prefix,
        services={
            "web": {"environment": {"STOP_DELAY": "1"}},
            # The image ensure_stack_images built from the Containerfile: `up` builds nothing.
            "labelsync": {"image": images.labelsync},
        },
    )
    try:
        started = time.monotonic()
        stack.up("--no-build")
        for caddy in caddies:
            wait_serving_all(stack.url(caddy, 80), caddy)
        log(f"deploy: {stack.project} up and serving in {time.monotonic() - started:.1f} s")
        yield stack
    finally:
        stack.down()


def sweep_leftovers() -> int:
    """Remove the containers, networks and volumes of compose projects a killed run left."""
    client = docker.from_env(timeout=60)
    removed = 0

    def ours(labels: dict[str, str] | None) -> bool:
        project = (labels or {}).get(PROJECT_LABEL, "")
        return project.startswith(tuple(f"{p}-" for p in PREFIXES))

    selector = {"label": PROJECT_LABEL}
    try:
        for container in client.api.containers(all=True, filters=selector):
            if ours(container.get("Labels")):
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_container(container["Id"], force=True, v=True)
                    removed += 1
        for network in client.api.networks(filters=selector):
            if ours(network.get("Labels")):
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_network(network["Id"])
                    removed += 1
        for volume in client.api.volumes(filters=selector).get("Volumes") or []:
            if ours(volume.get("Labels")):
                with contextlib.suppress(docker.errors.APIError):
                    client.api.remove_volume(volume["Name"], force=True)
                    removed += 1
    finally:
        client.close()
    return removed


# -- the measurements -----------------------------------------------------------------------------


def recreate_labelsync(stack: ComposeStack) -> dict[str, Any]:
    """(a): one recreate of labelsync's container under load."""
    url = stack.url("caddy", 80)
    old = stack.container("labelsync").id
    with load(url) as traffic:
        traffic.wait_successes(40)
        began = time.monotonic()
        stack.up("--no-build", "--no-deps", "--force-recreate", "labelsync")
        returned = time.monotonic()
        new = stack.container("labelsync")
        if new.id == old:
            raise RuntimeError("labelsync's container was not recreated")
        wait_until(
            lambda: "applied:" in new.logs().decode(errors="replace"),
            timeout=SERVED_TIMEOUT,
            interval=0.05,
            message="the new labelsync's first sync",
        )
        synced = time.monotonic()
        traffic.wait_successes(40)
    return {
        **counts(traffic.result),
        "recreate_command_s": round(returned - began, 2),
        "first_sync_after_command_s": round(synced - returned, 2),
    }


def restart_caddy(stack: ComposeStack) -> dict[str, Any]:
    """(b): one restart of the example's Caddy under load."""
    url = stack.url("caddy", 80)  # a fixed host port: the same after the restart
    # Caddy reloads: a stale keep-alive connection is sent again, as browsers do.
    with load(url, pause=0.05, timeout=3.0, retry_stale=True) as during:
        during.wait_successes(40)
        began = time.monotonic()
        stack.run("restart", "-t", "3", "caddy")
        returned = time.monotonic()
        restored = served_again(url, returned)
    with load(url, pause=0.05, timeout=3.0, retry_stale=True) as after:
        time.sleep(AFTER_SECONDS)
    return {
        "restart_command_s": round(returned - began, 2),
        "served_again_s": round(restored, 3),
        "during": counts(during.result),
        "after": counts(after.result),
    }


def restart_caddy_b_empty(stack: ComposeStack) -> dict[str, Any]:
    """(c): caddy-b restarted without its autosave while `caddy` carries the load."""
    caddy_b = stack.container("caddy-b")
    url_b = stack.url("caddy-b", 80)
    with load(stack.url("caddy", 80), clients=3) as other:
        other.wait_successes(30)
        caddy_b.exec_run(["rm", "-f", "/config/caddy/autosave.json"])
        began = time.monotonic()
        stack.run("restart", "-t", "3", "caddy-b")
        returned = time.monotonic()
        restored = served_again(url_b, returned)
        other.wait_successes(30)
    return {
        "restart_command_s": round(returned - began, 2),
        "served_again_s": round(restored, 3),
        "other_caddy": counts(other.result),
    }


def repeated(
    what: str,
    runs: int,
    step: Callable[[], dict[str, Any]],
    describe: Callable[[dict[str, Any]], str],
    settle: Callable[[], None],
    stop: threading.Event,
    log: Log,
) -> list[dict[str, Any]]:
    """`step()` `runs` times, each logged, with `settle()` (every replica served again)
    after each; `Stopped` between two when the run is cancelled."""
    samples = []
    for i in range(runs):
        if stop.is_set():
            raise Stopped
        sample = step()
        log(f"deploy: {what} #{i + 1}: {describe(sample)}")
        samples.append(sample)
        settle()
    return samples


def _total(samples: list[dict[str, Any]], key: str) -> int:
    return sum(int(s[key]) for s in samples)


def _run(runs: int, log: Log, stop: threading.Event) -> dict[str, Any]:
    missing = compose_available()
    if missing:
        raise RuntimeError(missing)
    removed = sweep_leftovers()
    if removed:
        log(f"deploy: removed {removed} object(s) left by an earlier run")
    started = time.monotonic()
    client = docker.from_env(timeout=60)
    try:
        images = ensure_stack_images(client, ensure_images(client))
    finally:
        client.close()
    built = ", ".join(f"{name} {took:.0f} s" for name, took in images.build_seconds.items())
    log(f"deploy: stack images in {time.monotonic() - started:.1f} s ({built}; 0 s = cached)")
    results: dict[str, Any] = {
        "runs": runs,
        "clients": CLIENTS,
        "upstreams": "dynamic",
        "stall_target_s": STALL_TARGET_S,
        "restore_target_s": RESTORE_TARGET_S,
        "after_seconds": AFTER_SECONDS,
        "images": {"labelsync": images.labelsync, "caddy": images.caddy},
    }

    with running_stack(COMPOSE_EXAMPLE, images, PREFIXES[0], ("caddy",), log) as stack:
        url = stack.url("caddy", 80)

        def settle() -> None:
            wait_serving_all(url, "caddy")

        recreated = repeated(
            "labelsync recreated",
            runs,
            lambda: recreate_labelsync(stack),
            lambda s: (
                f"longest request {s['slowest_ms']:.0f} ms, {s['over_1s']} over 1 s, "
                f"{s['failed']}/{s['requests']} failed"
            ),
            settle,
            stop,
            log,
        )
        restarted = repeated(
            "Caddy restarted",
            runs,
            lambda: restart_caddy(stack),
            lambda s: (
                f"served again {s['served_again_s']:.2f} s after `restart` returned; "
                f"failed {s['during']['failed']}/{s['during']['requests']} meanwhile, "
                f"{s['after']['failed']}/{s['after']['requests']} after"
            ),
            settle,
            stop,
            log,
        )
    results["recreate"] = {
        "slowest_ms": summary([s["slowest_ms"] for s in recreated], 1),
        "first_sync_after_command_s": summary([s["first_sync_after_command_s"] for s in recreated]),
        "requests": _total(recreated, "requests"),
        "failed": _total(recreated, "failed"),
        "over_1s": _total(recreated, "over_1s"),
        "samples": recreated,
    }
    results["restart"] = {
        "served_again_s": summary([s["served_again_s"] for s in restarted]),
        "restart_command_s": summary([s["restart_command_s"] for s in restarted]),
        "during_failed": sum(s["during"]["failed"] for s in restarted),
        "during_requests": sum(s["during"]["requests"] for s in restarted),
        "after_failed": sum(s["after"]["failed"] for s in restarted),
        "after_requests": sum(s["after"]["requests"] for s in restarted),
        "after_stale_connection_retries": sum(
            s["after"]["stale_connection_retries"] for s in restarted
        ),
        "samples": restarted,
    }

    if stop.is_set():
        raise Stopped
    caddies = ("caddy", "caddy-b")
    with running_stack(TWO_CADDIES, images, PREFIXES[1], caddies, log) as stack:
        url_b = stack.url("caddy-b", 80)

        def settle_b() -> None:
            wait_serving_all(url_b, "caddy-b")

        emptied = repeated(
            "caddy-b restarted empty",
            runs,
            lambda: restart_caddy_b_empty(stack),
            lambda s: (
                f"served again {s['served_again_s']:.2f} s after `restart` returned; caddy "
                f"{s['other_caddy']['failed']}/{s['other_caddy']['requests']} failed"
            ),
            settle_b,
            stop,
            log,
        )
    results["restart_empty"] = {
        "served_again_s": summary([s["served_again_s"] for s in emptied]),
        "restart_command_s": summary([s["restart_command_s"] for s in emptied]),
        "other_failed": sum(s["other_caddy"]["failed"] for s in emptied),
        "other_requests": sum(s["other_caddy"]["requests"] for s in emptied),
        "samples": emptied,
    }
    return results


async def run(runs: int, log: Log) -> dict[str, Any]:
    """The scenario in a thread (compose and the load are blocking); on cancellation it is
    told to stop and awaited, so that the stacks are down before this returns."""
    stop = threading.Event()
    work = asyncio.ensure_future(asyncio.to_thread(_run, runs, log, stop))
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        stop.set()
        log("deploy: cancelled; taking the stacks down")
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await work
        raise
