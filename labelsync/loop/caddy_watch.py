"""Notice a restarted or emptied Caddy within a second, not at the next resync.

A Caddy that restarts (a crash, `docker compose restart caddy`, an image upgrade)
comes back with only its own config, and answers 200 with an empty body for every
host labelsync routes: monitors see "up". The resync (every minute) would restore the
routes eventually; this watch makes it a second.

Every `WATCH_INTERVAL` one route that Caddy held at the last read or write is asked
for by its `@id` (`GET /id/<id>`: one small route, never the whole config). A 404
means the route is gone, whoever removed it; an admin API that answers again after
it did not may have restarted. Either schedules a verifying sync, which re-reads the
server and writes what is missing. A route that was never in Caddy (none yet, or one
Caddy refused) is never probed, so a probe that keeps failing does not keep the loop
busy.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from loguru import logger

from labelsync.errors import CaddyError, CaddyUnavailable
from labelsync.loop.ports import CaddyWriter

WATCH_INTERVAL = 0.5  # seconds between probes: routes are back ≤ 2 s after a restart


class Watched(Protocol):
    """The part of the loop the watch needs."""

    @property
    def caddy(self) -> CaddyWriter: ...

    def probe_route_id(self) -> str | None: ...

    def verify_next(self) -> None: ...


async def watch_caddy(loop: Watched, interval: float = WATCH_INTERVAL) -> None:
    """Probe until cancelled; schedule a verifying sync when Caddy lost our routes."""
    reachable = True
    while True:
        await asyncio.sleep(interval)
        route_id = loop.probe_route_id()
        if route_id is None:
            continue
        try:
            present = await loop.caddy.has_id(route_id)
        except CaddyUnavailable:
            reachable = False
            continue
        except CaddyError as exc:  # an answer, but not one we understand: leave it to resync
            logger.debug(f"Caddy watch: {exc}")
            continue
        if not reachable:
            logger.info("Caddy's admin API answers again; checking its routes")
        elif not present:
            logger.warning(
                f"route {route_id} is gone from Caddy (restarted or edited); restoring the routes"
            )
        if not reachable or not present:
            loop.verify_next()
        reachable = True
