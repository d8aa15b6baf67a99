"""Scenario 5, zero drop (real dockerd, real Caddy, labelsync's loop in-process).

A bounded load (`loadgen`, its own process: CLIENTS keep-alive clients for D seconds)
runs through Caddy to a 3-replica pool while
  (a) the service is rolled ROLLS times: each replica in turn is replaced by a new
      container (started, listening), then the old one is stopped (it serves on for
      STOP_DELAY after SIGTERM, as a graceful server does);
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
        cls, port: int, host: str, clients: int, seconds: float, stream_host: str
    ) -> LoadProcess:
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
) -> dict[str, Any]:
    writes, requests = len(admin.writes), admin.requests_sent
    load = await LoadProcess.start(port, host, clients, seconds, stream_host)
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
        "stale_connection_retries": result["stale_connection_retries"],
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
    stops: list[asyncio.Task[None]] = []
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
                    await asyncio.to_thread(containers.start, labels, env=env)
                    for _ in range(REPLICAS)
                ]
                streamer = await asyncio.to_thread(containers.start, backend_labels(stream_host))
                for handle in [*replicas, streamer]:
                    target = stream_host if handle is streamer else host
                    if await poll_until(caddy.http_port, target, answered_by(handle.name)) is None:
                        raise RuntimeError(f"{handle.name} is never routed")

                async def roll(i: int) -> None:
                    slot = i % REPLICAS
                    old = replicas[slot]
                    replicas[slot] = await asyncio.to_thread(containers.start, labels, env=env)
                    stops.append(
                        asyncio.create_task(
                            asyncio.to_thread(lambda: old.container.stop(timeout=10))
                        )
                    )

                async def change(i: int) -> None:
                    source.overrides = setting_change(i)
                    ls.reconciler.notify()

                log(f"zero drop {variant}: rolling {rolls}x{REPLICAS} replicas")
                rolling = await _phase(
                    admin, caddy.http_port, host, stream_host, clients, seconds,
                    rolls * REPLICAS, roll,
                )  # fmt: skip
                await asyncio.gather(*stops)
                log(f"zero drop {variant}: {changes} policy/health changes")
                settings_phase = await _phase(
                    admin, caddy.http_port, host, stream_host, clients, seconds,
                    changes, change,
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
    for label, phase in (("rolling", rolling), ("settings", settings_phase)):
        log(
            f"zero drop {variant} {label}: {phase['failed']}/{phase['requests']} failed, "
            f"p99 {phase['latency_ms'].get('p99')} ms, stream "
            f"{'intact' if phase['stream_ok'] else 'BROKEN'}"
        )
    return {"rolling": rolling, "settings": settings_phase}


async def run(clients: int, seconds: float, rolls: int, changes: int, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {
        "clients": clients,
        "seconds": seconds,
        "rolls": rolls,
        "replicas": REPLICAS,
        "setting_changes": changes,
        "pause_ms": PAUSE_MS,
        "stop_delay_s": float(STOP_DELAY),
    }
    for variant in VARIANTS:
        results[variant] = await _variant(variant, clients, seconds, rolls, changes, log)
    return results
