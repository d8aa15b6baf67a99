"""The loop: Docker events -> debounce -> snapshot -> core -> diff -> apply.

Everything between the snapshot and the admin requests is the pure core, and how the
routes get into Caddy is `writer.py`'s; this module only decides *when* to run them
and what to do when an edge is unavailable:

- bursts coalesce: a quiet window of `debounce`, never longer than `debounce_max`;
  inside a burst of writes, or while the containers a listing showed as created keep
  starting, longer ones; a member Caddy holds that leaves never waits (`coalesce.py`);
- a container leaves on the first of kill/stop/die/pause/destroy, before Docker's
  listing says so, and membership is re-published at once (no debounce); a container
  that joins (start, unpause, a health status) is published after one listing, also
  without the debounce (the debounced sync still writes Caddy's config);
- past `LABELSYNC_DYNAMIC_BUDGET` pools, the membership channel says which pools
  carry their members in the JSON (membership/budget.py), and a sync is scheduled for
  when a pool leaves the budget;
- Docker unreachable: nothing is written; on reconnect everything is re-listed;
- Caddy unreachable or busy: retried with capped backoff (a stale ETag or a vanished
  @id is re-read and re-diffed by the writer, so someone else's change is neither
  overwritten nor lost);
- Caddy refused a write: the writer finds the routes to blame and quarantines them
  (held back until their labels change) while every other change is written; this
  module logs one ERROR each; a refusal no single route explains holds the whole write
  back until the routes change or the next resync (`_refused_write`);
- every `resync_interval` the owned routes are compared with Caddy's, which restores
  a restarted or drifted Caddy;
- on exit, the fallback lists of dynamic routes get the members last published
  (`refresh_fallbacks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from labelsync.caddy.operations import DeleteRoute, Operation, describe_operations
from labelsync.caddy.render import RenderMemo, render_routes
from labelsync.core.changes import describe_changes
from labelsync.core.events import DockerEvent, EventKind
from labelsync.core.model import ContainerInfo, DesiredState, Problem, Route
from labelsync.core.outcomes import SyncResult
from labelsync.core.pools import ParseMemo
from labelsync.errors import CaddyError, CaddyRefused, CaddyUnavailable, DockerUnavailable
from labelsync.loop.build import build_from_settings, render_options
from labelsync.loop.caddy_watch import watch_caddy
from labelsync.loop.coalesce import Coalescer
from labelsync.loop.ports import (
    CaddyWriter,
    ContainerSource,
    MembershipPublisher,
    StaticRoutes,
    SyncObserver,
)
from labelsync.loop.quarantine import describe_refusal
from labelsync.loop.writer import RouteWriter
from labelsync.report.logs import log_problems
from labelsync.settings import Settings

LEAVE_ACTIONS = frozenset({"kill", "stop", "die", "pause", "destroy"})
JOIN_ACTIONS = frozenset({"start", "unpause"})
CADDY_BACKOFF = (0.25, 10.0)


@dataclass
class SyncState:
    """What the loop knows; read by status, metrics and /healthz."""

    docker_up: bool = False
    caddy_up: bool = False
    last_apply_ok: bool = False
    last_error: str | None = None
    applies: int = 0
    admin_writes: int = 0
    desired: DesiredState | None = None
    containers: tuple[ContainerInfo, ...] = ()
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    refused: dict[str, str] = field(default_factory=dict)  # quarantined pool id -> why


class Reconciler:
    """Keeps the routes labelsync owns in one Caddy equal to what the labels say.

    The edges come in as ports (`loop.ports`); several reconcilers, one per Caddy, may
    share one source and one static file (`loop.fanout`).
    """

    def __init__(
        self,
        settings: Settings,
        docker: ContainerSource,
        caddy: CaddyWriter,
        *,
        static: StaticRoutes | None = None,
        membership: MembershipPublisher | None = None,
        before_write: Callable[[], Awaitable[None]] | None = None,
        unlisted: Callable[[], tuple[str, ...]] | None = None,
    ) -> None:
        """`before_write` is awaited right before each admin write (writer.py).
        `unlisted`: the Docker engines not listed yet since the start (sources/engines.py):
        while any is, no route Caddy holds is deleted (they may be its pools)."""
        self.docker = docker
        self.caddy = caddy
        # How the routes get into Caddy (writer.py); what Caddy holds, as far as known.
        self._writer = RouteWriter(
            settings, caddy, notify=self.notify, on_write=self._wrote, before_write=before_write
        )
        self.settings = settings
        self.static = static
        self.membership = membership
        self.state = SyncState()
        self.observers: list[SyncObserver] = []
        self._dirty = asyncio.Event()
        self._first_event: float | None = None  # wall-clock seconds of the oldest pending event
        self._leaving: set[str] = set()
        self._written_members: frozenset[str] = frozenset()  # ids of members Caddy holds
        self._in_caddy: frozenset[str] = frozenset()  # ids of the pools whose routes it holds
        # The incremental core: a sync re-parses, rebuilds and renders only what changed.
        self._parsed = ParseMemo()
        self._rendered = RenderMemo()
        self._verify = True
        self._logged_problems: frozenset[Problem] = frozenset()
        self._caddy_backoff = CADDY_BACKOFF[0]
        self._retry_handle: asyncio.TimerHandle | None = None
        self._refused_routes: list[dict[str, Any]] | None = None  # held back until they change
        # Dynamic mode past the budget: the pools whose members the JSON carries, as
        # last rendered (`refresh_fallbacks` renders the same).
        self.json_pools: frozenset[str] = frozenset()
        # The last membership handed to the resolver (a sync, a fast leave or join):
        # what the fallback lists must match on the way out.
        self._published: DesiredState | None = None
        self._budget_handle: asyncio.TimerHandle | None = None
        self._coalescer = Coalescer(settings.debounce_seconds, settings.debounce_max_seconds)
        self._joining: asyncio.Task[None] | None = None  # see `_publish_joins_soon`
        self._join_again = False
        self._publications = 0  # membership publishes by syncs and joins
        self._unlisted = unlisted or tuple
        self._kept_for: tuple[str, ...] = ()  # the engines routes were last kept for

    @property
    def settings(self) -> Settings:
        """The settings; SIGHUP replaces them, and the writer reads the new ones too."""
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings
        self._writer.settings = settings

    def _wrote(self) -> None:
        self.state.admin_writes += 1

    # --- signals in -------------------------------------------------------------------
    def notify(self, *, event_time: float | None = None) -> None:
        """Something may have changed: schedule a sync after the debounce window."""
        if self._first_event is None:
            self._first_event = event_time if event_time is not None else time.time()
        self._dirty.set()

    def handle_event(self, event: DockerEvent) -> None:
        """React to one Docker event."""
        for observer in self.observers:
            observer.on_event(event)
        event_time = event.time_ns / 1e9 if event.time_ns else None
        if event.kind is EventKind.STREAM_DOWN:
            self.state.docker_up = False
            logger.warning("Docker event stream lost; Caddy stays as it is until it is back")
            return
        if event.kind in (EventKind.STREAM_UP, EventKind.ENGINE_UP):
            self.state.docker_up = True
            self._forget_leaves(event.engine)
            self.verify_next()
            return
        if event.kind is EventKind.ENGINE_DOWN:
            return  # its containers keep their state (sources/engines.py); others carry on
        action = event.verb
        # A member Caddy holds that leaves is written out at once (in static mode Caddy
        # sends it requests until then); other containers come and go without hurry.
        holds = event.container_id in self._written_members
        if event.container_id and action in LEAVE_ACTIONS:
            self._coalescer.urgent |= holds
            if event.container_id not in self._leaving:
                self._leaving.add(event.container_id)
                self._publish_fast()
        elif event.container_id and (action in JOIN_ACTIONS or action == "health_status"):
            if event.action.endswith("unhealthy"):
                self._coalescer.urgent |= holds  # a failing member leaves, as on a stop
            self._coalescer.arrived(event.container_id, time.monotonic())
            self._leaving.discard(event.container_id)
            self._publish_joins_soon()
        self.notify(event_time=event_time)

    def _keep_held(self) -> bool:
        """Whether a Docker engine was never listed: its pools are unknown, so the routes
        Caddy holds stay (a Docker outage changes nothing in Caddy). Said once a change."""
        unlisted = self._unlisted()
        if unlisted != self._kept_for:
            self._kept_for = unlisted
            if unlisted:
                logger.warning(
                    f"Docker engine(s) {', '.join(unlisted)} not listed yet: the routes Caddy "
                    "holds stay until they answer, those of pools no listed engine has too"
                )
            else:
                logger.info("every Docker engine listed: routes of gone pools may go now")
        return bool(unlisted)

    def _forget_leaves(self, engine: str | None) -> None:
        """After a reconnect, trust the listing over the leave events seen before it: a
        container that left and started again meanwhile (an engine restart brings back
        those with a restart policy before its stream is read) sent its start unseen."""
        if engine is None:
            self._leaving.clear()
            return
        self._leaving -= {c.id for c in self.state.containers if c.engine == engine}

    def _publish_joins_soon(self) -> None:
        """Publish a joining container to the resolver after one listing, without waiting
        for the debounce (the debounced sync still follows, for Caddy's config).

        Joins, like leaves, then reach Caddy at its next refresh of the pool. A burst of
        starts shares the listings: one runs at a time, and one more after it when
        events came in meanwhile.
        """
        if self.membership is None:
            return
        if self._joining is not None:
            self._join_again = True
            return
        self._joining = asyncio.get_running_loop().create_task(self._publish_joins())

    async def _publish_joins(self) -> None:
        try:
            while True:
                self._join_again = False
                published = self._publications
                try:
                    containers = tuple(await self.docker.snapshot())
                except DockerUnavailable:
                    return  # the debounced sync reports it
                # A sync that published meanwhile saw at least as much: leave it at that.
                if self.membership is not None and published == self._publications:
                    self.state.containers = containers
                    self._publish(self._build(containers), fresh=True)
                if not self._join_again:
                    return
        finally:
            self._joining = None

    def _publish_fast(self) -> None:
        """Withdraw leaving containers from the resolver now, from the last snapshot."""
        if self.membership is None or not self.state.containers:
            return
        self._publish(self._build(self.state.containers), fresh=False)

    def routes_of(self, container: ContainerInfo, *, shape_only: bool = False) -> tuple[Route, ...]:
        """The routes `container`'s labels give (from the parse memo: no re-parse);
        `shape_only` for a container not running (no address needed)."""
        routes, _ = self._parsed.parse(
            container,
            prefix=self.settings.label_prefix,
            default_network=self.settings.network,
            shape_only=shape_only,
        )
        return tuple(routes)

    # --- the core, once ---------------------------------------------------------------
    def _build(self, containers: tuple[ContainerInfo, ...]) -> DesiredState:
        static = self.static
        desired = build_from_settings(
            self.settings,
            [*containers, *(static.containers if static else ())],
            withdrawn=self._leaving,
            memo=self._parsed,
        )
        if static is not None:
            # The file's problems, in its terms, in place of the build's restatement.
            desired = DesiredState(desired.pools, static.merge_problems(desired.problems))
        return desired

    async def sync_once(self) -> SyncResult:
        """Snapshot, build, apply; what came of it (nothing changes unless it is ok)."""
        first_event, self._first_event = self._first_event, None
        listed_at = time.monotonic()
        containers = await self._list()
        if containers is None:
            return SyncResult.DOCKER_UNAVAILABLE
        desired = self._build(containers)
        self._coalescer.expect(
            (c.id for c in containers if _about_to_join(c) and self.routes_of(c, shape_only=True)),
            listed_at,
        )
        self._log_new_problems(desired.problems)
        rendered, json_pools = desired, frozenset[str]()
        if self.membership is not None:
            self._publish(desired, fresh=True)
            rendered, json_pools, next_change = self.membership.channels(desired, time.monotonic())
            self._schedule_budget_sync(next_change)
        options = render_options(self.settings, json_pools)
        routes = render_routes(rendered, options, memo=self._rendered)
        if routes == self._refused_routes and not self._verify:
            return SyncResult.CADDY_REFUSED  # the same content would be refused again
        verify, self._verify = self._verify, False
        try:
            awaiting = [pool.id for pool in rendered.pools if pool.awaiting_start]
            operations = await self._writer.apply(
                routes, verify=verify, awaiting=awaiting, keep_held_routes=self._keep_held()
            )
        except CaddyRefused as exc:
            return self._refused_write(routes, exc)
        except CaddyError as exc:  # temporary: the same write may succeed later
            return self._failed_write(exc, first_event)
        quarantined = self._applied(desired, json_pools, operations, first_event)
        if quarantined:
            return SyncResult.CADDY_REFUSED  # applied, but for the routes just quarantined
        return SyncResult.APPLIED if operations else SyncResult.UNCHANGED

    async def _list(self) -> tuple[ContainerInfo, ...] | None:
        """Docker's containers now (kept in the state), or None while Docker is away."""
        try:
            containers = tuple(await self.docker.snapshot())
        except DockerUnavailable as exc:
            if self.state.docker_up or self.state.last_error != str(exc):
                logger.warning(f"{exc}; Caddy stays as it is until Docker answers")
            self.state.docker_up = False
            self.state.last_error = str(exc)
            return None
        self.state.docker_up = True
        if self._leaving:
            self._leaving &= {c.id for c in containers}
        self.state.containers = containers
        return containers

    def _publish(self, desired: DesiredState, *, fresh: bool) -> None:
        """Hand `desired` to the resolver. `fresh`: built from a listing taken now, which
        a join listing started earlier must not overwrite (`_publish_joins` counts them);
        a leave is published from the last listing, so it is not counted."""
        assert self.membership is not None
        self._published = desired
        self.membership.publish(desired)
        if fresh:
            self._publications += 1

    def _failed_write(self, exc: CaddyError, first_event: float | None) -> SyncResult:
        """A write that may succeed later: retried on backoff."""
        self.state.caddy_up = not isinstance(exc, CaddyUnavailable)
        self.state.last_apply_ok = False
        self.state.last_error = str(exc)
        logger.error(f"applying to Caddy failed: {exc}; retrying in {self._caddy_backoff}s")
        self._schedule_retry(first_event)
        return SyncResult.CADDY_FAILED

    def _applied(
        self,
        desired: DesiredState,
        json_pools: frozenset[str],
        operations: list[Operation],
        first_event: float | None,
    ) -> bool:
        """Record a write that went through (or had nothing to do) and log what it
        wrote; True when routes were just quarantined."""
        self._caddy_backoff = CADDY_BACKOFF[0]
        self._refused_routes = None
        quarantined = self._log_refusals(desired) > 0
        self.state.refused = {
            h.route_id: h.error.body or str(h.error) for h in self._writer.quarantine.held
        }
        self.state.caddy_up = True
        # A quarantined route is the labels' fault, told like a label problem: the
        # sync itself succeeded (healthz stays green; Caddy serves everything else).
        self.state.last_apply_ok = True
        self.state.last_error = None
        changes = describe_changes(self.state.desired, desired, self._in_caddy) + _stale_removals(
            self.state.desired, operations
        )
        if changes:
            self._writer.pools_changed()
        self.state.desired = desired
        self._written_members = frozenset(m.container_id for p in desired.pools for m in p.members)
        # A pool waiting for its first start keeps the route Caddy holds, or has none.
        self._in_caddy = frozenset(
            p.id for p in desired.pools if not p.awaiting_start or p.id in self._in_caddy
        )
        self.json_pools = json_pools
        if changes or operations:
            latency = time.time() - first_event if first_event is not None else None
            took = f" in {latency * 1000:.0f} ms" if latency is not None else ""
            what = "; ".join(changes or self._unexplained(operations, desired, json_pools))
            if len(self._writer.quarantine):
                held = ", ".join(h.route_id for h in self._writer.quarantine.held)
                what += f" (held back, refused by Caddy: {held})"
            logger.bind(writes=len(operations)).info(
                f"applied: {what} ({len(operations)} admin operation(s)){took}"
            )
            self.state.applies += 1
        self.state.synced.set()
        return quarantined

    def _unexplained(
        self, operations: list[Operation], desired: DesiredState, json_pools: frozenset[str]
    ) -> list[str]:
        """Words for a write no pool change explains: the operations themselves."""
        if self.membership is None:
            return describe_operations(operations, frozenset())
        dynamic = frozenset(pool.id for pool in desired.pools) - json_pools
        return describe_operations(operations, dynamic)

    def _refused_write(self, routes: list[dict[str, Any]], exc: CaddyRefused) -> SyncResult:
        """Caddy refused a write of `routes`: what to do about it.

        Sending the same content again gets the same answer, so it is held back (no
        backoff retries) until the routes change or a check is due (resync, SIGHUP, a
        restarted Caddy); one ERROR per refused content. Caddy keeps serving its old
        config. Only for refusals no single route explains (see `RouteWriter.apply`); a
        route to blame is quarantined instead.
        """
        again = routes == self._refused_routes
        self._refused_routes = routes
        self.state.caddy_up = True
        self.state.last_apply_ok = False
        self.state.last_error = str(exc)
        if again:
            logger.warning(f"Caddy still refuses the routes: {exc}")
        else:
            logger.error(
                f"Caddy refused the routes: {exc}; Caddy keeps its old config, and these "
                "routes are sent again when they change or at the next resync "
                f"({self.settings.resync_interval})"
            )
        return SyncResult.CADDY_REFUSED

    def _log_refusals(self, desired: DesiredState) -> int:
        """One ERROR per newly quarantined route, naming containers, label and reason;
        how many."""
        refusals = self._writer.take_refusals()
        for held in refusals:
            logger.bind(pool=held.route_id).error(
                describe_refusal(held, desired, self.state.containers, self.settings.label_prefix)
            )
        return len(refusals)

    def _log_new_problems(self, problems: tuple[Problem, ...]) -> None:
        current = frozenset(problems)
        log_problems(p for p in problems if p not in self._logged_problems)
        self._logged_problems = current

    def probe_route_id(self) -> str | None:
        """An owned route Caddy held at our last read or write (for `watch_caddy`)."""
        return self._writer.probe_route_id()

    def retry_refused(self) -> None:
        """Forget the quarantine: the next sync sends the refused routes again (SIGHUP)."""
        self._writer.quarantine.clear()
        self._refused_routes = None

    def verify_next(self) -> None:
        """Read Caddy on the next sync even if nothing is to be written (drift, restarts)."""
        self._verify = True
        self.notify()

    async def refresh_fallbacks(self) -> int:
        """Write current members as the fallback of dynamic routes; the writes sent.

        For shutdown: afterwards Caddy cannot reach the resolver and dials the fallback.
        The members are those last published to the resolver: a join or leave published
        without the debounce may not have had its sync yet.
        """
        desired = self._published or self.state.desired
        if desired is None or self.settings.upstreams != "dynamic":
            return 0
        # The freshest view (joins and leaves are published between syncs, and the
        # fallback lists may have been left for later, coalesce.py). Pools outside the
        # dynamic budget render without dynamic upstreams: left alone.
        routes = render_routes(desired, render_options(self.settings, self.json_pools))
        return await self._writer.refresh_fallbacks(routes)

    async def read_back_done(self) -> None:
        """Wait for the read that follows a write (tests: no admin request in flight)."""
        await self._writer.read_back_done()

    @property
    def retry_pending(self) -> bool:
        """A backoff retry of a failed sync is scheduled."""
        return self._retry_handle is not None

    def close(self) -> None:
        """Cancel a pending retry (the loop's tasks end with `run`'s cancellation)."""
        if self._retry_handle is not None:
            self._retry_handle.cancel()
            self._retry_handle = None
        if self._budget_handle is not None:
            self._budget_handle.cancel()
            self._budget_handle = None
        if self._joining is not None:
            self._joining.cancel()
        self._writer.close()

    def _schedule_budget_sync(self, when: float | None) -> None:
        """A sync when a pool of the dynamic budget has been quiet long enough to leave
        it (its members go back into the JSON): no event would cause one."""
        if self._budget_handle is not None:
            self._budget_handle.cancel()
            self._budget_handle = None
        if when is not None:
            delay = max(0.0, when - time.monotonic()) + 0.01
            self._budget_handle = asyncio.get_running_loop().call_later(delay, self.notify)

    def _schedule_retry(self, first_event: float | None) -> None:
        delay = self._caddy_backoff
        self._caddy_backoff = min(self._caddy_backoff * 2, CADDY_BACKOFF[1])
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        loop = asyncio.get_running_loop()
        self._retry_handle = loop.call_later(delay, self._retry, first_event)

    def _retry(self, first_event: float | None) -> None:
        self._retry_handle = None
        self.notify(event_time=first_event)

    # --- the loops --------------------------------------------------------------------
    async def _debounced_syncs(self) -> None:
        coalescer = self._coalescer
        while True:
            await self._dirty.wait()
            started = time.monotonic()
            coalescer.quiet = self.settings.debounce_seconds
            coalescer.longest = self.settings.debounce_max_seconds
            while True:
                self._dirty.clear()
                # Recomputed each time: a leave (`urgent`) or the last expected start
                # makes a burst's wait short.
                quiet, longest = coalescer.windows(started, time.monotonic())
                remaining = started + longest - time.monotonic()
                if remaining <= 0:
                    break
                # Not asyncio.wait_for: on Python 3.11 it swallows a cancellation that
                # arrives just after an event set `_dirty`, and this loop then never ends
                # (a stop during a burst of events hung on shutdown).
                try:
                    async with asyncio.timeout(min(quiet, remaining)):
                        await self._dirty.wait()
                except TimeoutError:
                    break
            self._dirty.clear()
            writes = self.state.admin_writes
            await self._observed_sync()
            coalescer.synced(time.monotonic(), wrote=self.state.admin_writes > writes)

    async def _observed_sync(self) -> None:
        """`sync_once`, timed and reported to the observers."""
        first_event = self._first_event
        started = time.monotonic()
        result = await self.sync_once()
        seconds = time.monotonic() - started
        latency = time.time() - first_event if result.ok and first_event is not None else None
        for observer in self.observers:
            observer.on_sync(result, seconds, latency)

    async def _events(self) -> None:
        async for event in self.docker.events():
            self.handle_event(event)

    async def _resyncs(self) -> None:
        while True:
            await asyncio.sleep(self.settings.resync_seconds)
            self.verify_next()

    async def _static_changes(self) -> None:
        assert self.static is not None
        async for _ in self.static.changes():
            logger.info(f"static file {self.static.path} changed")
            self.notify()

    async def run(self) -> None:
        """Run until cancelled."""
        if self.static is not None:
            self.static.reload()
        self.notify()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._debounced_syncs())
            tasks.create_task(self._events())
            tasks.create_task(self._resyncs())
            tasks.create_task(watch_caddy(self))
            if self.static is not None:
                tasks.create_task(self._static_changes())


def _about_to_join(container: ContainerInfo) -> bool:
    """Created and not started yet, or started with its first health check to come."""
    if container.state == "created":
        return True
    return container.state == "running" and container.health == "starting"


def _stale_removals(old: DesiredState | None, operations: list[Operation]) -> list[str]:
    """Routes deleted that no earlier build had: found in Caddy at start-up (a static file
    no longer configured, a container removed while labelsync was away) or drift."""
    if not any(isinstance(op, DeleteRoute) for op in operations):
        return []
    known = {pool.id for pool in old.pools} if old is not None else set()
    return [
        f"route {op.route_id} removed (in Caddy, but nothing labelled gives it now)"
        for op in operations
        if isinstance(op, DeleteRoute) and op.route_id not in known
    ]
