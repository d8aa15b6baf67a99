"""How long a change waits before its sync: short when alone, long inside a burst.

Every admin write is a full Caddy reload (about 1 s at 1000 routes with active checks).
A lone change should reach Caddy at once (the `debounce` quiet window, 50 ms), but
`docker compose up` starts a stack at Docker's pace, 3-10 containers a second: the
gaps are wider than 50 ms, so a fixed window wrote once per new pool (and the
`debounce_max` cap forced a write every 500 ms besides).

So the windows adapt to what the loop has just been doing. When the last two syncs each
wrote a change of pool shapes (a route added, removed or changed; in dynamic mode also a
fallback list), within `BURST_WINDOW` of each other, a stack is coming up and a burst is
under way: the next sync waits for a quiet gap of
`BURST_QUIET` (longer than Docker's gaps between starts, short enough that the stack is
routable within a second of its last start) and at most `BURST_LONGEST` while changes
keep coming. A change alone, or the second of two, still gets the short window, and so
does a container leaving (`urgent`): in static mode its removal from Caddy's member list
must not wait for the burst to end. In dynamic mode membership never waits for any of
this: joins and leaves go to the resolver at once; only new pool shapes wait, and the
fallback member list of a dynamic route (written when a pool gains its first member, for
when labelsync is away) is not worth a write of its own (`only_fallbacks_differ`): it
serves no request while labelsync runs, and on SIGTERM labelsync mends any list that
would not serve. It is written once the pools have not changed for `FILL_DELAY` (at most
`BURST_LONGEST` after it was first left out), or with the next write. The price: a
labelsync that crashes (SIGKILL, no SIGTERM) within that delay after a pool's first
member leaves that pool's list empty, and the pool unserved until labelsync is back.
Member-only
writes (static mode) never start a burst: a change of members reaches Caddy after the
short window, as a lone change does.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from labelsync.caddy.diff import owned_routes
from labelsync.core.model import JSON

BURST_WINDOW = 2.0  # seconds: writes this close together make a burst
BURST_QUIET = 0.5  # seconds of quiet that end a burst's wait
BURST_LONGEST = 15.0  # seconds a burst's changes wait at most while changes keep coming
FILL_DELAY = 2.0  # seconds of quiet syncs before fallback lists alone are written


@dataclass
class Coalescer:
    """The quiet window and the longest wait for the next sync.

    windows = coalescer.windows(now)      # when a change arrives
    ...                                   # the sync runs
    coalescer.synced(now, wrote=True)
    """

    quiet: float
    longest: float
    burst_quiet: float = BURST_QUIET
    burst_longest: float = BURST_LONGEST
    burst_window: float = BURST_WINDOW
    urgent: bool = False
    _syncs: deque[float] = field(default_factory=lambda: deque(maxlen=2))

    def in_burst(self, now: float) -> bool:
        """Two syncs that wrote shapes within the burst window, the last one recent."""
        if len(self._syncs) < 2:
            return False
        first, last = self._syncs
        return last - first <= self.burst_window and now - last <= self.burst_window

    def windows(self, now: float) -> tuple[float, float]:
        """(quiet window, longest wait) for a sync whose first change arrives `now`."""
        if self.urgent or not self.in_burst(now):
            return self.quiet, self.longest
        return max(self.quiet, self.burst_quiet), max(self.longest, self.burst_longest)

    def synced(self, now: float, *, shaped: bool) -> None:
        """A sync ended at `now`; `shaped`: it wrote a change of pool shapes. An urgent
        one ends a burst (leaves never build one)."""
        if self.urgent:
            self._syncs.clear()
        elif shaped:
            self._syncs.append(now)
        self.urgent = False


def _without_fallback(route: JSON) -> JSON:
    handle = route.get("handle")
    if not isinstance(handle, list) or not handle or not isinstance(handle[0], dict):
        return route
    if "dynamic_upstreams" not in handle[0]:
        return route  # static members are the route's members: never deferred
    first = {key: value for key, value in handle[0].items() if key != "upstreams"}
    return {**route, "handle": [first, *handle[1:]]}


def only_fallbacks_differ(current: list[JSON], desired: list[JSON]) -> bool:
    """True when `desired` differs from `current` in dynamic routes' fallback lists only."""
    held = owned_routes(current)
    if len(held) != len(desired):
        return False
    differ = False
    for old, new in zip(held, desired, strict=True):
        if old is new or old == new:
            continue  # unchanged routes are mostly the very objects (`adopt_equal`)
        if _without_fallback(old) != _without_fallback(new):
            return False
        differ = True
    return differ
