"""How long a change waits before its sync: short when alone, long inside a burst.

Every admin write is a full Caddy reload (about 1 s at 1000 routes with active checks),
which also closes idle keep-alive connections and forgets passive health counts. A lone
change should reach Caddy at once (the `debounce` quiet window, 50 ms), but `docker
compose up` starts a stack at Docker's pace: on 2 cores 100 containers took 23-27 s,
with gaps between starts of up to 2.4 s, so no quiet window short enough for a lone
change tells the end of a stack from a pause inside it (a 0.5 s window still met
13-20 such gaps).

What does tell it: Docker lists a stack's containers as `created` before it starts
them, and one with a HEALTHCHECK as `starting` until its first check passes. Those are
*expected* members: the last listing names them (`expect`), and each `start` or
`healthy` event crosses one off (`arrived`). The first to arrive is written at once, as
a lone change; once two arrived within `EXPECTED_QUIET` of each other, the stack is
coming up: while more are expected and they keep arriving (the last within
`EXPECTED_QUIET`), the next sync waits for that much quiet, at most `BURST_LONGEST`;
when the last expected member arrives the wait is short again (a burst of writes
or not), so the stack is routable just after its last start. Containers created and
never started change nothing: a start beside them is a lone change, and they stop
counting once nothing arrives for `EXPECTED_QUIET`.

Without a listing that foresees them (`docker run` in a loop, containers started one by
one), the windows adapt to what the loop has just been doing. When the last two syncs
each wrote (within `BURST_WINDOW` of each other), a burst is under way: the next sync
waits for a quiet gap of `BURST_QUIET` (longer than most gaps between `docker run`s,
short enough that the burst is routable within a second of its end) and at most
`BURST_LONGEST` while changes keep coming. A change alone, or the second of two, still
gets the short window.

A member Caddy holds that leaves (kill, stop, die, pause, destroy, a health check that
fails) never waits (`urgent`, set by the loop): in static mode Caddy would keep sending
requests to it until the write, and passive health and retries only soften that. Its
sync carries whatever else was pending, and ends the burst (leaves never build one);
a stack still coming up keeps waiting for its next start. Containers of no pool that
stop are no reason to hurry.

In dynamic mode membership never waits for any of this: joins and leaves go to the
resolver at once; only new pool shapes wait. A dynamic pool is written at its first
start (`Pool.awaiting_start`: while its containers are only created, its route is held
back), so its route carries that member as its fallback list (for when labelsync is
away) and costs one write. Only a pool whose list is empty
(its containers had all stopped) still needs a fallback write when a member starts, and
that is not worth a write of its own (`only_fallbacks_differ`): it serves no request
while labelsync runs, and on SIGTERM labelsync mends any list that would not serve. It
is written once the pools have not changed for `FILL_DELAY` (at most `BURST_LONGEST`
after it was first left out), or with the next write. The price: a labelsync that
crashes (SIGKILL, no SIGTERM) within that delay leaves that pool's list empty, and the
pool unserved until labelsync is back.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from labelsync.caddy.diff import owned_routes
from labelsync.core.model import JSON
from labelsync.core.route_shape import without_fallback

BURST_WINDOW = 2.0  # seconds: writes this close together make a burst
BURST_QUIET = 0.5  # seconds of quiet that end a burst's wait
BURST_LONGEST = 15.0  # seconds a burst's changes wait at most while changes keep coming
EXPECTED_QUIET = 3.0  # seconds: longer than Docker's gaps between a stack's starts
FILL_DELAY = 2.0  # seconds of quiet syncs before fallback lists alone are written


@dataclass
class Coalescer:
    """The quiet window and the longest wait for the next sync.

    coalescer.expect(ids, listed_at)      # a listing: who is created, or starting
    coalescer.arrived(container_id, now)  # a start or healthy event
    quiet, longest = coalescer.windows(started, now)  # while changes wait
    ...                                   # the sync runs
    coalescer.synced(now, wrote=True)
    """

    quiet: float
    longest: float
    burst_quiet: float = BURST_QUIET
    burst_longest: float = BURST_LONGEST
    burst_window: float = BURST_WINDOW
    expected_quiet: float = EXPECTED_QUIET
    urgent: bool = False
    _syncs: deque[float] = field(default_factory=lambda: deque(maxlen=2))
    _expected: set[str] = field(default_factory=set)
    _arrivals: dict[str, float] = field(default_factory=dict)  # id -> when, since a listing
    _came: deque[float] = field(default_factory=lambda: deque(maxlen=2))  # expected arrivals
    _complete: float | None = None  # when the last member of a stack coming up arrived

    def in_burst(self, now: float) -> bool:
        """Two syncs that wrote within the burst window, the last one recent."""
        if len(self._syncs) < 2:
            return False
        first, last = self._syncs
        return last - first <= self.burst_window and now - last <= self.burst_window

    def expect(self, container_ids: Iterable[str], listed_at: float) -> None:
        """A listing started at `listed_at` found these containers about to join (created,
        or running with a health check still starting). Arrivals seen since it started
        are already in: the listing may predate them."""
        arrived = {cid for cid, when in self._arrivals.items() if when >= listed_at}
        self._expected = set(container_ids) - arrived
        self._arrivals = {cid: self._arrivals[cid] for cid in arrived}

    def arrived(self, container_id: str, now: float) -> None:
        """A container started or turned healthy at `now`."""
        self._arrivals[container_id] = now
        if container_id in self._expected:
            coming = self.awaiting(now)
            self._expected.discard(container_id)
            self._came.append(now)
            if coming and not self._expected:
                self._complete = now

    def awaiting(self, now: float) -> bool:
        """Expected members are still to come, and they are coming: the last two arrived
        within `expected_quiet` of each other and of `now` (the first start of a stack is
        a lone change, and so is a start beside containers created and left so)."""
        if not self._expected or len(self._came) < 2:
            return False
        first, last = self._came
        return last - first <= self.expected_quiet and now - last <= self.expected_quiet

    def _just_complete(self, now: float) -> bool:
        """The last expected member of a stack has just arrived: nothing more to wait for,
        burst or not."""
        if self._expected or self._complete is None:
            return False
        return now - self._complete <= self.expected_quiet

    def windows(self, started: float, now: float | None = None) -> tuple[float, float]:
        """(quiet window, longest wait) at `now` for a sync whose first change arrived
        at `started`."""
        now = started if now is None else now
        if self.urgent or self._just_complete(now):
            return self.quiet, self.longest
        awaiting = self.awaiting(now)
        if not awaiting and not self.in_burst(started):
            return self.quiet, self.longest
        quiet = max(self.quiet, self.expected_quiet if awaiting else self.burst_quiet)
        return quiet, max(self.longest, self.burst_longest)

    def synced(self, now: float, *, wrote: bool) -> None:
        """A sync ended at `now`; `wrote`: it wrote to Caddy. An urgent one ends a burst
        (leaves never build one)."""
        if self.urgent:
            self._syncs.clear()
        elif wrote:
            self._syncs.append(now)
        self.urgent = False


def only_fallbacks_differ(current: list[JSON], desired: list[JSON]) -> bool:
    """True when `desired` differs from `current` in dynamic routes' fallback lists only."""
    held = owned_routes(current)
    if len(held) != len(desired):
        return False
    differ = False
    for old, new in zip(held, desired, strict=True):
        if old is new or old == new:
            continue  # unchanged routes are mostly the very objects (`adopt_equal`)
        if without_fallback(old) != without_fallback(new):
            return False
        differ = True
    return differ
