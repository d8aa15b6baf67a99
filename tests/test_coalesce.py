"""The adaptive quiet window: short for a lone change, long inside a burst of syncs."""

from __future__ import annotations

from labelsync.loop.coalesce import BURST_LONGEST, BURST_QUIET, Coalescer, only_fallbacks_differ


def test_a_lone_change_and_the_second_of_two_get_the_short_window() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    assert coalescer.windows(0.0) == (0.05, 0.5)
    coalescer.synced(0.1, shaped=True)
    assert coalescer.windows(0.3) == (0.05, 0.5)  # one sync: not a burst yet


def test_two_syncs_close_together_start_a_burst_that_ends_when_quiet() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.1, shaped=True)
    coalescer.synced(0.4, shaped=True)
    assert coalescer.in_burst(0.6)
    assert coalescer.windows(0.6) == (BURST_QUIET, BURST_LONGEST)
    assert not coalescer.in_burst(3.0)  # two seconds after the last sync: over
    assert coalescer.windows(3.0) == (0.05, 0.5)


def test_syncs_far_apart_are_no_burst() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.0, shaped=True)
    coalescer.synced(5.0, shaped=True)
    assert coalescer.windows(5.1) == (0.05, 0.5)


def test_a_leave_cuts_a_burst_short_until_the_next_sync() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.1, shaped=True)
    coalescer.synced(0.4, shaped=True)
    coalescer.urgent = True
    assert coalescer.windows(0.5) == (0.05, 0.5)
    coalescer.synced(0.6, shaped=True)  # the leave's sync ends the burst
    assert coalescer.windows(0.7) == (0.05, 0.5)


def test_member_only_writes_start_no_burst() -> None:
    coalescer = Coalescer(quiet=0.05, longest=0.5)
    coalescer.synced(0.1, shaped=False)
    coalescer.synced(0.4, shaped=False)
    assert coalescer.windows(0.5) == (0.05, 0.5)


def test_settings_longer_than_the_burst_windows_win() -> None:
    coalescer = Coalescer(quiet=1.0, longest=30.0)
    coalescer.synced(0.1, shaped=True)
    coalescer.synced(0.4, shaped=True)
    assert coalescer.windows(0.5) == (1.0, 30.0)


def _route(
    route_id: str, dials: list[str], *, dynamic: bool = True, policy: str = "random"
) -> dict:
    handler: dict = {"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in dials]}
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
