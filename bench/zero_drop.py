"""Scenario 5, zero drop (real dockerd, real Caddy, labelsync's loop in-process).

A bounded load (`loadgen`, its own process: CLIENTS keep-alive clients for D seconds)
runs through Caddy to a 3-replica pool, health-checked (`health.path`, so passive checks
too), on a bridge network of its own with a /28 subnet, where Docker hands a freed
address to the next container at once, while
  (a) the service is rolled ROLLS times: each replica in turn is replaced by a new
      container (started, listening), then the old one is stopped (it serves on for
      STOP_DELAY after SIGTERM, as a graceful server does);
  (a') the same, abruptly: the new replica's app listens START_DELAY after its container
      started, and the old one is stopped as soon as the new container runs;
  (b) the pool's policy and health settings change CHANGES times: the labels labelsync
      reads are rewritten between syncs (`RelabelledSource`: Docker cannot relabel a
      running container; a real change would come with new containers, as in (a)).
One more connection holds a long request (`/slow?D`) open through another pool of the
same server for the whole window: it must come back complete. Changes are spread evenly
over the window. The same is run for dynamic mode, static mode, and the whole-config
baseline (every change pushed as POST /load, static members), each on its own Caddy.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from labelsync.caddy.admin import CaddyAdmin
from labelsync.core.events import DockerEvent
from labelsync.core.model import ContainerInfo
from labelsync.sources.docker import DockerSource

from .rig import (
    PREFIX,
    BenchContainers,
    TimedAdmin,
    WholeConfigAdmin,
    backend_labels,
    bench_settings,
    labelsync,
    running_caddy,
)
from .routing import answered_by, poll_until

VARIANTS = ("dynamic", "static", "whole-config")
REPLICAS = 3
STOP_DELAY = "1"
START_DELAY = "1"  # (a'): seconds from a container's start until its app listens
SUBNET_PREFIX = 28
PAUSE_MS = 5
BASE_KEYS = {"lb.policy": "round_robin", "health.path": "/health", "health.interval": "2s"}
POLICIES = ("least_conn", "random", "round_robin", "first", "random_choose")


def setting_change(i: int) -> dict[str, str]:
    """The i-th change of the pool's policy and health settings (every one differs from
    the one before in Caddy's JSON, in both upstream modes)."""
    return {
        f"{PREFIX}.lb.policy": POLICIES[i % len(POLICIES)],
        f"{PREFIX}.health.interval": f"{1 + i % 3}s",
        f"{PREFIX}.health.passive.max_fails": str(2 + i % 4),
        f"{PREFIX}.health.passive.fail_duration": f"{5 + i % 7}s",
    }


class RelabelledSource:
    """The real Docker source, with extra labels laid over one pool's containers."""

    def __init__(self, inner: DockerSource, host: str) -> None:
        self.inner = inner
        self.host = host
        self.overrides: dict[str, str] = {}

    @property
    def endpoint(self) -> str:
        return self.inner.endpoint

    async def snapshot(self) -> list[ContainerInfo]:
        containers = await self.inner.snapshot()
        if not self.overrides:
            return containers
        return [
            dataclasses.replace(c, labels={**c.labels, **self.overrides})
            if c.labels.get(f"{PREFIX}.host") == self.host
            else c
            for c in containers
        ]

    async def events(self) -> AsyncIterator[DockerEvent]:
        async for event in self.inner.events():
            yield event

    def close(self) -> None:
        self.inner.close()


class LoadProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(
        cls,
        port: int,
        host: str,
        clients: int,
        seconds: float,
        stream_host: str,
        *,
        retry_stale: bool,
    ) -> LoadProcess:
        """`retry_stale`: whether a request that a reused connection dropped unanswered is
        sent once more (where Caddy reloads: every write closes idle connections) or
        counted as a failure (where no reload may happen)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.loadgen",
            str(port),
            host,
            str(clients),
            str(seconds + 60),
            str(PAUSE_MS),
            stream_host,
            f"{seconds:g}",
            "1" if retry_stale else "0",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        load = cls(process)
        await load._line()  # started
        return load

    async def _line(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("the load generator exited early")
        result: dict[str, Any] = json.loads(line)
        return result

    async def finish(self, timeout: float) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        try:
            result = await self._line(timeout)
            await asyncio.wait_for(self.process.wait(), 10)
            return result
        finally:
            self.kill()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


async def _paced(steps: int, window: float, step: Any) -> list[float]:
    """Run `step(i)` for i < steps, spread evenly over `window` seconds; their times."""
    started = time.monotonic()
    times = []
    for i in range(steps):
        await asyncio.sleep(max(0.0, started + window * (i + 0.5) / steps - time.monotonic()))
        times.append(time.time())
        await step(i)
    return times


async def _phase(
    admin: TimedAdmin,
    port: int,
    host: str,
    stream_host: str,
    clients: int,
    seconds: float,
    steps: int,
    step: Any,
    *,
    retry_stale: bool,
) -> dict[str, Any]:
    writes, requests = len(admin.writes), admin.requests_sent
    load = await LoadProcess.start(
        port, host, clients, seconds, stream_host, retry_stale=retry_stale
    )
    try:
        await asyncio.sleep(0.5)
        change_times = await _paced(steps, seconds - 1.5, step)
        changes_done = time.time()
        result = await load.finish(timeout=seconds + 60)
    finally:
        load.kill()
    stream = result["stream"]
    spanned = sum(stream["started"] <= t <= stream["ended"] for t in change_times)
    return {
        "requests": result["requests"],
        "failed": result["failed"],
        "failures": result["failures"],
        "retry_stale": retry_stale,
        "stale_connection_retries": result["stale_connection_retries"],
        "stale_connection_failures": result["stale_connection_failures"],
        "latency_ms": result["latency_ms"],
        "load_seconds": round(result["seconds"], 2),
        "changes": steps,
        "changes_seconds": round(changes_done - change_times[0], 2) if change_times else 0,
        "admin_writes": len(admin.writes) - writes,
        "admin_requests": admin.requests_sent - requests,
        "stream_ok": bool(stream["ok"]),
        "stream_spanned_changes": spanned,
        "stream": stream,
    }


async def _variant(
    variant: str, clients: int, seconds: float, rolls: int, changes: int, log: Any
) -> dict[str, Any]:
    upstreams = "static" if variant == "whole-config" else variant
    containers = BenchContainers("zero-drop")
    tag = uuid.uuid4().hex[:6]
    host, stream_host = f"zd-{variant}-{tag}.bench.test", f"zds-{variant}-{tag}.bench.test"
    source = RelabelledSource(DockerSource(swarm="off"), host)
    env = {"STOP_DELAY": STOP_DELAY}
    slow_env = {**env, "START_DELAY": START_DELAY}
    stops: list[asyncio.Task[None]] = []
    network = await asyncio.to_thread(containers.small_network, SUBNET_PREFIX)
    try:
        async with running_caddy(f"zero-{variant}") as caddy:
            settings = bench_settings(caddy, upstreams)
            inner = CaddyAdmin(caddy.admin_url)
            admin = (
                WholeConfigAdmin(inner, caddy.base_config())
                if variant == "whole-config"
                else TimedAdmin(inner)
            )
            async with labelsync(settings, source, admin) as ls:
                labels = backend_labels(host, BASE_KEYS)
                replicas = [
                    await asyncio.to_thread(containers.start, labels, env=env, network=network)
                    for _ in range(REPLICAS)
                ]
                streamer = await asyncio.to_thread(
                    containers.start, backend_labels(stream_host), network=network
                )
                for handle in [*replicas, streamer]:
                    target = stream_host if handle is streamer else host
                    if await poll_until(caddy.http_port, target, answered_by(handle.name)) is None:
                        raise RuntimeError(f"{handle.name} is never routed")

                async def roll(i: int, *, abrupt: bool = False) -> None:
                    slot = i % REPLICAS
                    old = replicas[slot]
                    replicas[slot] = await asyncio.to_thread(
                        containers.start,
                        labels,
                        env=slow_env if abrupt else env,
                        network=network,
                        wait_listening=not abrupt,
                    )
                    stops.append(
                        asyncio.create_task(
                            asyncio.to_thread(lambda: old.container.stop(timeout=10))
                        )
                    )

                async def abrupt_roll(i: int) -> None:
                    await roll(i, abrupt=True)

                async def change(i: int) -> None:
                    source.overrides = setting_change(i)
                    ls.reconciler.notify()

                log(f"zero drop {variant}: rolling {rolls}x{REPLICAS} replicas")
                # Dynamic mode rolls members through the resolver: no Caddy write, so no
                # reload to excuse a connection reset. Static mode and the baseline write
                # (and reload) on every change: clients retry as Go's and browsers do.
                rolling = await _phase(
                    admin, caddy.http_port, host, stream_host, clients, seconds,
                    rolls * REPLICAS, roll, retry_stale=variant != "dynamic",
                )  # fmt: skip
                await asyncio.gather(*stops)
                log(
                    f"zero drop {variant}: rolling {rolls}x{REPLICAS} replicas abruptly "
                    f"(listening {START_DELAY}s after start, the old one stopped at once)"
                )
                abrupt = await _phase(
                    admin, caddy.http_port, host, stream_host, clients, seconds,
                    rolls * REPLICAS, abrupt_roll, retry_stale=variant != "dynamic",
                )  # fmt: skip
                await asyncio.gather(*stops)
                addresses_reused = containers.addresses_reused()
                log(f"zero drop {variant}: {changes} policy/health changes")
                # A change of the pool's settings is a Caddy write in every variant.
                settings_phase = await _phase(
                    admin, caddy.http_port, host, stream_host, clients, seconds,
                    changes, change, retry_stale=True,
                )  # fmt: skip
            await inner.aclose()
    finally:
        source.close()
        for task in stops:
            with contextlib.suppress(Exception):
                await task
        with contextlib.suppress(Exception):
            await containers.remove_all()
        containers.close()
    abrupt["addresses_reused"] = addresses_reused
    phases = {"rolling": rolling, "abrupt": abrupt, "settings": settings_phase}
    for label, phase in phases.items():
        stale = (
            f"{phase['stale_connection_retries']} stale connections retried"
            if phase["retry_stale"]
            else f"{phase['stale_connection_failures']} stale connection resets among them"
        )
        log(
            f"zero drop {variant} {label}: {phase['failed']}/{phase['requests']} failed "
            f"({stale}), p99 {phase['latency_ms'].get('p99')} ms, stream "
            f"{'intact' if phase['stream_ok'] else 'BROKEN'}"
        )
    return phases


async def run(clients: int, seconds: float, rolls: int, changes: int, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "clients": clients,
        "seconds": seconds,
        "rolls": rolls,
        "replicas": REPLICAS,
        "setting_changes": changes,
        "pause_ms": PAUSE_MS,
        "stop_delay_s": float(STOP_DELAY),
        "start_delay_s": float(START_DELAY),
        "subnet_prefix": SUBNET_PREFIX,
    }
    for variant in VARIANTS:
        results[variant] = await _variant(variant, clients, seconds, rolls, changes, log)
    return results
