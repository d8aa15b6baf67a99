"""Scenario 2, cost of one change vs size (synthetic records, real Caddy).

At N pools (two members each, on loopback backends) one change is made at a time:
one member added to one pool, or one new pool added. For each: admin requests (writes
and reads), request bytes sent, labelsync's CPU time for the change (`process_time`
around one `Reconciler.sync_once`: snapshot, core, Caddy client), the wall time of
Caddy's answers to the writes (its reload), and the time from the start of the sync
until a request through Caddy reaches the new member. The same changes are measured in
dynamic mode, static mode, and against the baseline that replaces the whole config
with POST /load (the same core renders it; static members), each against its own Caddy
in the same run.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.diff import adopt_equal, diff_routes
from labelsync.caddy.render import RenderMemo, render_routes
from labelsync.core.pools import ParseMemo, build_desired
from labelsync.loop.build import render_options

from .backends import loopback_backends
from .rig import PREFIX, BenchCaddy, TimedAdmin, bench_settings, labelsync, running_caddy
from .routing import answered_by, poll_until
from .stats import median, summary
from .synthetic import SyntheticSource, pool_host, pools_of, synthetic_container

IPS = ("127.0.0.2", "127.0.0.3")
MEMBERS = 2
VARIANTS = ("dynamic", "static", "whole-config")
KINDS = ("add_member", "add_pool")
REFRESH_SECONDS = 0.15  # the default LABELSYNC_RESOLVER_REFRESH
PHASE_SEED = 6


def _member_pool(pools: int, rep: int) -> int:
    return (rep * 7919 + 1) % pools


def _new_member_ip(rep: int) -> str:
    """A loopback address no member had before: each added member is a new backend."""
    return f"127.0.1.{rep + 1}"


async def _warm(port: int, kind: str, pools: int, rep: int, phase: random.Random) -> None:
    """Put the pool under traffic before the change, as a live pool is: Caddy then holds
    a cached answer, and the change waits for a refresh at a random phase of it."""
    if kind != "add_member":
        return
    host = pool_host(_member_pool(pools, rep))
    if await poll_until(port, host, lambda r: r.status == 200 and r.backend is not None) is None:
        raise RuntimeError(f"{host} is not routed before the change")
    await asyncio.sleep(phase.uniform(0, REFRESH_SECONDS))


def _change(source: SyntheticSource, kind: str, pools: int, rep: int, port: int) -> tuple[str, str]:
    """Make one change in the source; (host to poll, backend that must answer there)."""
    if kind == "add_member":
        pool, ip = _member_pool(pools, rep), _new_member_ip(rep)
        # order -rep: preferred by the pool's `first` policy over every member before it,
        # so the next routed request after the change reaches it.
        source.containers.append(
            synthetic_container(f"p{pool}-new{rep}", pool_host(pool), ip, port, order=-rep)
        )
        return pool_host(pool), ip
    host = pool_host(pools + rep)
    source.containers.append(synthetic_container(f"new-pool-{rep}", host, IPS[rep % 2], port))
    return host, IPS[rep % 2]


async def _labelsync_change(
    ls: Any, admin: TimedAdmin, caddy: BenchCaddy, apply_change: Any
) -> dict[str, float]:
    host, ip = apply_change()
    requests, sent, writes = admin.requests_sent, admin.bytes_sent, len(admin.writes)
    started_ns = time.time_ns()
    cpu = time.process_time()
    result = await ls.reconciler.sync_once()
    cpu = time.process_time() - cpu
    if not result.ok:
        raise RuntimeError(f"sync {result}: {ls.reconciler.state.last_error}")
    new_writes = admin.writes[writes:]
    routed = await poll_until(caddy.http_port, host, answered_by(ip))
    return {
        "writes": len(new_writes),
        "reads": admin.requests_sent - requests - len(new_writes),
        "bytes": admin.bytes_sent - sent,
        "cpu_ms": cpu * 1000,
        "caddy_ms": sum(w.seconds for w in new_writes) * 1000,
        "routed_ms": (routed - started_ns) / 1e6 if routed else float("nan"),
    }


async def _whole_config_change(
    source: SyntheticSource, settings: Any, admin: CaddyAdmin, caddy: BenchCaddy, apply_change: Any
) -> dict[str, float]:
    """The baseline: build from the snapshot, render everything, POST /load."""
    host, ip = apply_change()
    requests, sent = admin.requests_sent, admin.bytes_sent
    started_ns = time.time_ns()
    cpu = time.process_time()
    containers = await source.snapshot()
    desired = build_desired(containers, prefix=PREFIX, dynamic=False)
    config = caddy.base_config()
    config["apps"]["http"]["servers"]["labelsync"]["routes"] = render_routes(
        desired, render_options(settings)
    )
    wall = time.perf_counter()
    await admin.load(config)
    caddy_s = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    routed = await poll_until(caddy.http_port, host, answered_by(ip))
    return {
        "writes": admin.requests_sent - requests,
        "reads": 0,
        "bytes": admin.bytes_sent - sent,
        "cpu_ms": cpu * 1000,
        "caddy_ms": caddy_s * 1000,
        "routed_ms": (routed - started_ns) / 1e6 if routed else float("nan"),
    }


def _cpu_breakdown(pools: int, port: int, upstreams: str, settings: Any) -> dict[str, float]:
    """Where labelsync's CPU goes for one change at this size (pure parts, medians of 3).

    What the loop pays, incrementally: its parse memo and render memo are warm and one
    container is new; the diff runs against the routes it knows Caddy holds, adopted
    (`adopt_equal`) from its last read. `read_parse` is what parsing a read of the
    server costs (before a write, and at each check).
    """
    containers = pools_of(pools, MEMBERS, IPS[:MEMBERS], port)
    timings: dict[str, list[float]] = {"build": [], "render": [], "read_parse": [], "diff": []}
    dynamic = upstreams == "dynamic"
    options = render_options(settings)
    for _ in range(3):
        memo, rendered = ParseMemo(), RenderMemo()
        before = build_desired(containers[1:], prefix=PREFIX, dynamic=dynamic, memo=memo)
        old_routes = render_routes(before, options, memo=rendered)
        known = adopt_equal(json.loads(json.dumps(old_routes)), old_routes)
        t0 = time.process_time()
        desired = build_desired(containers, prefix=PREFIX, dynamic=dynamic, memo=memo)
        t1 = time.process_time()
        routes = render_routes(desired, options, memo=rendered)
        t2 = time.process_time()
        json.loads(json.dumps(routes))  # what the GET of the server costs to parse
        t3 = time.process_time()
        diff_routes(known, routes)
        t4 = time.process_time()
        for key, value in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            timings[key].append(value * 1000)
    return {key: round(median(values), 2) for key, values in timings.items()}


async def _measure_variant(variant: str, pools: int, reps: int, port: int) -> dict[str, Any]:
    upstreams = "static" if variant == "whole-config" else variant
    samples: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    async with running_caddy(f"cost-{variant}-{pools}") as caddy:
        settings = bench_settings(caddy, upstreams)
        source = SyntheticSource(pools_of(pools, MEMBERS, IPS[:MEMBERS], port))
        inner = CaddyAdmin(caddy.admin_url, timeout=120.0)
        admin = TimedAdmin(inner)
        try:
            async with labelsync(settings, source, admin, run_loop=False) as ls:
                started = time.perf_counter()
                if variant == "whole-config":
                    first = await _whole_config_change(
                        source, settings, inner, caddy, lambda: (pool_host(0), IPS[0])
                    )
                else:
                    first = await _labelsync_change(
                        ls, admin, caddy, lambda: (pool_host(0), IPS[0])
                    )
                initial = {**first, "wall_ms": (time.perf_counter() - started) * 1000}
                phase = random.Random(PHASE_SEED)  # the same phases for every variant
                for rep in range(reps):
                    for kind in KINDS:
                        await _warm(caddy.http_port, kind, pools, rep, phase)

                        def change(kind: str = kind, rep: int = rep) -> tuple[str, str]:
                            return _change(source, kind, pools, rep, port)

                        if variant == "whole-config":
                            sample = await _whole_config_change(
                                source, settings, inner, caddy, change
                            )
                        else:
                            sample = await _labelsync_change(ls, admin, caddy, change)
                        samples[kind].append(sample)
                breakdown = _cpu_breakdown(pools, port, upstreams, settings)
        finally:
            await inner.aclose()
    result: dict[str, Any] = {"initial_sync": initial, "cpu_breakdown_ms": breakdown}
    for kind in KINDS:
        result[kind] = {
            metric: summary([s[metric] for s in samples[kind]])
            for metric in ("writes", "reads", "bytes", "cpu_ms", "caddy_ms", "routed_ms")
        }
    return result


async def run(sizes: tuple[int, ...], reps: int, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": list(sizes), "reps": reps, "members_per_pool": MEMBERS}
    ips = [*IPS, *(_new_member_ip(rep) for rep in range(reps))]
    async with loopback_backends(ips) as (port, _backends):
        for pools in sizes:
            by_variant: dict[str, Any] = {}
            for variant in VARIANTS:
                log(f"change cost: {pools} pools, {variant}")
                by_variant[variant] = await _measure_variant(variant, pools, reps, port)
            by_variant["ratios"] = _ratios(by_variant)
            results[str(pools)] = by_variant
    return results


def _ratios(by_variant: dict[str, Any]) -> dict[str, Any]:
    """whole-config / labelsync, per change kind, from medians of this run."""
    ratios: dict[str, Any] = {}
    for kind in KINDS:
        base = by_variant["whole-config"][kind]
        for variant in ("static", "dynamic"):
            mine = by_variant[variant][kind]
            for metric in ("bytes", "cpu_ms", "caddy_ms"):
                denominator = mine[metric]["p50"]
                ratios[f"{kind}.{metric}.whole-config/{variant}"] = (
                    round(base[metric]["p50"] / denominator, 1) if denominator else None
                )
    return ratios
