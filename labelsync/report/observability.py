"""What a running daemon tells the outside: the state file, metrics, and systemd.

    observability = Observability(settings, reconcilers, endpoints, membership, notifier)
    await observability.start()     # after the reconcilers exist, before they run
    ...
    await observability.aclose()    # on the way out

It watches the loop through `Reconciler.observers` (events, syncs) and the membership's
health flips, and turns them into: the state file `labelsync status` reads, the metrics
and `/healthz` endpoint when `LABELSYNC_METRICS_LISTEN` is set, and systemd's READY=1 after
the first successful sync, STATUS= on every state change, WATCHDOG=1 pings.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from loguru import logger

from labelsync.report.metrics import Metrics
from labelsync.report.sdnotify import SystemdNotifier
from labelsync.report.state_file import StateFileWriter, daemon_state, state_file_path

if TYPE_CHECKING:
    from labelsync.loop.reconcile import MembershipChannel, Reconciler, SyncState
    from labelsync.settings import Settings
    from labelsync.sources.docker import DockerEvent

STATE_REFRESH = 1.0  # seconds between checks for changes no event announces (first verdicts)


def status_line(states: Sequence[SyncState]) -> str:
    """One line for systemd's STATUS=: what is wrong, or what is served."""
    error = next((s.last_error for s in states if s.last_error), None)
    if not all(s.docker_up for s in states):
        return "Docker unreachable; Caddy keeps its config" + (f" ({error})" if error else "")
    if not all(s.synced.is_set() for s in states):
        return "starting: first sync pending" + (f" ({error})" if error else "")
    if not all(s.caddy_up for s in states):
        return f"Caddy unreachable; retrying ({error})"
    if not all(s.last_apply_ok for s in states):
        return f"applying to Caddy failed; retrying ({error})"
    desired = states[0].desired if states else None
    pools = desired.pools if desired is not None else ()
    members = sum(len(p.members) for p in pools)
    problems = len(desired.problems) if desired is not None else 0
    return f"in sync: {len(pools)} pool(s), {members} member(s), {problems} label problem(s)"


class Observability:
    """State file, metrics endpoint and systemd notifications of one running daemon."""

    def __init__(
        self,
        settings: Settings,
        reconcilers: Sequence[Reconciler],
        endpoints: Sequence[str],
        membership: MembershipChannel | None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.reconcilers = list(reconcilers)
        self.endpoints = list(endpoints)
        self.membership = membership
        self.notifier = notifier or SystemdNotifier(None)
        self.started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.state_file = StateFileWriter(state_file_path(settings), self.snapshot)
        checker = getattr(membership, "checker", None)
        self.metrics: Metrics | None = None
        if settings.metrics_listen:
            probes = (lambda: int(checker.probes)) if checker is not None else None
            self.metrics = Metrics(self.reconcilers, self.snapshot, probes=probes)
        self._tasks: list[asyncio.Task[None]] = []

    def snapshot(self) -> dict[str, Any]:
        """The daemon's state as the state file holds it."""
        checker = getattr(self.membership, "checker", None)
        return daemon_state(
            self.reconcilers[0].settings if self.reconcilers else self.settings,
            [r.state for r in self.reconcilers],
            self.endpoints,
            health=checker.states() if checker is not None else None,
            started_at=self.started_at,
        )

    async def start(self) -> None:
        """Bind the metrics endpoint (ConfigError when it cannot) and start watching."""
        if self.metrics is not None and self.settings.metrics_listen:
            await self.metrics.start(self.settings.metrics_listen)
        for reconciler in self.reconcilers:
            reconciler.observers.append(self)
            if self.metrics is not None:
                reconciler.observers.append(self.metrics)
        listeners = getattr(self.membership, "on_health_change", None)
        if isinstance(listeners, list):
            listeners.append(self._health_changed)
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
        logger.bind(event=event.action or event.kind, container=container).debug(
            f"Docker {event.kind} event {event.action}".rstrip()
        )
        if event.kind.startswith("stream-"):
            # Reconciler marks Docker up/down right after its observers: look next turn.
            asyncio.get_running_loop().call_soon(self._state_changed)

    def on_sync(self, result: str, seconds: float, latency: float | None) -> None:
        self._state_changed()

    def _health_changed(self, pool_id: str, address: str, healthy: bool, reason: str) -> None:
        self.state_file.request()

    def _state_changed(self) -> None:
        self.state_file.request()
        self.notifier.status(status_line([r.state for r in self.reconcilers]))

    # -- tasks ---------------------------------------------------------------------------------
    async def _ready_after_first_sync(self) -> None:
        await asyncio.gather(*(r.state.synced.wait() for r in self.reconcilers))
        self.notifier.ready(status_line([r.state for r in self.reconcilers]))
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
                self.state_file.write_if_changed()
            except Exception:  # a bug here must not end the refreshes
                logger.opt(exception=True).error("state file: refresh failed")
