"""Routes Caddy refuses are held back one by one; everything else still gets written.

Caddy validates a write as a whole: one route it cannot load (a regular expression RE2
refuses, a module it lacks) fails the whole PATCH with 500, and every other change in
that write stays out with it. So when a write is refused, `isolate` finds the routes to
blame by bisection over the routes the write added or changed (the *suspects*): each
half is written on its own, against Caddy's routes as they are then, with the other
suspects as Caddy holds them (or left out when new). A half that loads is written for
real, so nothing is spent twice: one bad route among N costs about 1 + log2(N) writes,
half of which carry good changes. When the first half of a refused group loads, the
second half is known to be refused without asking.

A refused route is *quarantined*: held at what Caddy has (or left out) until the route
labelsync renders for it changes, i.e. its labels change; then it is tried again. The
fallback member list of a route is not part of that comparison (membership alone never
retries a refused route).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass

from labelsync.caddy.diff import owned_routes
from labelsync.core.model import JSON, ContainerInfo, DesiredState
from labelsync.core.route_shape import without_static_members
from labelsync.errors import CaddyRefused

# Given Caddy's routes as they are now: the routes to write.
MakeTarget = Callable[[list[JSON]], list[JSON]]
# Write the target that `MakeTarget` makes; Caddy's refusal, or None when it loaded.
Write = Callable[[MakeTarget], Awaitable[CaddyRefused | None]]


@dataclass(frozen=True)
class Held:
    """One quarantined route: what was refused and why."""

    route_id: str
    content: JSON  # the route without its member list (`without_static_members`)
    error: CaddyRefused


def revert(current: list[JSON], desired: list[JSON], route_ids: Collection[str]) -> list[JSON]:
    """`desired` with the routes in `route_ids` as Caddy holds them, or left out."""
    if not route_ids:
        return desired
    held = {str(route["@id"]): route for route in owned_routes(current)}
    routes: list[JSON] = []
    for route in desired:
        route_id = str(route["@id"])
        if route_id not in route_ids:
            routes.append(route)
        elif route_id in held:
            routes.append(held[route_id])
    return routes


def keep_held(current: list[JSON], desired: list[JSON]) -> list[JSON]:
    """`desired` plus the owned routes Caddy holds that `desired` lacks, as Caddy holds
    them, each placed before the desired route that follows it in Caddy (so nothing
    moves): for a listing that misses an engine, whose pools must not be deleted."""
    wanted = {str(route["@id"]) for route in desired}
    before: dict[str, list[JSON]] = {}
    pending: list[JSON] = []
    for route in owned_routes(current):
        route_id = str(route["@id"])
        if route_id not in wanted:
            pending.append(route)
        elif pending:
            before[route_id], pending = pending, []
    routes: list[JSON] = []
    for route in desired:
        routes += before.get(str(route["@id"]), [])
        routes.append(route)
    return routes + pending


def suspects(current: list[JSON], target: list[JSON]) -> list[str]:
    """The routes of `target` that are new or changed against `current` (in order)."""
    held = {str(route["@id"]): without_static_members(route) for route in owned_routes(current)}
    return [str(r["@id"]) for r in target if held.get(str(r["@id"])) != without_static_members(r)]


async def isolate(
    write: Write, desired: list[JSON], suspected: list[str], error: CaddyRefused
) -> dict[str, CaddyRefused]:
    """The suspects Caddy refuses on their own, by bisection; the others get written.

    `error` is Caddy's answer to all of `suspected` at once. Writes go through `write`,
    each one against Caddy's routes as they are by then. Empty when no single route is
    to blame (e.g. two routes that only clash together): the caller keeps the refusal.
    """
    accepted: set[str] = set()
    refused: dict[str, CaddyRefused] = {}

    def with_group(group: list[str]) -> MakeTarget:
        keep = accepted | set(group)
        left_out = [route_id for route_id in suspected if route_id not in keep]
        return lambda current: revert(current, desired, left_out)

    async def attempt(group: list[str], known: CaddyRefused | None) -> None:
        answer = known if known is not None else await write(with_group(group))
        if answer is None:
            accepted.update(group)
            return
        if len(group) == 1:
            refused[group[0]] = answer
            return
        middle = len(group) // 2
        first, second = group[:middle], group[middle:]
        before = len(refused)
        await attempt(first, None)
        # All of `first` loaded: `second` on top is exactly the group that was refused.
        await attempt(second, answer if len(refused) == before else None)

    await attempt(list(suspected), error)
    return refused


class Quarantine:
    """The refused routes, held back until their labels change."""

    def __init__(self) -> None:
        self._held: dict[str, Held] = {}

    def __len__(self) -> int:
        return len(self._held)

    @property
    def held(self) -> tuple[Held, ...]:
        return tuple(self._held.values())

    def hold(self, route: JSON, error: CaddyRefused) -> Held:
        held = Held(str(route["@id"]), without_static_members(route), error)
        self._held[held.route_id] = held
        return held

    def release_changed(self, desired: list[JSON]) -> list[str]:
        """Forget routes whose rendering changed or that are gone; their ids."""
        if not self._held:
            return []
        wanted = {str(route["@id"]): route for route in desired}
        released = [
            route_id
            for route_id, held in self._held.items()
            if route_id not in wanted or without_static_members(wanted[route_id]) != held.content
        ]
        for route_id in released:
            del self._held[route_id]
        return released

    def hold_back(self, current: list[JSON], desired: list[JSON]) -> list[JSON]:
        """`desired` with the quarantined routes as Caddy holds them (or left out)."""
        return revert(current, desired, self._held.keys())

    def clear(self) -> None:
        self._held.clear()


# Caddy's error names the JSON field it choked on ("expect_body: compiling ..."): the label
# that sets it, by the end of its key.
CADDY_FIELD_LABELS = (
    ("expect_body", "health.body"),
    ("expect_status", "health.status"),
    ("uri", "health.path"),
    ("selection_policy", "lb.policy"),
    ("try_duration", "lb.try_duration"),
    ("try_interval", "lb.try_interval"),
    ("dial_timeout", "timeout.dial"),
    ("response_header_timeout", "timeout.response_header"),
    ("fail_duration", "health.passive.fail_duration"),
    ("unhealthy_latency", "health.passive.unhealthy_latency"),
    ("unhealthy_status", "health.passive.unhealthy_status"),
    ("server_name", "tls.server_name"),
)


def describe_refusal(
    held: Held, desired: DesiredState, containers: Sequence[ContainerInfo], prefix: str
) -> str:
    """The ERROR line of a quarantined route: its pool, containers, the label(s) whose
    value Caddy's reason quotes (else all of the pool's labels), and the reason."""
    pool = next((p for p in desired.pools if p.shape.id == held.route_id), None)
    names = sorted({m.container_name for m in pool.members}) if pool is not None else []
    where = " ".join(pool.shape.hosts) + (pool.shape.path or "") if pool is not None else ""
    reason = held.error.body or str(held.error)
    labels = [
        (key, value)
        for container in containers
        if container.name in names
        for key, value in sorted(container.labels.items())
        if key.startswith(f"{prefix}.")
    ]
    named = [
        (k, v)
        for k, v in labels
        for field, suffix in CADDY_FIELD_LABELS
        if f"{field}:" in reason and k.endswith(f".{suffix}")
    ]
    quoted = [(k, v) for k, v in labels if len(v.strip()) >= 2 and v.strip() in reason]
    shown = ", ".join(f"{k}={v!r}" for k, v in dict(named or quoted or labels).items())
    who = f"container(s) {', '.join(names)}" if names else "no running container"
    return (
        f"Caddy refused the route of pool {where} ({held.route_id}), {who}: {shown}: "
        f"{reason}; that route stays as Caddy has it (or out) until its labels change, "
        "every other change is applied"
    )
