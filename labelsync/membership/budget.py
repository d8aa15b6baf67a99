"""Which pools Caddy asks the resolver for, and which carry their members in its JSON.

Caddy keeps dynamic SRV answers in one process-wide map of at most 100 names, and
evicts a random name to add one more; a lookup runs under that map's write lock, so
while one is in flight every request to every dynamic pool waits. Past ~100 busy
dynamic pools Caddy thus looks up DNS for a large share of all requests (measured at
500 pools: 0.84 lookups per request, 0.41x the throughput of members in the JSON).
Names Caddy does not evict still cost one lookup per `refresh` each while they serve.

So the default mode serves membership through the resolver for at most `size` pools
(`LABELSYNC_DYNAMIC_BUDGET`): every pool while there are no more than that, and
otherwise the pools whose membership is *changing* — scaled, rolled, failing over:
their SRV answer changed within the last `hold` seconds. Quiet pools carry their
members in Caddy's JSON like `LABELSYNC_UPSTREAMS=static` (labelsync still runs their
active checks). A quiet pool whose membership changes enters the budget (its route is
rewritten once, with whatever else the sync writes) and leaves it after `hold` quiet
seconds (once more), so a rolling update of one pool writes twice however many
replicas it replaces. A new pool starts in the JSON: it is written anyway.

Pure: time comes in as an argument.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from labelsync.core.defaults import DYNAMIC_BUDGET

# How long a pool keeps its place after its last membership change: long enough for a
# rolling update's next replica (health checks, start-up) to come before it leaves.
DEFAULT_HOLD_SECONDS = 60.0


@dataclass
class Budget:
    """Decides, sync after sync, which pools carry their members in Caddy's JSON."""

    size: int = DYNAMIC_BUDGET
    hold: float = DEFAULT_HOLD_SECONDS
    # pool id -> when its SRV answer last changed (only pools that may hold the budget)
    _changed: dict[str, float] = field(default_factory=dict)
    json_pools: frozenset[str] = frozenset()
    over: bool = False  # more pools than the budget at the last `assign`

    def assign(
        self, pool_ids: Collection[str], changed: Iterable[str], now: float
    ) -> frozenset[str]:
        """The ids among `pool_ids` whose members go into Caddy's JSON.

        `changed`: pools whose answer changed since the last call (not new pools).
        """
        for pool_id in changed:
            self._changed[pool_id] = now
        for pool_id in [p for p, t in self._changed.items() if now - t >= self.hold]:
            del self._changed[pool_id]
        for pool_id in [p for p in self._changed if p not in pool_ids]:
            del self._changed[pool_id]
        self.over = len(pool_ids) > self.size
        if not self.over:
            self.json_pools = frozenset()
            return self.json_pools
        # The most recently changed hold the budget; ties by id, so the result is stable.
        hot = sorted(self._changed, key=lambda p: (-self._changed[p], p))[: self.size]
        self.json_pools = frozenset(pool_ids).difference(hot)
        return self.json_pools

    def next_change(self) -> float | None:
        """When a pool in the budget will have been quiet for `hold` (then a sync moves it
        back into the JSON); None when no pool will."""
        if not self.over:
            return None
        held = [t for p, t in self._changed.items() if p not in self.json_pools]
        return min(held) + self.hold if held else None
