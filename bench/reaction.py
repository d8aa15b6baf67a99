"""Scenario 1, reaction time (real dockerd, real Caddy, labelsync's loop in-process).

One pool with the `first` policy and a seed container. Containers are started one at a
time, each with a lower `order` than any before, so the first request Caddy routes to
it proves the change is live; each is stopped again (it keeps serving for STOP_DELAY
after SIGTERM, as a graceful server does) before the next one starts.

- join: Docker's `start` event (its own timeNano) -> the first request through Caddy
  answered by the new container (the pool is under steady traffic, a request every
  ~2 ms, so Caddy's cached answer expires at a random phase; the time the answer was
  read counts);
- leave: the first leave event Docker sends for a `docker stop` (`kill`, SIGTERM) -> the
  first request answered by another member;
- inside labelsync: the event reaching labelsync -> the resolver publishing the change
  (dynamic) or Caddy answering the admin write (static);
- delivery: timeNano -> the event reaching labelsync (Docker and docker-py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import Callable
from typing import Any

from labelsync.caddy.admin import CaddyAdmin
from labelsync.core.model import DesiredState
from labelsync.sources.docker import DockerSource

from .rig import (
    BenchContainers,
    Labelsync,
    TimedAdmin,
    backend_labels,
    bench_settings,
    labelsync,
    running_caddy,
    wait_for,
)
from .routing import Traffic, answered_by, poll_until
from .stats import summary

STOP_DELAY = "1"
PHASE_JITTER = 0.5  # seconds
LEAVE_ACTIONS = ("kill", "stop", "die")
# (name, upstream mode, settings overrides)
VARIANTS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("dynamic", "dynamic", {}),
    ("static", "static", {}),
    ("dynamic-refresh-100ms", "dynamic", {"resolver_refresh": "100ms"}),
)


def _has_member(desired: DesiredState | None, address: str) -> bool:
    return desired is not None and any(
        m.address == address for pool in desired.pools for m in pool.members
    )


def _labelsync_done(ls: Labelsync, after_ns: int, present: bool, address: str) -> int | None:
    """When labelsync finished acting on the change: the resolver published it (dynamic)
    or Caddy answered the write that made it (static)."""
    records: list[tuple[int, DesiredState | None]]
    if ls.membership is not None:
        records = [(t, d) for t, d in ls.recorder.published]
    else:
        records = list(ls.recorder.applied)
    for time_ns, desired in records:
        if time_ns >= after_ns and _has_member(desired, address) == present:
            return time_ns
    return None


async def _one_change(
    ls: Labelsync,
    traffic: Traffic,
    accept: Callable[[int, str | None], bool],
    act: Callable[[], Any],
    container_id: Callable[[], str],
    actions: tuple[str, ...],
    address: Callable[[], str],
    present: bool,
) -> dict[str, float]:
    """Do `act` (start or stop a container) and time it from its Docker event."""
    # A change right after the previous one was seen would start just after a refresh
    # of Caddy's cached answer, every time: a random pause decorrelates the phases.
    await asyncio.sleep(random.uniform(0, PHASE_JITTER))
    await asyncio.to_thread(act)
    event = await wait_for(
        lambda: ls.recorder.event_received(container_id(), actions),
        timeout=10.0,
        message=f"a {'/'.join(actions)} event for {container_id()[:12]}",
    )
    received_ns, event_ns = event
    routed_ns = await traffic.wait_first(event_ns, accept)
    if routed_ns is None:
        raise RuntimeError(f"{traffic.host}: the change is not routed after 20 s")
    done_ns = _labelsync_done(ls, received_ns, present, address())
    return {
        "total_ms": (routed_ns - event_ns) / 1e6,
        "inside_ms": (done_ns - received_ns) / 1e6 if done_ns else float("nan"),
        "delivery_ms": (received_ns - event_ns) / 1e6,
    }


async def _start_and_stop(
    ls: Labelsync, containers: BenchContainers, traffic: Traffic, i: int
) -> tuple[dict[str, float], dict[str, float]]:
    """Start the i-th container (preferred by `first`), then stop it: both measured."""
    name = f"lsb-react-{i}-{uuid.uuid4().hex[:6]}"
    labels = backend_labels(traffic.host, {"lb.policy": "first", "order": str(1000 - i)})
    started: dict[str, Any] = {}

    def start() -> None:
        started["handle"] = containers.start(
            labels, name=name, exact_name=True, env={"STOP_DELAY": STOP_DELAY}
        )

    join = await _one_change(
        ls,
        traffic,
        lambda status, backend: status == 200 and backend == name,
        start,
        lambda: started["handle"].id,
        ("start",),
        lambda: started["handle"].address(8080),
        True,
    )
    handle = started["handle"]
    leave = await _one_change(
        ls,
        traffic,
        lambda status, backend: status == 200 and backend not in (None, name),
        lambda: handle.container.stop(timeout=10),
        lambda: handle.id,
        LEAVE_ACTIONS,
        lambda: handle.address(8080),
        False,
    )
    return join, leave


async def _measure(
    variant: str, upstreams: str, overrides: dict[str, str], count: int, log: Any
) -> dict[str, Any]:
    containers = BenchContainers("reaction")
    joins: list[dict[str, float]] = []
    leaves: list[dict[str, float]] = []
    source = DockerSource(swarm="off")
    host = f"react-{variant}.bench.test"
    try:
        async with running_caddy(f"reaction-{variant}") as caddy:
            settings = bench_settings(caddy, upstreams, **overrides)
            admin = TimedAdmin(CaddyAdmin(caddy.admin_url))
            env = {"STOP_DELAY": STOP_DELAY}
            async with labelsync(settings, source, admin) as ls:
                seed_labels = backend_labels(host, {"lb.policy": "first", "order": "100000"})
                seed = await asyncio.to_thread(containers.start, seed_labels, env=env)
                if await poll_until(caddy.http_port, host, answered_by(seed.name)) is None:
                    raise RuntimeError(f"{host}: the seed container is never routed")
                async with Traffic(caddy.http_port, host) as traffic:
                    for i in range(count):
                        join, leave = await _start_and_stop(ls, containers, traffic, i)
                        joins.append(join)
                        leaves.append(leave)
                        if (i + 1) % 10 == 0:
                            log(f"reaction {variant}: {i + 1}/{count}")
            await admin.aclose()
    finally:
        source.close()
        with contextlib.suppress(Exception):
            await containers.remove_all()
        containers.close()
    return {
        name: {key: summary([s[key] for s in samples]) for key in samples[0]}
        for name, samples in (("join", joins), ("leave", leaves))
    }


async def run(count: int, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"containers": count, "stop_delay_s": float(STOP_DELAY)}
    for variant, upstreams, overrides in VARIANTS:
        log(f"reaction: {variant}, {count} containers")
        results[variant] = await _measure(variant, upstreams, overrides, count, log)
    return results
