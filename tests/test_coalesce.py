"""The adaptive quiet window: short for a lone change and a leave, long inside a burst."""

from __future__ import annotations

from typing import Any

from labelsync.loop.coalesce import (
    BURST_LONGEST,
    BURST_QUIET,
    EXPECTED_QUIET,
    Coalescer,
    only_fallbacks_differ,
)

SHORT = (0.05, 0.5)


def test_a_lone_change_and_the_second_of_two_get_the_short_window() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    assert coalescer.windows(0.0) == (0.05, 0.5)
    coalescer.synced(0.1, wrote=True)
    assert coalescer.windows(0.3) == (0.05, 0.5)  # one sync: not a burst yet


def test_two_syncs_close_together_start_a_burst_that_ends_when_quiet() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.1, wrote=True)
    coalescer.synced(0.4, wrote=True)
    assert coalescer.in_burst(0.6)
    assert coalescer.windows(0.6) == (BURST_QUIET, BURST_LONGEST)
    assert not coalescer.in_burst(3.0)  # two seconds after the last sync: over
    assert coalescer.windows(3.0) == (0.05, 0.5)


def test_syncs_far_apart_are_no_burst() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.0, wrote=True)
    coalescer.synced(5.0, wrote=True)
    assert coalescer.windows(5.1) == (0.05, 0.5)


def test_a_leave_cuts_a_burst_short_until_the_next_sync() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.1, wrote=True)
    coalescer.synced(0.4, wrote=True)
    coalescer.urgent = True
    assert coalescer.windows(0.5) == (0.05, 0.5)
    coalescer.synced(0.6, wrote=True)  # the leave's sync ends the burst
    assert coalescer.windows(0.7) == (0.05, 0.5)


def test_syncs_that_wrote_nothing_start_no_burst() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.1, wrote=False)
    coalescer.synced(0.4, wrote=False)
    assert coalescer.windows(0.5) == SHORT


def test_a_stack_coming_up_at_dockers_pace_is_written_a_few_times() -> None:
    """100 containers in 20 pools, listed as created, started over 25 s with gaps of up
    to 2.4 s: a write for the first start, one when the longest wait is up and one just
    after the last start; not one per gap."""
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    ids = [f"c{i}" for i in range(100)]
    gaps = [2.4, 0.1, 0.05, 0.1, 0.05, 1.6, *[0.1] * 3, *[0.05] * 11]  # 25 s in all
    starts, now = [], 1.0
    for i in range(100):
        starts.append(now)
        now += gaps[i % len(gaps)]
    writes = simulate(coalescer, ids, starts, first_listing=0.0)
    assert len(writes) <= 3, writes
    assert writes[0] - starts[0] <= 0.15  # the first start is a lone change
    assert writes[-1] - starts[-1] <= 0.15  # the last waits for nothing either


def simulate(
    coalescer: Coalescer, ids: list[str], starts: list[float], first_listing: float
) -> list[float]:
    """The reconciler's wait loop over start events at `starts` (the container of each
    listed as created at `first_listing`); a sync takes 50 ms; when each wrote."""
    coalescer.expect(ids, first_listing)
    writes: list[float] = []
    pending: float | None = None  # when the first unsynced change arrived
    last_event = 0.0
    index, now, step = 0, starts[0], 0.001
    while index < len(starts) or pending is not None:
        if index < len(starts) and starts[index] <= now:
            coalescer.arrived(ids[index], now)
            pending = now if pending is None else pending
            last_event, index = now, index + 1
        if pending is not None:
            quiet, longest = coalescer.windows(pending, now)
            if now - last_event >= quiet or now - pending >= longest:
                now += 0.05
                coalescer.expect(ids[index:], now - 0.05)
                writes.append(now)
                coalescer.synced(now, wrote=True)
                pending = None
                continue
        now += step
    return writes


def test_a_lone_start_is_written_at_once_even_beside_containers_listed_as_created() -> None:
    """Containers created and never started do not slow down the next change."""
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.expect(["forgotten", "lone", "later"], 0.0)
    coalescer.arrived("lone", 10.0)
    assert coalescer.windows(10.0, 10.0) == SHORT
    coalescer.synced(10.1, wrote=True)
    coalescer.arrived("later", 20.0)  # long after: alone again
    assert coalescer.windows(20.0, 20.0) == SHORT


def test_the_last_expected_member_ends_the_wait() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.expect(["a", "b", "c"], 0.0)
    coalescer.arrived("a", 1.0)
    coalescer.arrived("b", 1.5)
    assert coalescer.windows(1.5, 1.7) == (EXPECTED_QUIET, BURST_LONGEST)
    assert coalescer.windows(1.5, 5.0) == SHORT  # nothing arrived for 3 s: over
    coalescer.arrived("c", 5.2)
    assert coalescer.windows(5.2, 5.2) == SHORT


def test_the_last_expected_member_ends_a_burst_of_writes_too() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.expect(["a", "b", "c"], 0.0)
    coalescer.arrived("a", 1.0)
    coalescer.synced(1.1, wrote=True)
    coalescer.synced(1.3, wrote=True)  # two writes close together
    coalescer.arrived("b", 1.5)
    assert coalescer.windows(1.5, 1.5)[0] == EXPECTED_QUIET
    coalescer.arrived("c", 2.0)
    assert coalescer.in_burst(2.0)
    assert coalescer.windows(2.0, 2.0) == SHORT


def test_a_listing_older_than_a_start_does_not_expect_it_again() -> None:
    """The listing began before the start event came in: it may still say `created`."""
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.arrived("a", 1.0)
    coalescer.expect(["a", "b"], 0.9)
    coalescer.arrived("b", 1.5)
    assert coalescer.windows(1.5, 1.5) == SHORT  # nothing more is expected


def test_a_leave_never_waits_for_a_burst_or_a_stack() -> None:
    """In static mode Caddy sends requests to a member until it is written out."""
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.expect(["a", "b", "c", "d"], 0.0)
    coalescer.arrived("a", 1.0)
    coalescer.synced(1.1, wrote=True)
    coalescer.arrived("b", 1.2)
    coalescer.synced(1.3, wrote=True)
    assert coalescer.windows(1.4, 1.4)[0] == EXPECTED_QUIET
    coalescer.urgent = True
    assert coalescer.windows(1.4, 1.4) == SHORT
    coalescer.synced(1.5, wrote=True)  # the leave's sync ends the burst ...
    assert not coalescer.in_burst(1.6)
    coalescer.arrived("c", 1.7)  # ... not the stack still coming up
    assert coalescer.windows(1.7, 1.7)[0] == EXPECTED_QUIET


def test_joins_one_by_one_without_a_listing_coalesce_after_two_writes() -> None:
    """`docker run` in a loop: nothing is listed as created beforehand."""
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    assert coalescer.windows(0.0) == SHORT  # the first: at once
    coalescer.synced(0.1, wrote=True)
    assert coalescer.windows(0.5) == SHORT  # the second too
    coalescer.synced(0.6, wrote=True)
    assert coalescer.windows(0.9) == (BURST_QUIET, BURST_LONGEST)


def test_settings_longer_than_the_burst_windows_win() -> None:
    coalescer = Coalescer(quiet=1.0, longest=30.0)
    coalescer.synced(0.1, wrote=True)
    coalescer.synced(0.4, wrote=True)
    assert coalescer.windows(0.5) == (1.0, 30.0)


def _route(
    route_id: str, dials: list[str], *, dynamic: bool = True, policy: str = "random"
) -> dict[str, Any]:
    handler: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": d} for d in dials],
    }
    handler["load_balancing"] = {"selection_policy": {"policy": policy}}
    if dynamic:
        handler["dynamic_upstreams"] = {"source": "srv", "name": "x.pool.labelsync.internal."}
    return {"@id": route_id, "handle": [handler]}


def test_only_dynamic_fallback_lists_can_wait() -> None:
    user = {"@id": "user", "handle": [{"handler": "static_response"}]}
    held = [user, _route("labelsync-a", [])]
    assert only_fallbacks_differ(held, [_route("labelsync-a", ["10.0.0.2:80"])])
    assert not only_fallbacks_differ(held, [_route("labelsync-a", [])])  # nothing differs
    changed = [_route("labelsync-a", ["10.0.0.2:80"], policy="first")]
    assert not only_fallbacks_differ(held, changed)
    static = [_route("labelsync-a", [], dynamic=False)]
    assert not only_fallbacks_differ(static, [_route("labelsync-a", ["1.2.3.4:80"], dynamic=False)])
    assert not only_fallbacks_differ(held, [*held[1:], _route("labelsync-b", [])])  # a new pool
