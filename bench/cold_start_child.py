"""Scenario 4's subprocess: labelsync's loop over synthetic containers, from a cold start.

    python -m bench.cold_start_child ADMIN_URL HTTP_PORT RESOLVER_PORT UPSTREAMS CONTAINERS POOLS

Prints one JSON line once Caddy answered the write holding every route, and a second
one after a second (no-op) sync, with peak RSS; then exits. Nothing but labelsync's
own modules runs here, so the RSS is labelsync's.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import asyncio  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from pathlib import Path  # noqa: E402

from loguru import logger  # noqa: E402

from labelsync.caddy.admin import CaddyAdmin  # noqa: E402
from labelsync.core.events import STREAM_UP, DockerEvent  # noqa: E402
from labelsync.core.model import ContainerInfo  # noqa: E402
from labelsync.loop.reconcile import Reconciler  # noqa: E402
from labelsync.membership.channel import DynamicMembership  # noqa: E402
from labelsync.settings import Settings  # noqa: E402

IMPORTED = time.monotonic()
PREFIX = "lsbench"
IPS = ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5")


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _containers(count: int, pools: int) -> list[ContainerInfo]:
    return [
        ContainerInfo(
            id=f"{i:064x}",
            name=f"cold-{i}",
            created=1_700_000_000.0 + i,
            labels={f"{PREFIX}.host": f"pool{i % pools}.bench.test"},
            networks={"bench": IPS[(i // pools) % len(IPS)]},
            exposed_ports=(8080,),
        )
        for i in range(count)
    ]


class _Source:
    endpoint = "synthetic"

    def __init__(self, containers: list[ContainerInfo]) -> None:
        self.containers = containers

    async def snapshot(self) -> list[ContainerInfo]:
        return list(self.containers)

    async def events(self) -> AsyncIterator[DockerEvent]:
        yield STREAM_UP
        await asyncio.Event().wait()

    def close(self) -> None:
        pass


class _WritesTimed:
    """Notes when a sync wrote to Caddy."""

    def __init__(self, written: list[float]) -> None:
        self.written = written

    def on_event(self, event: object) -> None:
        pass

    def on_sync(self, result: str, seconds: float, latency: float | None) -> None:
        if result == "applied":
            self.written.append(time.monotonic())


def _report(**values: object) -> None:
    print(json.dumps(values), flush=True)


async def main(
    admin_url: str, http_port: int, resolver_port: int, upstreams: str, count: int, pools: int
) -> None:
    settings = Settings(
        caddy_admin=admin_url,
        caddy_server="labelsync",
        listen=f"127.0.0.1:{http_port}",
        auto_https="off",
        label_prefix=PREFIX,
        upstreams=upstreams,  # type: ignore[arg-type]
        resolver_listen=f"127.0.0.1:{resolver_port}",
    )
    source = _Source(_containers(count, pools))
    admin = CaddyAdmin(admin_url, timeout=120.0)
    written: list[float] = []

    membership = DynamicMembership.running(settings) if upstreams == "dynamic" else None
    async with membership if membership is not None else _nothing() as channel:
        reconciler = Reconciler(
            settings,
            source,
            admin,
            membership=channel,
        )
        reconciler.observers.append(_WritesTimed(written))
        loop_started = time.monotonic()
        task = asyncio.create_task(reconciler.run())
        await asyncio.wait_for(reconciler.state.synced.wait(), 120)
        synced = time.monotonic()
        _report(
            event="synced",
            routes=len(reconciler.state.desired.pools) if reconciler.state.desired else 0,
            import_s=IMPORTED - STARTED,
            loop_to_written_s=(written[0] if written else synced) - loop_started,
            start_to_written_s=(written[0] if written else synced) - STARTED,
            admin_requests=admin.requests_sent,
            bytes_sent=admin.bytes_sent,
            rss_mb=_peak_rss_mb(),
        )
        reconciler.state.synced.clear()
        reconciler.notify()  # a steady-state sync: read and diff everything once more
        await asyncio.wait_for(reconciler.state.synced.wait(), 120)
        _report(event="steady", peak_rss_mb=_peak_rss_mb())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await admin.aclose()


class _nothing:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *_exc: object) -> None:
        return None


if __name__ == "__main__":
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    admin_url, port, resolver_port, upstreams, count, pools = sys.argv[1:7]
    asyncio.run(main(admin_url, int(port), int(resolver_port), upstreams, int(count), int(pools)))
