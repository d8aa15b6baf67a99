"""The shape of a route labelsync writes: where its members live, what makes it dynamic.

A route labelsync writes (`caddy/render.py`) has one handler, `reverse_proxy`, at `handle[0]`.
Its members are in one of two places:

- static: `handle[0].upstreams`, the list of `{"dial": address}` Caddy proxies to;
- dynamic: `handle[0].dynamic_upstreams`, which asks labelsync's resolver for the
  members; `handle[0].upstreams` beside it is then only the *fallback* list, used when
  Caddy cannot ask (labelsync is away).

What the labels decide is everything but the member list (`without_static_members`):
two routes equal there differ in membership alone.

Pure functions of route JSON; a route of another shape (no `handle`, a first handler
that is not an object) has no member list and is not dynamic.
"""

from __future__ import annotations

from labelsync.core.model import JSON

STATIC_MEMBERS = "upstreams"  # key of the first handler: the static (or fallback) list
DYNAMIC_MEMBERS = "dynamic_upstreams"  # key of the first handler: ask the resolver


def _first_handler(route: JSON) -> JSON | None:
    """`handle[0]`, where the members live; None when the route has no such object."""
    handle = route.get("handle")
    if not isinstance(handle, list) or not handle or not isinstance(handle[0], dict):
        return None
    first: JSON = handle[0]
    return first


def is_dynamic(route: JSON) -> bool:
    """True when Caddy asks labelsync's resolver for the route's members."""
    handler = _first_handler(route)
    return handler is not None and DYNAMIC_MEMBERS in handler


def static_members(route: JSON) -> list[JSON] | None:
    """`handle[0].upstreams`: the members (static) or the fallback list (dynamic); None
    when the route has no such list."""
    handler = _first_handler(route)
    members = handler.get(STATIC_MEMBERS) if handler is not None else None
    return members if isinstance(members, list) else None


def without_static_members(route: JSON) -> JSON:
    """The route without `handle[0].upstreams`: what its labels (not members) decide.

    A new route when it has a first handler (whether that holds the list or not), else
    `route` itself.
    """
    handler = _first_handler(route)
    if handler is None:
        return route
    rest = {key: value for key, value in handler.items() if key != STATIC_MEMBERS}
    return {**route, "handle": [rest, *route["handle"][1:]]}


def without_fallback(route: JSON) -> JSON:
    """A dynamic route without its fallback list; any other route as it is (a static
    route's list holds its members, part of what it is)."""
    return without_static_members(route) if is_dynamic(route) else route


def split_static_members(route: JSON) -> tuple[list[JSON] | None, JSON]:
    """(`static_members(route)`, the route without them); `(None, route)` when the route
    has no such list."""
    members = static_members(route)
    if members is None:
        return None, route
    return members, without_static_members(route)


def with_static_members(route: JSON, members: list[JSON]) -> JSON:
    """A new route whose `handle[0].upstreams` is `members` (the rest shared with `route`)."""
    handle = list(route["handle"])
    handle[0] = {**handle[0], STATIC_MEMBERS: members}
    return {**route, "handle": handle}
