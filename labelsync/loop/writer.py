"""How labelsync's routes get into one Caddy server; the loop (`reconcile.py`) says when.

`RouteWriter.apply` makes the routes labelsync owns in the server equal to the routes
rendered, with as few admin requests as it can:

- what Caddy held after the last read or write tells whether there is anything to
  write; only then (and when a check is due) is the server read, for its ETag and for
  drift, so a membership change in dynamic mode sends no admin request;
- a write's answer carries no ETag: the server is read again right after it, outside
  the sync that needs it (`_read_back`), or not at all while the ETag Caddy gives the
  routes written is predicted right (`caddy/etag.py`);
- a stale ETag or a vanished @id (someone else wrote meanwhile) re-reads and re-diffs,
  so their change is neither overwritten nor lost;
- a write of fallback lists alone waits for the pools to settle (`coalesce.py`), or
  goes with the next write;
- Caddy refused a write: the routes to blame are found by bisection and quarantined
  while every other change is written (`quarantine.py`); a refusal no single route
  explains is raised to the loop;
- a missing server is created as the listen plan says;
- right before each write, `before_write` runs (the daemon reads Caddy's request
  counters then: a write restarts them, `loop/traffic.py`);
- on exit, the fallback lists of dynamic routes are brought up to date
  (`refresh_fallbacks`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any, NamedTuple

from loguru import logger

from labelsync.caddy.diff import adopt_equal, diff_routes, owned_routes, refresh_fallbacks
from labelsync.caddy.etag import EtagPredictor, etag_path
from labelsync.caddy.listen import for_caddy_http_port, listen_plan, port_mismatch
from labelsync.caddy.operations import Operation, apply_operations
from labelsync.errors import CaddyConflict, CaddyError, CaddyNotFound, CaddyRefused
from labelsync.loop.coalesce import BURST_LONGEST, FILL_DELAY, only_fallbacks_differ
from labelsync.loop.ports import CaddyWriter
from labelsync.loop.quarantine import (
    Held,
    MakeTarget,
    Quarantine,
    isolate,
    keep_held,
    revert,
    suspects,
)
from labelsync.settings import Settings

CONFLICT_RETRIES = 5


class _ServerRead(NamedTuple):
    """The server as read (or as predicted after our write)."""

    routes: list[dict[str, Any]]
    etag: str | None


class _Plan(NamedTuple):
    """A write worked out already: Caddy's routes as known, the routes to write over
    them, and the operations between."""

    current: list[dict[str, Any]]
    target: list[dict[str, Any]]
    operations: list[Operation]


class _Refusal(NamedTuple):
    """Caddy refused a write: its error, the routes it held and the target it refused."""

    error: CaddyRefused
    current: list[dict[str, Any]]
    target: list[dict[str, Any]]


def _plan_write(make: MakeTarget, current: list[dict[str, Any]], planned: _Plan | None) -> _Plan:
    """What to write over `current` (Caddy's routes): `planned` when it was worked out
    from these very routes, else `make(current)` and the diff to it."""
    if planned is not None and current is planned.current:
        # The read after our last write found what it left: diffed already.
        return planned
    target = make(current)
    # Routes Caddy holds equal to desired ones become those very objects: this diff,
    # the next ones, and the adoption after the write compare them by identity (one
    # deep comparison per read, not three).
    current = adopt_equal(current, target)
    return _Plan(current, target, diff_routes(current, target))


class RouteWriter:
    """Writes the routes labelsync owns into the server `settings.caddy_server`.

        writer = RouteWriter(settings, caddy, notify=loop.notify, on_write=count)
        operations = await writer.apply(routes, verify=False)  # or CaddyError
        for held in writer.take_refusals(): ...  # routes just quarantined

    `notify` asks the loop for a sync (fallback lists left out are due); `on_write`
    is called for each write Caddy accepted; `before_write` is awaited right before
    each write is sent.
    """

    def __init__(
        self,
        settings: Settings,
        caddy: CaddyWriter,
        *,
        notify: Callable[[], None],
        on_write: Callable[[], None],
        before_write: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self.caddy = caddy
        self._notify = notify
        self._on_write = on_write
        self._before_write = before_write
        self.quarantine = Quarantine()  # single routes Caddy refused
        self._new_refusals: list[Held] = []
        self._known_routes: list[dict[str, Any]] | None = None  # the server's, as last seen
        # The server read right after our last write (`_read_back`): the next write's
        # routes and ETag, read and parsed outside the sync that needs them.
        self._read_back_task: asyncio.Task[_ServerRead | None] | None = None
        # Or, while the prediction held at the last read, no read: the routes the last
        # write left and the ETag Caddy gives them (`caddy/etag.py`).
        self._etags = EtagPredictor()
        self._predicted: _ServerRead | None = None
        self._predicting = False  # the last read's ETag was the one predicted
        self._server_rest: dict[str, Any] = {}  # the server as last read, but its routes
        self._etag_path: str | None = None  # the config path its ETag names
        self._fill_handle: asyncio.TimerHandle | None = None
        self._fill_due = False  # the next write may carry fallback lists alone
        self._fill_since = 0.0
        self._last_change = 0.0  # when a sync last changed what labelsync wants

    async def apply(
        self,
        routes: list[dict[str, Any]],
        *,
        verify: bool,
        awaiting: Collection[str] = (),
        keep_held_routes: bool = False,
    ) -> list[Operation]:
        """Write `routes` but the quarantined ones; the operations sent.

        `verify`: read Caddy even if nothing is to be written (drift, restarts).
        `awaiting`: the ids of pools waiting for their first start (`Pool.awaiting_start`):
        their routes stay as Caddy holds them, or out. `keep_held_routes`: the listing
        misses an engine (never listed yet): no route Caddy holds is deleted. Raises
        `CaddyRefused` for a refusal no single route explains (the routes to blame are
        quarantined instead: `take_refusals`), a `CaddyTemporary` for anything that may
        succeed later.
        """
        # What Caddy held after our last read or write tells whether there is anything to
        # write; only then (and when a check is due) is the server read, for its ETag and
        # for drift. A membership change in dynamic mode thus sends no admin request.
        for route_id in self.quarantine.release_changed(routes):
            logger.info(f"route {route_id} changed since Caddy refused it; trying it again")

        def hold_back(current: list[dict[str, Any]]) -> list[dict[str, Any]]:
            wanted = revert(current, self.quarantine.hold_back(current, routes), awaiting)
            return keep_held(current, wanted) if keep_held_routes else wanted

        known = self._known_routes
        if verify:
            self._forget_read_back()  # a check reads Caddy as it is now
        planned: _Plan | None = None
        if not verify and known is not None:
            wanted = hold_back(known)
            operations = diff_routes(known, wanted)
            if not operations:
                return []
            if not self._fill_due and only_fallbacks_differ(known, wanted):
                self._fill_fallbacks_later()  # they serve nobody while labelsync runs
                return []
            planned = _Plan(known, wanted, operations)
        self._known_routes = None
        written: list[Operation] = []
        refusal = await self._write(hold_back, written, planned)
        if refusal is None:
            return written
        error = refusal.error
        suspected = suspects(refusal.current, refusal.target)
        if len(suspected) > 1:
            refused = await isolate(
                lambda make: self._write_refusal(make, written), refusal.target, suspected, error
            )
        else:
            refused = dict.fromkeys(suspected, error)
        if not refused:
            raise error
        by_id = {str(route["@id"]): route for route in routes}
        for route_id, route_error in refused.items():
            self._new_refusals.append(self.quarantine.hold(by_id[route_id], route_error))
        # Whatever the refused write held besides the suspects (deletions, member lists).
        again = await self._write(hold_back, written)
        if again is not None:
            raise again.error
        return written

    def take_refusals(self) -> list[Held]:
        """The routes quarantined since the last call."""
        refusals, self._new_refusals = self._new_refusals, []
        return refusals

    def pools_changed(self) -> None:
        """What labelsync wants changed: fallback lists left out wait on (`FILL_DELAY`)."""
        self._last_change = time.monotonic()

    def probe_route_id(self) -> str | None:
        """An owned route Caddy held at our last read or write (for `watch_caddy`)."""
        owned = owned_routes(self._known_routes or [])
        return str(owned[0]["@id"]) if owned else None

    def _fill_fallbacks_later(self) -> None:
        """Write the fallback lists once labelsync's pools have not changed for
        `FILL_DELAY` (at most `BURST_LONGEST` after the first one was left out)."""
        if self._fill_handle is not None:
            return
        self._fill_since = time.monotonic()
        self._fill_handle = asyncio.get_running_loop().call_later(FILL_DELAY, self._fill_now)

    def _fill_now(self) -> None:
        now = time.monotonic()
        active = now - self._last_change < FILL_DELAY
        if active and now - self._fill_since < BURST_LONGEST:
            self._fill_handle = asyncio.get_running_loop().call_later(FILL_DELAY, self._fill_now)
            return
        self._fill_handle = None
        self._fill_due = True
        self._notify()

    async def _write_refusal(
        self, make: MakeTarget, written: list[Operation]
    ) -> CaddyRefused | None:
        refusal = await self._write(make, written)
        return None if refusal is None else refusal.error

    async def _write(
        self,
        make: MakeTarget,
        written: list[Operation],
        planned: _Plan | None = None,
    ) -> _Refusal | None:
        """Write `make(Caddy's routes)`, re-reading on a stale ETag; the operations sent go
        into `written`. None when done; Caddy's refusal with the routes it held and the
        target it refused. `planned`: (routes, `make` of them, their diff) computed
        already, used when Caddy's routes are those very routes."""
        name = self.settings.caddy_server
        read_back, self._read_back_task = self._read_back_task, None
        predicted, self._predicted = self._predicted, None
        for _ in range(CONFLICT_RETRIES):
            read: _ServerRead | None
            if predicted is not None:
                read, predicted = predicted, None
            else:
                read = await read_back if read_back is not None else None
            read_back = None
            fresh = read is None  # read now: check the prediction against it
            if read is None:
                read = await self._read_now(name)
                if read is None:  # there was no server: created, read it again
                    continue
            # A read back or predicted is as good as reading now: If-Match tells if not.
            plan = _plan_write(make, read.routes, planned)
            planned = None
            if fresh:
                self._check_prediction(plan.current, read.etag)
            if not plan.operations:
                self._known_routes = plan.current
                return None
            await self._about_to_write()
            try:
                await self.caddy.apply(name, plan.current, plan.operations, read.etag)
            except (CaddyConflict, CaddyNotFound) as exc:
                # A stale ETag, or a route someone deleted meanwhile: read again, re-diff.
                logger.info(f"Caddy's config changed while we wrote ({exc.status}); re-reading")
                continue
            except CaddyRefused as exc:
                self._known_routes = plan.current
                return _Refusal(exc, plan.current, plan.target)
            self._note_accepted(name, plan)
            written.extend(plan.operations)
            return None
        raise CaddyConflict(f"config kept changing under us ({CONFLICT_RETRIES} tries)")

    async def _about_to_write(self) -> None:
        if self._before_write is not None:
            await self._before_write()

    async def _read_now(self, name: str) -> _ServerRead | None:
        """The server as Caddy holds it now; None when it did not exist (it is created
        as the listen plan says)."""
        server, etag = await self.caddy.server(name)
        if server is None:
            await self._create_server(name)
            return None
        routes = list(server.get("routes") or [])
        self._note_server(server, etag)
        return _ServerRead(routes, etag)

    def _note_accepted(self, name: str, plan: _Plan) -> None:
        """Caddy accepted `plan`: what it holds now, and its next ETag (predicted, or
        read back outside the sync)."""
        self._known_routes = adopt_equal(
            apply_operations(plan.current, plan.operations), plan.target
        )
        if self._predicting and self._etag_path is not None:
            etag = self._etags.etag(self._etag_path, self._server_rest, self._known_routes)
            self._predicted = _ServerRead(self._known_routes, etag)
        else:
            self._start_read_back(name, self._known_routes)
        self._on_write()
        self._fill_due = False

    def _start_read_back(self, name: str, expected: list[dict[str, Any]]) -> None:
        """Read the server again now that the write is answered (a write's answer carries
        no ETag), so that the next write need not read before it sends.

        The read is Caddy's config at its ETag like any other: if someone else edits the
        server in between, the next write's If-Match fails (412) and it reads again.
        """
        self._forget_read_back()
        task = asyncio.get_running_loop().create_task(self._read_back(name, expected))
        # A read nobody waits for (the loop stopped) ends quietly; the next write that
        # takes it gets its result or its error as if it had read itself.
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._read_back_task = task

    async def _read_back(self, name: str, expected: list[dict[str, Any]]) -> _ServerRead | None:
        try:
            server, etag = await self.caddy.server(name)
        except CaddyError:
            return None  # the next write reads for itself
        if server is None:
            return None
        self._note_server(server, etag)
        # Routes equal to what the write left become those objects (cheap diffs later);
        # when all are, the read is what the loop knows, and the very list it holds.
        routes = adopt_equal(list(server.get("routes") or []), expected)
        if len(routes) == len(expected) and all(
            a is b for a, b in zip(routes, expected, strict=True)
        ):
            routes = expected
        self._check_prediction(routes, etag)
        return _ServerRead(routes, etag)

    def _note_server(self, server: dict[str, Any], etag: str | None) -> None:
        """Keep what a prediction of the server's next ETag needs from a read of it."""
        self._server_rest = {key: value for key, value in server.items() if key != "routes"}
        self._etag_path = etag_path(etag) if etag else None

    def _check_prediction(self, routes: list[dict[str, Any]], etag: str | None) -> None:
        """Predict only while the prediction gives the ETag of what was just read."""
        path = self._etag_path
        self._predicting = (
            etag is not None
            and path is not None
            and self._etags.etag(path, self._server_rest, routes) == etag
        )

    def _forget_read_back(self) -> None:
        self._predicted = None
        task, self._read_back_task = self._read_back_task, None
        if task is not None:
            task.cancel()

    async def read_back_done(self) -> None:
        """Wait for the read that follows a write (tests: no admin request in flight)."""
        task = self._read_back_task
        if task is not None:
            await asyncio.wait([task])

    async def _create_server(self, name: str) -> None:
        """Create labelsync's server as the listen plan says; log where it listens."""
        wanted = listen_plan(self.settings)
        theirs, _ = await self.caddy.get("/config/apps/http/http_port")
        caddy_http_port = theirs if isinstance(theirs, int) else None
        plan = for_caddy_http_port(wanted, caddy_http_port)
        await self._about_to_write()
        if not await self.caddy.ensure_server(name, plan.server([])):
            return
        logger.info(f"created Caddy server {name!r}: {plan.describe()}")
        mismatch = port_mismatch(wanted, caddy_http_port)
        if mismatch:
            logger.warning(mismatch)

    async def refresh_fallbacks(self, routes: list[dict[str, Any]]) -> int:
        """Write the fallback member lists of `routes`' dynamic routes over Caddy's
        (nothing else); the writes sent."""
        name = self.settings.caddy_server
        server, etag = await self.caddy.server(name)
        if server is None:
            return 0
        current = list(server.get("routes") or [])
        operations = refresh_fallbacks(current, routes)
        if operations:
            await self._about_to_write()
            await self.caddy.apply(name, current, operations, etag)
            logger.info(
                f"wrote the current members of {len(operations)} pool(s) as Caddy's fallback"
            )
        return 1 if operations else 0

    def close(self) -> None:
        """Cancel a pending fill of fallback lists and the read after the last write."""
        if self._fill_handle is not None:
            self._fill_handle.cancel()
            self._fill_handle = None
        self._forget_read_back()
