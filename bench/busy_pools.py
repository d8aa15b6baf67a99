"""Scenario 7, busy pools: N pools all under steady traffic, and a rollout among them.

(a) Steady traffic. N synthetic pools (2 members each on loopback backends) behind one
Caddy; 8 keep-alive clients go round all N hosts, one request after the other, for a
few seconds, split into interleaved windows (every variant runs side by side, each
with its own Caddy, and gets a window in turn, `ROUNDS` times: a neighbour's load on
the shared machine then hits all variants alike; rates and percentiles are medians
over the windows). Per variant: requests/s, latency p50/p99, DNS questions labelsync's
resolver got per request (SRV and A; counted inside the resolver, so no packet
capture is needed), labelsync's CPU (the bench process: its loop and resolver thread;
backends and clients run in a child process) and Caddy's CPU (`/proc/<pid>/stat`), both
in % of one core. Variants: the default (dynamic mode, `LABELSYNC_DYNAMIC_BUDGET`
default), static mode, the whole-config baseline (static members, pushed by
`POST /load`), and `all-dynamic`: every pool through the resolver, as before the
budget existed.

(b) Rolling update of one pool among 500 busy ones: its 2 members are replaced one at
a time (a new one joins, a sync, the old one leaves, a sync), under the same traffic;
in dynamic mode the budget's quiet time is shortened to `HOLD` so that the pool's way
back into the JSON is inside the measurement. Failed requests, admin writes and stale
keep-alive resets (requests that failed on a reused connection and were retried).

(c) Caddy's own metrics, on vs off (issue 18), at the sizes of `METRICS_SIZES` that are
run: two Caddys side by side in the default mode, the same but for
`apps.http.metrics = {"per_host": true}` in one of them (written into its config through
the admin API; every labelsync route names its host, so each pool gets its own series).
`METRICS_ROUNDS` rounds of one window of the same load per side, in the order off on, on
off, ... (drift hits both sides alike); halfway the two Caddys swap roles (crossover).
The cost of "on" in % of "off" is the median over the rounds of each round's pair of
windows: requests/s, p99, and Caddy's CPU per request. Then what one read of Caddy's
`/metrics` costs with no traffic (bytes, Caddy's answer time and CPU, and the CPU of
parsing it with prometheus_client, as labelsync's reader of Caddy's gauges does).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from labelsync.caddy.admin import CaddyAdmin
from labelsync.core.model import JSON

from .rig import BenchCaddy, TimedAdmin, WholeConfigAdmin, bench_settings, labelsync, running_caddy
from .stats import median
from .synthetic import SyntheticSource, pool_host, pools_of, synthetic_container

IPS = ("127.0.0.2", "127.0.0.3")
ROLL_IPS = ("127.0.1.21", "127.0.1.22")
MEMBERS = 2
CLIENTS = 8
VARIANTS = ("dynamic", "static", "whole-config", "all-dynamic")
# Extra variants, for measuring a setting's cost (`--only busy_pools` with these added).
SETTINGS_OF = {
    "refresh-250ms": {"resolver_refresh": "250ms"},
    "refresh-100ms": {"resolver_refresh": "100ms"},
}
ROLL_VARIANTS = ("dynamic", "static", "whole-config")
ROLL_POOLS = 500
HOLD = 2.0  # the budget's quiet time in (b), shortened from 60 s
STEP_PAUSE = 0.5
METRICS_SIZES = (10, 500, 1000)  # (c): the sizes issue 18 names, where they are run
METRICS_ROUNDS = 16  # (c): rounds of one window per side (off on, on off, ...); crossover
METRICS_CONFIG: JSON = {"per_host": True}  # apps.http.metrics of the "on" Caddy
METRICS_READS = 5  # (c): reads of /metrics timed, with no traffic


def _ticks(pid: int) -> float:
    """CPU seconds (user + system) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Load:
    """The child process with the backends and the clients."""

    def __init__(self, port: int) -> None:
        ips = ",".join([*IPS, *ROLL_IPS])
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.spread_load", ips, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        ready = self._read()
        assert ready.get("event") == "ready", ready

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load process ended early")
        result: dict[str, Any] = json.loads(line)
        return result

    def start(self, port: int, hosts: list[str], seconds: float) -> None:
        assert self.process.stdin is not None
        command = {"load": {"port": port, "hosts": hosts, "clients": CLIENTS, "seconds": seconds}}
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    async def result(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._read)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            assert self.process.stdin is not None
            self.process.stdin.write(json.dumps({"quit": True}) + "\n")
            self.process.stdin.flush()
            self.process.wait(10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def _variant(
    variant: str, pools: int, port: int, caddy: BenchCaddy
) -> AsyncIterator[tuple[Any, SyntheticSource, TimedAdmin]]:
    static = variant in ("static", "whole-config")
    upstreams = "static" if static else "dynamic"
    settings = bench_settings(caddy, upstreams, **SETTINGS_OF.get(variant, {}))
    source = SyntheticSource(pools_of(pools, MEMBERS, IPS, port))
    inner = CaddyAdmin(caddy.admin_url, timeout=120.0)
    admin: TimedAdmin
    if variant == "whole-config":
        admin = WholeConfigAdmin(inner, caddy.base_config())
    else:
        admin = TimedAdmin(inner)
    try:
        async with labelsync(settings, source, admin, run_loop=False) as ls:
            if variant == "all-dynamic" and ls.membership is not None:
                ls.membership.budget.size = 1_000_000  # no budget: every pool via DNS
            result = await ls.reconciler.sync_once()
            if not result.ok:
                raise RuntimeError(f"initial sync failed: {ls.reconciler.state.last_error}")
            yield ls, source, admin
    finally:
        await inner.aclose()


ROUNDS = 3  # windows per variant, interleaved: A B C D A B C D ... (the machine drifts)


async def _window(
    variant: str, ls: Any, caddy: BenchCaddy, hosts: list[str], seconds: float, load: Load
) -> dict[str, Any]:
    resolver = ls.membership.resolver if ls.membership is not None else None
    queries = resolver.queries if resolver else 0
    srv = resolver.pool_queries if resolver else 0
    assert caddy.pid is not None
    caddy_cpu, own_cpu, wall = _ticks(caddy.pid), time.process_time(), time.monotonic()
    load.start(caddy.http_port, hosts, seconds)
    result = await load.result()
    result["wall"] = time.monotonic() - wall
    result["own_cpu"] = time.process_time() - own_cpu
    result["caddy_cpu"] = _ticks(caddy.pid) - caddy_cpu
    result["dns"] = (resolver.queries - queries) if resolver else 0
    result["srv"] = (resolver.pool_queries - srv) if resolver else 0
    return result


def _combine(windows: list[dict[str, Any]], pools: int, json_pools: int, dynamic: bool) -> JSON:
    requests = max(1, sum(w["requests"] for w in windows))
    wall = sum(w["wall"] for w in windows)
    return {
        "windows": len(windows),
        "requests": requests,
        "failed": sum(w["failed"] for w in windows),
        "stale_connection_retries": sum(w["stale_connection_retries"] for w in windows),
        # Medians over the interleaved windows: one slow window (a neighbour's burst on
        # the shared cores) does not decide a ratio.
        "requests_per_second": median([w["requests_per_second"] for w in windows]),
        "requests_per_second_each": [w["requests_per_second"] for w in windows],
        "latency_ms": {
            key: median([w["latency_ms"].get(key, math.nan) for w in windows])
            for key in ("p50", "p95", "p99", "max")
        },
        "dns_questions": sum(w["dns"] for w in windows),
        "srv_questions": sum(w["srv"] for w in windows),
        "dns_per_request": round(sum(w["dns"] for w in windows) / requests, 4),
        "srv_per_request": round(sum(w["srv"] for w in windows) / requests, 4),
        "labelsync_cpu_percent": round(100 * sum(w["own_cpu"] for w in windows) / wall, 1),
        "caddy_cpu_percent": round(100 * sum(w["caddy_cpu"] for w in windows) / wall, 1),
        "pools_via_resolver": pools - json_pools if dynamic else 0,
    }


async def _steady(pools: int, seconds: float, port: int, load: Load) -> dict[str, Any]:
    """Every variant set up side by side, then `ROUNDS` interleaved windows of traffic."""
    hosts = [pool_host(i) for i in range(pools)]
    async with contextlib.AsyncExitStack() as stack:
        running: dict[str, tuple[Any, BenchCaddy]] = {}
        for variant in VARIANTS:
            caddy = await stack.enter_async_context(running_caddy(f"busy-{variant}-{pools}"))
            ls, _source, _admin = await stack.enter_async_context(
                _variant(variant, pools, port, caddy)
            )
            running[variant] = (ls, caddy)
            # Warm up: every pool answered once (dynamic: Caddy holds an answer for it).
            load.start(caddy.http_port, hosts, 1.0)
            await load.result()
        windows: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
        for _ in range(ROUNDS):
            for variant, (ls, caddy) in running.items():
                windows[variant].append(
                    await _window(variant, ls, caddy, hosts, seconds / ROUNDS, load)
                )
        return {
            variant: _combine(
                windows[variant],
                pools,
                len(ls.reconciler.json_pools),
                ls.membership is not None,
            )
            for variant, (ls, _caddy) in running.items()
        }


def _series(text: str, name: str) -> tuple[int, int]:
    """(samples of metric `name`, distinct `host` labels among them) in a /metrics text."""
    samples, hosts = 0, set()
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            samples += 1
            labels = line.split("{", 1)[1].split("}", 1)[0] if "{" in line else ""
            for label in labels.split(","):
                if label.startswith('host="'):
                    hosts.add(label)
    return samples, len(hosts)


async def _metrics_state(caddy: BenchCaddy) -> dict[str, Any]:
    """What Caddy's config holds at apps/http/metrics, and the request counters it exports."""
    config = await asyncio.to_thread(caddy.get_config, "apps/http/metrics")
    text = (await asyncio.to_thread(caddy.admin, "GET", "/metrics")).text
    samples, hosts = _series(text, "caddy_http_requests_total")
    return {"config": config, "requests_total_series": samples, "hosts": hosts}


async def _read_cost(caddy: BenchCaddy) -> dict[str, Any]:
    """One GET /metrics, `METRICS_READS` times with no traffic: bytes, Caddy's answer
    time and CPU, and the CPU of parsing it into metric families (prometheus_client)."""
    assert caddy.pid is not None
    walls, parses, sizes, samples = [], [], [], 0
    caddy_cpu = _ticks(caddy.pid)
    for _ in range(METRICS_READS):
        started = time.perf_counter()
        text = (await asyncio.to_thread(caddy.admin, "GET", "/metrics")).text
        walls.append((time.perf_counter() - started) * 1000)
        sizes.append(len(text.encode()))
        parse_started = time.process_time()
        samples = sum(len(f.samples) for f in text_string_to_metric_families(text))
        parses.append((time.process_time() - parse_started) * 1000)
    caddy_cpu = _ticks(caddy.pid) - caddy_cpu  # the reads only: nothing else runs now
    return {
        "reads": METRICS_READS,
        "bytes": int(median(sizes)),
        "samples": samples,
        "answer_ms": round(median(walls), 1),
        "caddy_cpu_ms": round(1000 * caddy_cpu / METRICS_READS, 1),
        "parse_cpu_ms": round(median(parses), 1),
    }


def _overhead(on: float, off: float) -> float:
    """How much "on" differs from "off", in % of "off"."""
    return round(100 * (on - off) / off, 1) if off else math.nan


async def _set_metrics(caddy: BenchCaddy, on: bool) -> None:
    """Caddy's metrics on or off (a config load: Caddy's counters start from 0)."""
    method, body = ("PUT", METRICS_CONFIG) if on else ("DELETE", None)
    await asyncio.to_thread(caddy.admin, method, "/config/apps/http/metrics", body)


async def _metrics_cost(pools: int, seconds: float, port: int, load: Load) -> dict[str, Any]:
    """(c) Caddy's metrics off and on, side by side, `METRICS_ROUNDS` rounds of one window
    each (order off on, on off, ...); halfway the two Caddys swap (crossover), so that
    whatever differs between two Caddy processes other than the metrics cancels out."""
    hosts = [pool_host(i) for i in range(pools)]
    async with contextlib.AsyncExitStack() as stack:
        caddys: list[tuple[Any, BenchCaddy]] = []
        for name in ("a", "b"):
            caddy = await stack.enter_async_context(running_caddy(f"busy-metrics-{name}-{pools}"))
            ls, _source, _admin = await stack.enter_async_context(
                _variant("dynamic", pools, port, caddy)
            )
            caddys.append((ls, caddy))
        windows: dict[str, list[dict[str, Any]]] = {"off": [], "on": []}
        states: list[dict[str, Any]] = []
        window = seconds / ROUNDS  # as long as a window of (a)
        halves = (METRICS_ROUNDS + 1) // 2, METRICS_ROUNDS // 2
        for half, rounds in enumerate(halves):
            running = {"off": caddys[half], "on": caddys[1 - half]}
            await _set_metrics(running["on"][1], True)
            if half:
                await _set_metrics(running["off"][1], False)
            for _ls, caddy in running.values():  # warm up; "on": every host's series
                load.start(caddy.http_port, hosts, 1.0)
                await load.result()
            state = {side: await _metrics_state(caddy) for side, (_ls, caddy) in running.items()}
            on, off = state["on"], state["off"]
            if on["config"] != METRICS_CONFIG or on["hosts"] < min(pools, 100):
                raise RuntimeError(f"Caddy's metrics are not on in the 'on' Caddy: {on}")
            if off["requests_total_series"]:
                raise RuntimeError(f"Caddy's metrics are on in the 'off' Caddy: {off}")
            states.append(state)
            for round_ in range(rounds):
                for side in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                    ls, caddy = running[side]
                    windows[side].append(await _window(side, ls, caddy, hosts, window, load))
        result: dict[str, Any] = {
            side: _combine(windows[side], pools, len(caddys[0][0].reconciler.json_pools), True)
            for side in ("off", "on")
        }
        for side in ("off", "on"):
            cpu = sum(w["caddy_cpu"] for w in windows[side])
            result[side]["caddy_cpu_us_per_request"] = round(
                1e6 * cpu / max(1, sum(w["requests"] for w in windows[side])), 1
            )
        # A round's two windows are next to each other: the cost of each round is free of
        # the drift between rounds, and its median is the figure.
        pairs = list(zip(windows["off"], windows["on"], strict=True))
        rate = [-_overhead(b["requests_per_second"], a["requests_per_second"]) for a, b in pairs]
        p99 = [
            _overhead(b["latency_ms"].get("p99", math.nan), a["latency_ms"].get("p99", math.nan))
            for a, b in pairs
        ]
        cpu_per_request = [
            _overhead(
                b["caddy_cpu"] / max(1, b["requests"]), a["caddy_cpu"] / max(1, a["requests"])
            )
            for a, b in pairs
        ]
        result["cost_percent"] = {
            # Positive: "on" costs (fewer requests/s, a longer p99, more Caddy CPU each).
            "requests_per_second": round(median(rate), 1),
            "p99": round(median(p99), 1),
            "caddy_cpu_per_request": round(median(cpu_per_request), 1),
            "requests_per_second_each_round": rate,
            "p99_each_round": p99,
            "caddy_cpu_per_request_each_round": cpu_per_request,
            # The same from the medians of each side (not paired).
            "requests_per_second_of_medians": -_overhead(
                result["on"]["requests_per_second"], result["off"]["requests_per_second"]
            ),
            "p99_of_medians": _overhead(
                result["on"]["latency_ms"]["p99"], result["off"]["latency_ms"]["p99"]
            ),
        }
        result["state"] = states
        result["read"] = await _read_cost(running["on"][1])
        off_text = (await asyncio.to_thread(running["off"][1].admin, "GET", "/metrics")).text
        result["read"]["bytes_when_off"] = len(off_text.encode())
        return result


async def _roll(variant: str, seconds: float, port: int, load: Load) -> dict[str, Any]:
    async with (
        running_caddy(f"busy-roll-{variant}") as caddy,
        _variant(variant, ROLL_POOLS, port, caddy) as (ls, source, admin),
    ):
        if ls.membership is not None:
            ls.membership.budget.hold = HOLD
        hosts = [pool_host(i) for i in range(ROLL_POOLS)]
        load.start(caddy.http_port, hosts, min(2.0, seconds))
        await load.result()
        writes = len(admin.writes)
        load.start(caddy.http_port, hosts, seconds)
        started = time.monotonic()
        await asyncio.sleep(STEP_PAUSE)
        rolled = pool_host(0)
        for step, ip in enumerate(ROLL_IPS):
            new = synthetic_container(f"p0-roll{step}", rolled, ip, port, order=step)
            source.containers.append(new)
            await ls.reconciler.sync_once()
            await asyncio.sleep(STEP_PAUSE)
            old = next(c for c in source.containers if c.name == f"p0-m{step}")
            source.containers.remove(old)
            await ls.reconciler.sync_once()
            await asyncio.sleep(STEP_PAUSE)
        if ls.membership is not None:  # quiet for HOLD: the pool goes back into the JSON
            await asyncio.sleep(max(0.0, HOLD + 0.1 - STEP_PAUSE))
            await ls.reconciler.sync_once()
        roll_seconds = time.monotonic() - started
        result = await load.result()
    return {
        **result,
        "admin_writes": len(admin.writes) - writes,
        "roll_seconds": round(roll_seconds, 2),
        "steps": 2 * len(ROLL_IPS),
    }


async def run(sizes: tuple[int, ...], seconds: float, log: Any) -> dict[str, Any]:
    from tests.support.caddy import free_port

    port = free_port()
    load = Load(port)
    results: dict[str, Any] = {"sizes": list(sizes), "seconds": seconds, "clients": CLIENTS}
    try:
        for pools in sizes:
            log(f"busy pools: {pools} pools, {', '.join(VARIANTS)}, {seconds:g} s of traffic each")
            results[str(pools)] = await _steady(pools, seconds, port, load)
        metrics_sizes = [pools for pools in sizes if pools in METRICS_SIZES]
        metrics: dict[str, Any] = {"sizes": metrics_sizes, "rounds": METRICS_ROUNDS}
        for pools in metrics_sizes:
            log(f"busy pools: {pools} pools, Caddy's metrics off vs on, {METRICS_ROUNDS} rounds")
            metrics[str(pools)] = await _metrics_cost(pools, seconds, port, load)
        results["metrics"] = metrics
        roll: dict[str, Any] = {"pools": ROLL_POOLS, "hold_seconds": HOLD}
        for variant in ROLL_VARIANTS:
            log(f"busy pools: rolling one pool among {ROLL_POOLS}, {variant}")
            roll[variant] = await _roll(variant, max(seconds, 6.0), port, load)
        results["roll"] = roll
    finally:
        await asyncio.to_thread(load.close)
    return results
