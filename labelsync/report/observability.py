"""What a running daemon tells the outside: the state file, metrics, and systemd.

    view = LiveView(reconcilers, settings=settings, health=membership)
    observability = Observability(view, state_file=path, metrics_listen=..., readers=...)
    for reconciler in reconcilers:
        reconciler.observers.extend(observability.observers)
    await observability.start()     # after the reconcilers exist, before they run
    ...
    await observability.aclose()    # on the way out

It watches the loop (events, syncs) and the membership's health flips, marks the live
view changed, and turns the snapshot into: the state file `labelsync status` reads, the
metrics and `/healthz` endpoint when `LABELSYNC_METRICS_LISTEN` is set, and systemd's
READY=1 after the first successful sync, STATUS= on every state change, WATCHDOG=1 pings.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from loguru import logger

from labelsync.core.events import DockerEvent
from labelsync.core.outcomes import SyncResult
from labelsync.report.metrics import CaddyReader, Metrics
from labelsync.report.sdnotify import SystemdNotifier
from labelsync.report.snapshot import LiveView
from labelsync.report.state_file import StateFileWriter
from labelsync.report.views import Snapshot

STATE_REFRESH = 1.0  # seconds between checks for changes no event announces (first verdicts)


def status_line(snapshot: Snapshot) -> str:
    """One line for systemd's STATUS=: what is wrong, or what is served."""
    error = snapshot.last_error
    if not snapshot.docker_up:
        return "Docker unreachable; Caddy keeps its config" + (f" ({error})" if error else "")
    if not snapshot.synced:
        return "starting: first sync pending" + (f" ({error})" if error else "")
    if not snapshot.caddy_up:
        return f"Caddy unreachable; retrying ({error})"
    if not snapshot.last_apply_ok:
        return f"applying to Caddy failed; retrying ({error})"
    line = (
        f"in sync: {len(snapshot.pools)} pool(s), {snapshot.members} member(s), "
        f"{snapshot.problem_count} label problem(s)"
    )
    out = [engine.name for engine in snapshot.engines_out]
    if out:
        line += f"; Docker engine(s) out: {', '.join(out)} (last listing kept)"
    return line


class Observability:
    """State file, metrics endpoint and systemd notifications of one running daemon."""

    def __init__(
        self,
        view: LiveView,
        *,
        state_file: Path,
        metrics_listen: str | None = None,
        readers: Sequence[CaddyReader] = (),
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.view = view
        self.notifier = notifier or SystemdNotifier(None)
        self.state_file = StateFileWriter(state_file, view.snapshot)
        self.metrics_listen = metrics_listen
        self.metrics = Metrics(view, readers) if metrics_listen else None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def observers(self) -> list[Observability | Metrics]:
        """What watches the loop's events and syncs."""
        return [self] if self.metrics is None else [self, self.metrics]

    async def start(self) -> None:
        """Bind the metrics endpoint (ConfigError when it cannot) and start watching."""
        if self.metrics is not None and self.metrics_listen:
            await self.metrics.start(self.metrics_listen)
        if self.view.health is not None:
            self.view.health.on_health_change.append(self._health_changed)
        self.notifier.status("starting: first sync pending")
        self.state_file.write_now()
        logger.debug(f"state file {self.state_file.path}")
        self._tasks = [
            asyncio.create_task(self._ready_after_first_sync(), name="systemd-ready"),
            asyncio.create_task(self._refresh_state_file(), name="state-file"),
        ]
        if self.notifier.watchdog_interval is not None:
            self._tasks.append(asyncio.create_task(self._watchdog(), name="systemd-watchdog"))

    async def aclose(self) -> None:
        self.notifier.stopping()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.metrics is not None:
            await self.metrics.aclose()
        self.state_file.remove()

    # -- observer of the loop ------------------------------------------------------------------
    def on_event(self, event: DockerEvent) -> None:
        container = event.container_id[:12] if event.container_id else None
        logger.bind(event=event.action or event.kind.value, container=container).debug(
            f"Docker {event.kind} event {event.action}".rstrip()
        )
        if event.kind.is_connection:
            # Reconciler marks Docker up/down right after its observers: look next turn.
            asyncio.get_running_loop().call_soon(self._state_changed)

    def on_sync(self, result: SyncResult, seconds: float, latency: float | None) -> None:
        self._state_changed()

    def _health_changed(self, pool_id: str, address: str, healthy: bool, reason: str) -> None:
        self.view.changed()
        self.state_file.request()

    def _state_changed(self) -> None:
        self.view.changed()
        self.state_file.request()
        self.notifier.status(status_line(self.view.snapshot()))

    # -- tasks ---------------------------------------------------------------------------------
    async def _ready_after_first_sync(self) -> None:
        await asyncio.gather(*(loop.state.synced.wait() for loop in self.view.loops))
        self.view.changed()
        self.notifier.ready(status_line(self.view.snapshot()))
        if self.notifier.enabled:
            logger.debug("first sync done: sent READY=1 to systemd")

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        assert interval is not None
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _refresh_state_file(self) -> None:
        while True:
            await asyncio.sleep(STATE_REFRESH)
            try:
                # A check's first verdict or a new failure reason announces nothing.
                self.view.changed()
                self.state_file.write_if_changed()
            except Exception:  # a bug here must not end the refreshes
                logger.opt(exception=True).error("state file: refresh failed")
