"""Scenario 3, bursts (real dockerd, real Caddy, labelsync's loop in-process).

N containers across 20 pools are created and started at once (one thread each, like
as many `docker run -d` in parallel). Measured: admin writes from the first start until
everything is routable (plus a quiet second), and the time from the last `start` event
(Docker's timeNano) until every container has answered a request through Caddy (each
pool polled every ~5 ms; `round_robin`, so a pool of k members needs k answers).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
import uuid
from typing import Any

from labelsync.caddy.admin import CaddyAdmin
from labelsync.sources.docker import DockerSource

from .rawhttp import HttpConnection
from .rig import (
    BenchContainers,
    TimedAdmin,
    WholeConfigAdmin,
    backend_labels,
    bench_settings,
    labelsync,
    running_caddy,
)
from .stats import summary

POOLS = 20
VARIANTS = ("dynamic", "static", "whole-config")
POLL_INTERVAL = 0.005
ROUTABLE_TIMEOUT = 60.0
QUIET_AFTER = 1.0


async def _watch_pool(
    port: int, host: str, names: set[str], seen: dict[str, int], deadline: float
) -> None:
    connection = HttpConnection("127.0.0.1", port, timeout=2.0)
    try:
        while not names <= seen.keys() and time.monotonic() < deadline:
            try:
                response = await connection.get(host)
            except (ConnectionError, TimeoutError, ValueError):
                await asyncio.sleep(POLL_INTERVAL)
                continue
            backend = response.backend
            if response.status == 200 and backend in names and backend not in seen:
                seen[backend] = response.done_ns
            await asyncio.sleep(POLL_INTERVAL)
    finally:
        await connection.close()


async def _one_burst(variant: str, count: int, rep: int, log: Any) -> dict[str, float]:
    upstreams = "static" if variant == "whole-config" else variant
    containers = BenchContainers("burst")
    source = DockerSource(swarm="off")
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=count)
    try:
        async with running_caddy(f"burst-{variant}-{rep}") as caddy:
            settings = bench_settings(caddy, upstreams)
            inner = CaddyAdmin(caddy.admin_url, timeout=60.0)
            admin: TimedAdmin = (
                WholeConfigAdmin(inner, caddy.base_config())
                if variant == "whole-config"
                else TimedAdmin(inner)
            )
            async with labelsync(settings, source, admin) as ls:
                tag = uuid.uuid4().hex[:6]
                hosts = [f"burst-{variant}-{p}-{tag}.bench.test" for p in range(POOLS)]
                names = [f"lsb-burst-{variant}-{tag}-{i}" for i in range(count)]
                members: dict[str, set[str]] = {host: set() for host in hosts}
                for i, name in enumerate(names):
                    members[hosts[i % POOLS]].add(name)
                seen: dict[str, int] = {}
                writes, requests = len(admin.writes), admin.requests_sent
                sent = admin.bytes_sent
                deadline = time.monotonic() + ROUTABLE_TIMEOUT
                watchers = [
                    asyncio.create_task(
                        _watch_pool(caddy.http_port, host, members[host], seen, deadline)
                    )
                    for host in hosts
                ]
                loop = asyncio.get_running_loop()

                def start(i: int) -> Any:
                    labels = backend_labels(hosts[i % POOLS], {"lb.policy": "round_robin"})
                    return containers.start(
                        labels,
                        name=names[i],
                        exact_name=True,
                        wait_running=False,
                        wait_listening=False,
                    )

                handles = await asyncio.gather(
                    *(loop.run_in_executor(executor, start, i) for i in range(count))
                )
                await asyncio.gather(*watchers)
                if len(seen) < count:
                    raise RuntimeError(f"burst {variant}: {count - len(seen)} never routable")
                await asyncio.sleep(QUIET_AFTER)
                starts = [ls.recorder.event_received(h.id, ("start",)) for h in handles]
                start_ns = [event[1] for event in starts if event is not None]
                if len(start_ns) < count:
                    raise RuntimeError(f"burst {variant}: start events missing")
                all_routable = max(seen.values())
                new_writes = admin.writes[writes:]
                result = {
                    "admin_writes": len(new_writes),
                    "admin_requests": admin.requests_sent - requests,
                    "bytes_sent": admin.bytes_sent - sent,
                    "caddy_write_ms": sum(w.seconds for w in new_writes) * 1000,
                    "start_spread_ms": (max(start_ns) - min(start_ns)) / 1e6,
                    "routable_after_last_start_ms": (all_routable - max(start_ns)) / 1e6,
                    "routable_after_first_start_ms": (all_routable - min(start_ns)) / 1e6,
                }
            await inner.aclose()
    finally:
        executor.shutdown(wait=True)
        source.close()
        with contextlib.suppress(Exception):
            await containers.remove_all()
        containers.close()
    log(
        f"burst {variant} #{rep + 1}: {result['admin_writes']} writes, all routable "
        f"{result['routable_after_last_start_ms']:.0f} ms after the last start"
    )
    return result


async def run(count: int, reps: int, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"containers": count, "pools": POOLS, "reps": reps}
    for variant in VARIANTS:
        samples = [await _one_burst(variant, count, rep, log) for rep in range(reps)]
        results[variant] = {key: summary([s[key] for s in samples]) for key in samples[0]}
    return results
