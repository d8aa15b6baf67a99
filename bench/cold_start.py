"""Scenario 4, cold start at scale (synthetic records, real Caddy).

labelsync's loop runs in a subprocess (`cold_start_child`) over 2000 synthetic
containers in 1000 pools, against a fresh Caddy whose server has no routes. Measured:
process start -> Caddy answered the write holding every route (interpreter start and
imports included), the same from the loop's start, and the peak RSS of the process
(VmHWM) after a second, steady-state sync.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from tests.support.daemon import free_udp_port

from .rig import running_caddy
from .stats import summary

VARIANTS = ("dynamic", "static")
TIMEOUT = 180.0


async def _one(upstreams: str, containers: int, pools: int, rep: int) -> dict[str, float]:
    async with running_caddy(f"cold-{upstreams}-{rep}") as caddy:
        spawned = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.cold_start_child",
            caddy.admin_url,
            str(caddy.http_port),
            str(free_udp_port()),
            upstreams,
            str(containers),
            str(pools),
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            first = json.loads(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))
            seen_by_parent = time.monotonic() - spawned
            second = json.loads(await asyncio.wait_for(process.stdout.readline(), TIMEOUT))
            await asyncio.wait_for(process.wait(), TIMEOUT)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        routes = await asyncio.to_thread(caddy.routes)
        if len(routes) != pools:
            raise RuntimeError(f"cold start {upstreams}: Caddy holds {len(routes)} routes")
    return {
        "spawn_to_written_s": seen_by_parent,
        "start_to_written_s": first["start_to_written_s"],
        "loop_to_written_s": first["loop_to_written_s"],
        "import_s": first["import_s"],
        "admin_requests": first["admin_requests"],
        "bytes_sent": first["bytes_sent"],
        "peak_rss_mb": second["peak_rss_mb"],
    }


async def run(containers: int, pools: int, reps: int, log: Any) -> dict[str, Any]:
    results: dict[str, Any] = {"containers": containers, "pools": pools, "reps": reps}
    for upstreams in VARIANTS:
        samples = []
        for rep in range(reps):
            samples.append(await _one(upstreams, containers, pools, rep))
            log(
                f"cold start {upstreams} #{rep + 1}: {samples[-1]['spawn_to_written_s']:.2f} s, "
                f"{samples[-1]['peak_rss_mb']:.0f} MB"
            )
        results[upstreams] = {key: summary([s[key] for s in samples]) for key in samples[0]}
    return results
