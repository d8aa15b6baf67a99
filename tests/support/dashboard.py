"""A Dashboard serving a fixed report, for tests that drive the page in a browser."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from labelsync.report.dashboard import Dashboard


@contextlib.contextmanager
def dashboard_serving(report: dict[str, Any]) -> Iterator[int]:
    """A Dashboard serving `report`, on an event loop in a thread of its own (the test
    blocks while it talks to the browser); its port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def gather() -> dict[str, Any]:
        return report

    async def start() -> Dashboard:
        dashboard = Dashboard(gather)
        assert await dashboard.start("127.0.0.1:0")
        return dashboard

    dashboard = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    try:
        assert dashboard.bound_port is not None
        yield dashboard.bound_port
    finally:
        asyncio.run_coroutine_threadsafe(dashboard.aclose(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()
