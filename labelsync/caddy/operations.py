"""Typed admin-API operations: what `diff` returns and the Caddy client sends.

Each operation addresses one object of the server labelsync writes into. Routes
are addressed by their `@id`; inserts by position in the server's `routes` list
(Caddy inserts before the element at a PUT index). `apply_operations` is the pure
meaning of a list of them, used by tests and by the client to predict the result.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from labelsync.core.model import JSON
from labelsync.core.route_shape import with_static_members


@dataclass(frozen=True)
class AddRoute:
    """PUT .../routes/<index>: insert `route` before the element at `index`."""

    index: int
    route: JSON

    @property
    def route_id(self) -> str:
        return str(self.route["@id"])


@dataclass(frozen=True)
class ReplaceRoute:
    """PATCH /id/<route_id>: replace the whole route in place."""

    route_id: str
    route: JSON


@dataclass(frozen=True)
class ReplaceUpstreams:
    """PATCH /id/<route_id>/handle/0/upstreams: only the static member list changed."""

    route_id: str
    upstreams: list[JSON]


@dataclass(frozen=True)
class DeleteRoute:
    """DELETE /id/<route_id>."""

    route_id: str


Operation = AddRoute | ReplaceRoute | ReplaceUpstreams | DeleteRoute


def _position(routes: list[JSON], route_id: str) -> int:
    for i, route in enumerate(routes):
        if route.get("@id") == route_id:
            return i
    raise KeyError(route_id)


def apply_operations(routes: list[JSON], operations: list[Operation]) -> list[JSON]:
    """The server's `routes` list after `operations`, as Caddy would leave it.

    A new list: routes that no operation touches are shared with `routes` (copying a
    thousand routes for one change would cost more than the change), touched ones are
    copies, so neither `routes` nor the operations' routes are ever mutated.
    """
    result = list(routes)
    for op in operations:
        match op:
            case AddRoute(index=index, route=route):
                result.insert(index, copy.deepcopy(route))
            case ReplaceRoute(route_id=route_id, route=route):
                result[_position(result, route_id)] = copy.deepcopy(route)
            case ReplaceUpstreams(route_id=route_id, upstreams=upstreams):
                position = _position(result, route_id)
                result[position] = with_static_members(result[position], copy.deepcopy(upstreams))
            case DeleteRoute(route_id=route_id):
                del result[_position(result, route_id)]
    return result


def describe_operations(operations: list[Operation], fallback: frozenset[str]) -> list[str]:
    """What `operations` wrote, one phrase each, for writes no pool change explains (a
    deferred fallback list, a route put back or repaired). `fallback`: the ids of routes
    whose member list is only the fallback of dynamic upstreams."""
    phrases: list[str] = []
    for op in operations:
        match op:
            case AddRoute():
                phrases.append(f"route {op.route_id} added")
            case ReplaceRoute(route_id=route_id):
                phrases.append(f"route {route_id} replaced")
            case ReplaceUpstreams(route_id=route_id, upstreams=upstreams):
                which = "fallback member list" if route_id in fallback else "member list"
                phrases.append(f"route {route_id} {which} written ({len(upstreams)} member(s))")
            case DeleteRoute(route_id=route_id):
                phrases.append(f"route {route_id} removed")
    return phrases
