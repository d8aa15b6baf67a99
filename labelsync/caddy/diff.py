"""(the server's routes, labelsync's desired routes) -> the fewest admin operations.

labelsync owns the routes whose `@id` starts with its prefix; every other route
belongs to the user and keeps its content and its place among the user's routes.
The operations are computed against a simulation of the list, so each insert index
is right for the list as Caddy holds it when that operation arrives.

Order of the operations: deletes (routes no longer desired, then routes that must
move), in-place replacements, then inserts in desired order. Moves are the fewest
possible: the owned routes on a longest increasing subsequence of desired positions
stay where they are (preferring unchanged ones among equally long runs), the others
are deleted and inserted again with their new content.
"""

from __future__ import annotations

import itertools

from labelsync.caddy.operations import (
    AddRoute,
    DeleteRoute,
    Operation,
    ReplaceRoute,
    ReplaceUpstreams,
)
from labelsync.core.model import JSON
from labelsync.core.names import OWNED_PREFIX
from labelsync.core.route_shape import is_dynamic, split_static_members, static_members


def owned_routes(routes: list[JSON], prefix: str = OWNED_PREFIX) -> list[JSON]:
    """The routes labelsync owns, in the order they appear."""
    return [route for route in routes if _owned_id(route, prefix) is not None]


def _layout(routes: list[JSON], prefix: str) -> list[str | None]:
    """Each route's @id when labelsync owns it, else None (one pass, inlined)."""
    return [
        route_id
        if isinstance(route_id := route.get("@id"), str) and route_id.startswith(prefix)
        else None
        for route in routes
    ]


def diff_routes(
    current: list[JSON], desired: list[JSON], *, owned_prefix: str = OWNED_PREFIX
) -> list[Operation]:
    """Operations that turn the owned routes of `current` into `desired`.

    `current` is the server's whole `routes` list, user routes included; `desired`
    is labelsync's routes in order, each with an `@id` under `owned_prefix`. Returns
    `[]` when nothing changed. When the server holds no owned route yet, the new ones
    go at the top, so a user's catch-all route at the end cannot shadow them.
    """
    desired_position = _desired_positions(desired, owned_prefix)
    # The simulated list: an owned route's @id, or None for a user route (never addressed).
    layout = _layout(current, owned_prefix)
    current_by_id = {
        route_id: route for route_id, route in zip(layout, current, strict=True) if route_id
    }
    operations: list[Operation] = []

    def delete(route_id: str) -> None:
        operations.append(DeleteRoute(route_id))
        layout.remove(route_id)

    for route_id in [rid for rid in layout if rid is not None and rid not in desired_position]:
        delete(route_id)

    kept = [rid for rid in layout if rid is not None]
    changed = {
        rid
        for rid in kept
        if (held := current_by_id[rid]) is not (wanted := desired[desired_position[rid]])
        and not _same_shape(held, wanted)
    }
    if _increasing(kept, desired_position):
        staying = set(kept)  # already in order (the usual case): nothing moves
    else:
        staying = set(_longest_increasing(kept, desired_position, changed))
    for route_id in [rid for rid in kept if rid not in staying]:
        delete(route_id)

    # Only changed routes can differ; in desired order.
    for route_id in sorted(changed & staying, key=desired_position.__getitem__):
        operations.append(
            _replacement(current_by_id[route_id], desired[desired_position[route_id]])
        )

    for position, route in enumerate(desired):
        route_id = route["@id"]
        if route_id in staying:
            continue
        index = _insert_index(layout, desired, position)
        operations.append(AddRoute(index, route))
        layout.insert(index, route_id)
    return operations


def adopt_equal(current: list[JSON], desired: list[JSON]) -> list[JSON]:
    """`current` with each route that equals its desired route replaced by that very
    object: the same list for `diff_routes`, and a later diff against routes rendered
    from the same pools compares them by identity, not key by key."""
    wanted = {route.get("@id"): route for route in desired}
    adopted = []
    for route in current:
        same = wanted.get(route.get("@id"))
        adopted.append(same if same is not None and (same is route or same == route) else route)
    return adopted


def _increasing(route_ids: list[str], position: dict[str, int]) -> bool:
    return all(position[a] < position[b] for a, b in itertools.pairwise(route_ids))


def refresh_fallbacks(
    current: list[JSON], desired: list[JSON], *, owned_prefix: str = OWNED_PREFIX
) -> list[Operation]:
    """Operations that mend fallback upstreams of dynamic routes that would not serve.

    `diff_routes` never writes for a fallback alone (membership changes must not
    reload Caddy); this is for shutdown, after which the fallback is all Caddy has.
    Every write reloads Caddy and resets idle client connections, so a fallback is
    mended only when it names a member that is gone, or none while members exist;
    one that merely lacks newer members still serves.
    """
    wanted = {route["@id"]: route for route in desired}
    operations: list[Operation] = []
    for route in current:
        route_id = _owned_id(route, owned_prefix)
        target = wanted.get(route_id) if route_id else None
        if route_id is None or target is None or not is_dynamic(target):
            continue
        _, held_rest = split_static_members(route)
        _, wanted_rest = split_static_members(target)
        if held_rest == wanted_rest and not _fallback_serves(route, target):
            operations.append(_replacement(route, target))
    return operations


def _fallback_serves(current: JSON, desired: JSON) -> bool:
    held = static_members(current) or []
    wanted = static_members(desired) or []
    dials = {upstream.get("dial") for upstream in wanted}
    return all(upstream.get("dial") in dials for upstream in held) and (bool(held) or not wanted)


def _same_shape(current: JSON, desired: JSON) -> bool:
    """Equal, or equal but for the fallback `upstreams` of a route with dynamic upstreams.

    With dynamic upstreams Caddy asks labelsync's resolver for members and uses the
    static list only when it cannot: that list is a fallback, refreshed whenever the
    route is written anyway, not a reason to write on its own. Except when it is empty
    while the pool has members (the route was written before its first member served):
    an empty fallback can never serve, so the pool's first member is worth one write.
    """
    if current is desired or current == desired:
        return True
    if not (is_dynamic(current) and is_dynamic(desired)):
        return False
    held, current_rest = split_static_members(current)
    wanted, desired_rest = split_static_members(desired)
    return current_rest == desired_rest and (bool(held) or not wanted)


def _owned_id(route: JSON, prefix: str) -> str | None:
    route_id = route.get("@id")
    if isinstance(route_id, str) and route_id.startswith(prefix):
        return route_id
    return None


def _desired_positions(desired: list[JSON], prefix: str) -> dict[str, int]:
    ids = _layout(desired, prefix)
    positions = {route_id: position for position, route_id in enumerate(ids) if route_id}
    if len(positions) == len(desired):
        return positions  # every @id owned and none twice: the usual case
    positions = {}
    for position, route in enumerate(desired):
        route_id = _owned_id(route, prefix)
        if route_id is None:
            raise ValueError(f"desired route without an @id under {prefix!r}: {route!r}")
        if route_id in positions:
            raise ValueError(f"two desired routes share the @id {route_id!r}")
        positions[route_id] = position
    return positions


def _longest_increasing(
    route_ids: list[str], position: dict[str, int], changed: set[str]
) -> list[str]:
    """The routes that stay put: the longest run of `route_ids` already in desired order.

    Among runs of that length, the one holding the most unchanged routes wins: a
    moved route costs a delete and an add whatever its content, so keeping a changed
    one in place saves its replacement. Weighted LIS over a Fenwick tree of prefix
    maxima, O(n log n).
    """
    count = len(route_ids)
    size = max((position[rid] for rid in route_ids), default=-1) + 1
    # Length dominates: no count of unchanged routes adds up to one more route.
    weight = [(count + 1) + (0 if rid in changed else 1) for rid in route_ids]
    tree: list[tuple[int, int]] = [(0, -1)] * (size + 1)  # (best total, index ending it)
    best: list[int] = [0] * count
    previous: list[int] = [-1] * count
    for i, route_id in enumerate(route_ids):
        slot = position[route_id]  # best run ending below this desired position
        found = (0, -1)
        while slot > 0:
            found = max(found, tree[slot])
            slot -= slot & -slot
        best[i] = found[0] + weight[i]
        previous[i] = found[1]
        slot = position[route_id] + 1
        while slot <= size:
            tree[slot] = max(tree[slot], (best[i], i))
            slot += slot & -slot
    run: list[str] = []
    cursor = max(range(count), key=lambda i: (best[i], i), default=-1)
    while cursor != -1:
        run.append(route_ids[cursor])
        cursor = previous[cursor]
    run.reverse()
    return run


def _replacement(old: JSON, new: JSON) -> Operation:
    """ReplaceUpstreams when the static member list is all that changed.

    PATCH can only replace a key that exists, so a route without that list on either
    side needs a whole-route replacement.
    """
    route_id = str(new["@id"])
    old_upstreams, old_rest = split_static_members(old)
    new_upstreams, new_rest = split_static_members(new)
    if old_upstreams is not None and new_upstreams is not None and old_rest == new_rest:
        return ReplaceUpstreams(route_id, new_upstreams)
    return ReplaceRoute(route_id, new)


def _insert_index(layout: list[str | None], desired: list[JSON], position: int) -> int:
    """Where desired[position] goes: right after its desired predecessor.

    The predecessor is always in `layout` already, because inserts run in desired
    order. The first desired route goes just before the first owned route, or at the
    top when there is none.
    """
    if position > 0:
        return layout.index(desired[position - 1]["@id"]) + 1
    return next((i for i, route_id in enumerate(layout) if route_id is not None), 0)
