"""Watching Caddy route: poll a host through Caddy until the expected backend answers."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Callable

from .rawhttp import HttpConnection, Response

POLL_INTERVAL = 0.002


async def poll_until(
    port: int,
    host: str,
    accept: Callable[[Response], bool],
    *,
    timeout: float = 10.0,
    interval: float = POLL_INTERVAL,
    path: str = "/",
) -> int | None:
    """time_ns at which the first accepted answer was read; None after `timeout`.

    One keep-alive connection to Caddy on 127.0.0.1:`port`, a request every `interval`
    (plus the request's own time). Failed requests just count as "not yet".
    """
    connection = HttpConnection("127.0.0.1", port, timeout=2.0)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                response = await connection.get(host, path)
            except (ConnectionError, TimeoutError, ValueError):
                await asyncio.sleep(interval)
                continue
            if accept(response):
                return response.done_ns
            await asyncio.sleep(interval)
        return None
    finally:
        await connection.close()


def answered_by(name: str) -> Callable[[Response], bool]:
    return lambda response: response.status == 200 and response.backend == name


class Traffic:
    """Steady requests to one host through Caddy (one every ~`interval`), all recorded.

    A live pool is under traffic: Caddy then holds a cached answer for it, and a change
    becomes visible at the pool's next refresh, at a random phase. Polling only around a
    change would refresh the cache just before it and measure a constant instead.
    """

    def __init__(self, port: int, host: str, *, interval: float = POLL_INTERVAL) -> None:
        self.port = port
        self.host = host
        self.interval = interval
        self.answers: list[tuple[int, int, str | None]] = []  # (done_ns, status, backend)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Traffic:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        connection = HttpConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            while True:
                try:
                    response = await connection.get(self.host)
                except (ConnectionError, TimeoutError, ValueError):
                    self.answers.append((time.time_ns(), 0, None))
                else:
                    self.answers.append((response.done_ns, response.status, response.backend))
                await asyncio.sleep(self.interval)
        finally:
            await connection.close()

    def first(self, after_ns: int, accept: Callable[[int, str | None], bool]) -> int | None:
        """done_ns of the first answer read after `after_ns` that `accept(status, backend)`."""
        start = bisect.bisect_right(self.answers, after_ns, key=lambda answer: answer[0])
        for done_ns, status, backend in self.answers[start:]:
            if accept(status, backend):
                return done_ns
        return None

    async def wait_first(
        self, after_ns: int, accept: Callable[[int, str | None], bool], timeout: float = 20.0
    ) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.first(after_ns, accept)
            if found is not None:
                return found
            await asyncio.sleep(0.02)
        return None
