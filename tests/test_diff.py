"""diff: the fewest admin operations, leaving every user route as it was."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelsync.caddy.diff import diff_routes, owned_routes, refresh_fallbacks
from labelsync.caddy.operations import (
    AddRoute,
    DeleteRoute,
    Operation,
    ReplaceRoute,
    ReplaceUpstreams,
    apply_operations,
)
from labelsync.core.model import JSON

OWNED_IDS = [f"labelsync-r{i}" for i in range(8)]


def route(
    route_id: str | None,
    *,
    dials: tuple[str, ...] | None = ("10.0.0.2:80",),
    policy: str = "random",
) -> JSON:
    handler: JSON = {
        "handler": "reverse_proxy",
        "load_balancing": {"selection_policy": {"policy": policy}},
    }
    if dials is not None:
        handler["upstreams"] = [{"dial": dial} for dial in dials]
    result: JSON = {"match": [{"host": [f"{route_id}.example.com"]}], "handle": [handler]}
    if route_id is not None:
        result["@id"] = route_id
    return result


def user_route(name: str | None, body: str = "user") -> JSON:
    result: JSON = {"handle": [{"handler": "static_response", "body": body}]}
    if name is not None:
        result["@id"] = name
    return result


def ids(routes: list[JSON]) -> list[Any]:
    return [r.get("@id") for r in routes]


def user_part(routes: list[JSON]) -> list[JSON]:
    return [r for r in routes if not str(r.get("@id", "")).startswith("labelsync-")]


def check_indexes_in_bounds(current: list[JSON], operations: list[Operation]) -> None:
    """Caddy rejects a PUT index past the end of the list (500 'array index out of bounds')."""
    routes = current
    for op in operations:
        if isinstance(op, AddRoute):
            assert 0 <= op.index <= len(routes), (op.index, len(routes))
        routes = apply_operations(routes, [op])


# --- strategies -------------------------------------------------------------------

dials = st.lists(
    st.sampled_from(["10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80", "10.0.0.5:8080"]),
    max_size=3,
    unique=True,
).map(tuple)
policies = st.sampled_from(["random", "first", "least_conn"])


@st.composite
def owned_lists(draw: st.DrawFn) -> list[JSON]:
    order = draw(st.permutations(OWNED_IDS))
    chosen = order[: draw(st.integers(0, len(OWNED_IDS)))]
    return [
        route(route_id, dials=draw(st.none() | dials), policy=draw(policies)) for route_id in chosen
    ]


@st.composite
def current_lists(draw: st.DrawFn) -> list[JSON]:
    owned = draw(owned_lists())
    users = [
        user_route(draw(st.sampled_from([None, f"user-{i}", f"srv0-{i}"])), body=f"u{i}")
        for i in range(draw(st.integers(0, 5)))
    ]
    # Interleave user routes into the owned ones at arbitrary places, keeping each order.
    merged: list[JSON] = []
    owned_left, users_left = list(owned), list(users)
    while owned_left or users_left:
        take_user = users_left and (not owned_left or draw(st.booleans()))
        merged.append((users_left if take_user else owned_left).pop(0))
    return merged


# --- properties ---------------------------------------------------------------------


@given(current_lists(), owned_lists())
def test_apply_of_diff_gives_desired_and_keeps_user_routes(
    current: list[JSON], desired: list[JSON]
) -> None:
    operations = diff_routes(current, desired)
    result = apply_operations(current, operations)
    assert owned_routes(result) == desired
    assert user_part(result) == user_part(current)
    check_indexes_in_bounds(current, operations)
    assert diff_routes(result, desired) == []


@given(current_lists(), owned_lists())
def test_each_route_is_touched_at_most_once(current: list[JSON], desired: list[JSON]) -> None:
    operations = diff_routes(current, desired)
    current_ids = set(ids(owned_routes(current)))
    desired_ids = set(ids(desired))
    deleted = [op.route_id for op in operations if isinstance(op, DeleteRoute)]
    added = [op.route_id for op in operations if isinstance(op, AddRoute)]
    replaced = [op.route_id for op in operations if isinstance(op, ReplaceRoute | ReplaceUpstreams)]
    assert len(set(deleted)) == len(deleted)
    assert set(deleted) >= current_ids - desired_ids
    assert set(added) >= desired_ids - current_ids
    # A moved route is deleted and added once; it is never also replaced.
    assert not set(replaced) & set(added)
    assert set(added) & current_ids == set(deleted) & desired_ids


def longest_in_order(sequence: list[int]) -> int:
    best = [1] * len(sequence)
    for i in range(len(sequence)):
        for j in range(i):
            if sequence[j] < sequence[i]:
                best[i] = max(best[i], best[j] + 1)
    return max(best, default=0)


@given(current_lists(), owned_lists())
def test_moves_are_the_fewest(current: list[JSON], desired: list[JSON]) -> None:
    position = {r["@id"]: i for i, r in enumerate(desired)}
    kept = [position[r["@id"]] for r in owned_routes(current) if r["@id"] in position]
    operations = diff_routes(current, desired)
    moved = {op.route_id for op in operations if isinstance(op, AddRoute)} & {
        r["@id"] for r in owned_routes(current)
    }
    assert len(moved) == len(kept) - longest_in_order(kept)


def fewest_operations(current: list[JSON], desired: list[JSON]) -> int:
    """Deletes + adds + 2 per move + 1 per changed route left in place, best case."""
    by_id = {r["@id"]: r for r in owned_routes(current)}
    position = {r["@id"]: i for i, r in enumerate(desired)}
    kept = [rid for rid in by_id if rid in position]
    # best[i]: (longest run ending at kept[i], fewest changed routes on it)
    best: list[tuple[int, int]] = []
    for i, rid in enumerate(kept):
        cost = int(by_id[rid] != desired[position[rid]])
        options = [(1, cost)] + [
            (best[j][0] + 1, best[j][1] + cost)
            for j in range(i)
            if position[kept[j]] < position[rid]
        ]
        best.append(max(options, key=lambda o: (o[0], -o[1])))
    length, changed = max(best, key=lambda o: (o[0], -o[1]), default=(0, 0))
    undesired = len(by_id) - len(kept)
    new = len(desired) - len(kept)
    return undesired + new + 2 * (len(kept) - length) + changed


@given(current_lists(), owned_lists())
def test_operation_count_is_the_fewest(current: list[JSON], desired: list[JSON]) -> None:
    assert len(diff_routes(current, desired)) == fewest_operations(current, desired)


@given(current_lists(), owned_lists())
def test_owned_block_stays_one_block(current: list[JSON], desired: list[JSON]) -> None:
    owned_at = [i for i, r in enumerate(current) if str(r.get("@id", "")).startswith("labelsync-")]
    if owned_at and owned_at[-1] - owned_at[0] + 1 != len(owned_at):
        return  # only a list whose owned routes are one block promises one block back
    result = apply_operations(current, diff_routes(current, desired))
    result_at = [i for i, r in enumerate(result) if str(r.get("@id", "")).startswith("labelsync-")]
    if result_at:
        assert result_at[-1] - result_at[0] + 1 == len(result_at)
    if not owned_at:
        assert result[: len(desired)] == desired


@given(current_lists())
def test_diff_of_equal_is_empty(current: list[JSON]) -> None:
    assert diff_routes(current, owned_routes(current)) == []


# --- examples -----------------------------------------------------------------------


def test_single_upstream_change_is_one_replace_upstreams() -> None:
    current = [user_route("user-a"), route("labelsync-r1"), route("labelsync-r2")]
    changed = route("labelsync-r2", dials=("10.0.0.2:80", "10.0.0.9:80"))
    operations = diff_routes(current, [route("labelsync-r1"), changed])
    assert operations == [
        ReplaceUpstreams("labelsync-r2", [{"dial": "10.0.0.2:80"}, {"dial": "10.0.0.9:80"}])
    ]


def test_other_changes_replace_the_whole_route() -> None:
    current = [route("labelsync-r1")]
    for desired in (
        route("labelsync-r1", policy="first"),
        route("labelsync-r1", dials=("10.0.0.3:80",), policy="first"),
        route("labelsync-r1", dials=None),  # static -> dynamic: upstreams go away
    ):
        assert diff_routes(current, [desired]) == [ReplaceRoute("labelsync-r1", desired)]
    # dynamic -> static: PATCH of a key Caddy does not hold yet would be a 404
    dynamic = [route("labelsync-r1", dials=None)]
    assert diff_routes(dynamic, [route("labelsync-r1")]) == [
        ReplaceRoute("labelsync-r1", route("labelsync-r1"))
    ]


def test_first_routes_go_on_top_of_user_routes() -> None:
    catch_all = user_route(None, body="catch-all")
    current = [user_route("user-a"), catch_all]
    desired = [route("labelsync-r1"), route("labelsync-r2")]
    assert diff_routes(current, desired) == [AddRoute(0, desired[0]), AddRoute(1, desired[1])]


def test_new_routes_go_next_to_their_desired_neighbours() -> None:
    current = [user_route("user-a"), route("labelsync-r1"), route("labelsync-r3"), user_route(None)]
    desired = [
        route("labelsync-r0"),
        route("labelsync-r1"),
        route("labelsync-r2"),
        route("labelsync-r3"),
    ]
    assert diff_routes(current, desired) == [
        AddRoute(1, desired[0]),
        AddRoute(3, desired[2]),
    ]


def test_undesired_owned_routes_are_deleted() -> None:
    current = [route("labelsync-r1"), user_route("user-a"), route("labelsync-r2")]
    assert diff_routes(current, [route("labelsync-r2")]) == [DeleteRoute("labelsync-r1")]
    assert diff_routes(current, []) == [DeleteRoute("labelsync-r1"), DeleteRoute("labelsync-r2")]


def test_swap_moves_one_route() -> None:
    current = [route("labelsync-r1"), route("labelsync-r2"), route("labelsync-r3")]
    desired = [route("labelsync-r3"), route("labelsync-r1"), route("labelsync-r2")]
    assert diff_routes(current, desired) == [
        DeleteRoute("labelsync-r3"),
        AddRoute(0, desired[0]),
    ]


def test_moved_route_carries_its_new_content() -> None:
    current = [route("labelsync-r1"), route("labelsync-r2")]
    desired = [route("labelsync-r2", policy="first"), route("labelsync-r1")]
    operations = diff_routes(current, desired)
    assert len(operations) == 2
    assert apply_operations(current, operations) == desired


def test_routes_of_other_owners_are_user_routes() -> None:
    current = [user_route("caddy-docker-proxy-1"), user_route("srv0-route")]
    assert diff_routes(current, []) == []
    assert owned_routes(current) == []
    assert owned_routes(current, "srv0-") == [current[1]]


def test_custom_prefix() -> None:
    current = [route("edge-a"), route("labelsync-r1")]
    operations = diff_routes(current, [route("edge-b")], owned_prefix="edge-")
    assert operations == [DeleteRoute("edge-a"), AddRoute(0, route("edge-b"))]


def test_desired_routes_must_be_owned_and_unique() -> None:
    with pytest.raises(ValueError, match="without an @id"):
        diff_routes([], [route("other-r1")])
    with pytest.raises(ValueError, match="share the @id"):
        diff_routes([], [route("labelsync-r1"), route("labelsync-r1")])


def dynamic_route(route_id: str, dials: tuple[str, ...], policy: str = "random") -> JSON:
    proxy = {
        "handler": "reverse_proxy",
        "dynamic_upstreams": {"source": "srv", "name": f"{route_id}.pool.labelsync.internal."},
        "upstreams": [{"dial": d} for d in dials],
        "load_balancing": {"selection_policy": {"policy": policy}},
    }
    return {"@id": route_id, "handle": [proxy], "terminal": True}


def test_a_dynamic_route_is_not_written_for_its_fallback_members_alone() -> None:
    """Scaling in dynamic mode writes nothing: the static list is only Caddy's fallback."""
    current = [dynamic_route("labelsync-d", ("10.0.0.2:80",))]
    desired = [dynamic_route("labelsync-d", ("10.0.0.2:80", "10.0.0.3:80"))]
    assert diff_routes(current, desired) == []


def test_a_pool_s_first_member_fills_an_empty_fallback_and_its_last_leaves_it() -> None:
    """An empty fallback can never serve: gaining a first member is one write. Losing the
    last one (a crash) writes nothing: the old fallback is the best Caddy can have."""
    empty = [dynamic_route("labelsync-d", ())]
    one = [dynamic_route("labelsync-d", ("10.0.0.2:80",))]
    assert diff_routes(empty, one) == [ReplaceUpstreams("labelsync-d", [{"dial": "10.0.0.2:80"}])]
    assert diff_routes(one, empty) == []


def test_a_shape_change_carries_fresh_fallback_members() -> None:
    current = [dynamic_route("labelsync-d", ("10.0.0.2:80",))]
    desired = [dynamic_route("labelsync-d", ("10.0.0.3:80",), policy="first")]
    assert diff_routes(current, desired) == [ReplaceRoute("labelsync-d", desired[0])]


def test_refresh_fallbacks_replaces_only_stale_dynamic_lists() -> None:
    """At shutdown, stale fallbacks are brought up to date, and nothing else is touched."""
    current = [
        user_route("user-a"),
        dynamic_route("labelsync-stale", ("10.0.0.2:80",)),
        dynamic_route("labelsync-fresh", ("10.0.0.5:80",)),
        route("labelsync-static"),
    ]
    desired = [
        dynamic_route("labelsync-stale", ("10.0.0.3:80",)),
        dynamic_route("labelsync-fresh", ("10.0.0.5:80",)),
        route("labelsync-static", dials=("10.0.0.9:80",)),
    ]
    assert refresh_fallbacks(current, desired) == [
        ReplaceUpstreams("labelsync-stale", [{"dial": "10.0.0.3:80"}])
    ]
    assert refresh_fallbacks(current[:1], desired) == []


def test_a_fallback_that_only_lacks_newer_members_is_left_alone() -> None:
    """It still serves, and a write would reload Caddy and reset client connections."""
    current = [dynamic_route("labelsync-d", ("10.0.0.2:80",))]
    grown = [dynamic_route("labelsync-d", ("10.0.0.2:80", "10.0.0.3:80"))]
    assert refresh_fallbacks(current, grown) == []
    empty = [dynamic_route("labelsync-d", ())]
    assert refresh_fallbacks(empty, grown) == [
        ReplaceUpstreams("labelsync-d", [{"dial": "10.0.0.2:80"}, {"dial": "10.0.0.3:80"}])
    ]
    assert refresh_fallbacks(empty, [dynamic_route("labelsync-d", ())]) == []
