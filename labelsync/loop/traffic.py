"""Caddy's request counters into labelsync's running totals (`core/traffic.py`'s book).

One `TrafficSampler` per Caddy endpoint, on an admin client of its own (its requests
are not the loop's, and count in none of its figures):

- `sample()`, every `SAMPLE_INTERVAL` (`sample_forever`): reads `apps.http.metrics`
  (whether Caddy counts per host, and what to change if not); turns per-host counting
  on when labelsync is to (`turn_on`: `LABELSYNC_CADDY_METRICS=on` for an external
  Caddy, once the first sync is done, merged with what is there; the bundled Caddy
  has it in its base config); then reads `/metrics` into the book.
- `before_write()`, the writer's hook (`loop/writer.py`): every admin write restarts
  Caddy's counters, so they are read right before each write labelsync makes. Only the
  read holds the write back: the text is parsed while the write is on its way.

Reads of one Caddy never overlap, and are folded into the book in the order they were
made: a counter read earlier never arrives after one read later.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

from loguru import logger

from labelsync.core.caddy_metrics import (
    MetricsState,
    how_to_count,
    metrics_state,
    read_http_counts,
    with_per_host,
)
from labelsync.core.traffic import SAMPLE_INTERVAL, CaddyCounting, TrafficBook
from labelsync.errors import CaddyError
from labelsync.loop.ports import MetricsReader

TURNS_ON = (MetricsState.OFF, MetricsState.NOT_PER_HOST)


class TrafficSampler:
    """Reads one Caddy's request counters into `book`.

        sampler = TrafficSampler(CaddyAdmin(endpoint), book, server="labelsync")
        reconciler = Reconciler(..., before_write=sampler.before_write)
        await sample_forever([sampler], book)

    `server`: the Caddy server whose counts are labelsync's; `turn_on`: write per-host
    metrics into Caddy's config when they are off, once `ready()` (the first sync done);
    `bundled`: the Caddy is labelsync's own (for what the page says to change).
    """

    def __init__(
        self,
        reader: MetricsReader,
        book: TrafficBook,
        *,
        server: str,
        turn_on: bool = False,
        bundled: bool = False,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.reader = reader
        self.book = book
        self.server = server
        self.turn_on = turn_on
        self.bundled = bundled
        self.ready = ready
        self.state = MetricsState.UNKNOWN
        self._lock = asyncio.Lock()
        self._unread: deque[tuple[str, float]] = deque()  # texts read, not yet folded

    async def before_write(self) -> None:
        """Read the counters now: the write about to be sent restarts them."""
        if self.state is MetricsState.ON:
            await self._read()

    async def sample(self) -> None:
        """Whether Caddy counts per host (turned on if labelsync is to), and its counts."""
        try:
            state = metrics_state(await self.reader.http_metrics())
        except CaddyError as exc:
            logger.debug(f"traffic: cannot read Caddy's metrics config: {exc}")
            state = MetricsState.UNKNOWN
        if state in TURNS_ON and self.turn_on and self.ready():
            state = await self._turn_on(state)
        self.state = state
        self.book.set_counting(
            self.reader.endpoint, CaddyCounting(state, how_to_count(state, bundled=self.bundled))
        )
        if state is MetricsState.ON:
            await self._read()
        self._fold()

    async def _turn_on(self, state: MetricsState) -> MetricsState:
        """Write per-host metrics into Caddy's config, kept what is there; the state now."""
        try:
            current = await self.reader.http_metrics()
            config = with_per_host(current)
            await self.reader.set_http_metrics(config, replace=current is not None)
        except CaddyError as exc:
            logger.warning(
                f"could not turn on per-host request metrics in the Caddy at "
                f"{self.reader.endpoint} (LABELSYNC_CADDY_METRICS=on): {exc}; trying again"
            )
            return state
        logger.info(
            f"turned on per-host request metrics in the Caddy at {self.reader.endpoint} "
            f"(LABELSYNC_CADDY_METRICS=on): apps.http.metrics = {config}"
        )
        return MetricsState.ON

    async def _read(self) -> None:
        """Read `/metrics`; the text is folded into the book soon after, in order."""
        async with self._lock:
            try:
                text = await self.reader.metrics_text()
            except CaddyError as exc:
                logger.debug(f"traffic: cannot read Caddy's /metrics: {exc}")
                return
            self._unread.append((text, time.time()))
        asyncio.get_running_loop().call_soon(self._fold)

    def _fold(self) -> None:
        while self._unread:
            text, at = self._unread.popleft()
            reading = read_http_counts(text, self.server)
            self.book.fold(self.reader.endpoint, reading, at=at)


async def sample_forever(samplers: Sequence[TrafficSampler], book: TrafficBook) -> None:
    """Read every Caddy each `SAMPLE_INTERVAL`, then close the book's interval."""
    deadline = time.monotonic()
    while True:
        try:
            for sampler in samplers:
                await sampler.sample()
            book.tick(time.monotonic())
        except Exception:  # a bug here must not end the counting, nor the daemon
            logger.opt(exception=True).error("traffic: reading Caddy's counters failed")
        deadline = max(deadline + SAMPLE_INTERVAL, time.monotonic())
        await asyncio.sleep(deadline - time.monotonic())
