"""What the report layer reads of the daemon, as Protocols: the report's ports.

The report layer does not import the loop: it states what it reads here, and the loop's
objects (`Reconciler`, its `SyncState`, the Caddy admin client, the membership channel)
satisfy these. Tests plug in stand-ins (`tests/support/snapshots.FakeLoop`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from labelsync.core.model import ContainerInfo, DesiredState, MemberHealth, Route
from labelsync.settings import Settings

HealthListener = Callable[[str, str, bool, str], None]  # pool id, address, healthy, reason


class LoopState(Protocol):
    """What one reconciler knows (its `SyncState`)."""

    docker_up: bool
    caddy_up: bool
    last_apply_ok: bool
    last_error: str | None
    admin_writes: int
    desired: DesiredState | None
    containers: tuple[ContainerInfo, ...]
    synced: asyncio.Event

    @property
    def refused(self) -> Mapping[str, str]:  # pool id -> why Caddy refused it (quarantined)
        ...


class AdminCounters(Protocol):
    """The Caddy admin client of one endpoint, as far as it counts what it sent."""

    @property
    def endpoint(self) -> str: ...
    @property
    def requests_sent(self) -> int: ...
    @property
    def bytes_sent(self) -> int: ...


class ObservedLoop(Protocol):
    """One reconciler: its state, its Caddy, its (live) settings, its parse memo, and its
    pools outside the dynamic budget."""

    @property
    def state(self) -> LoopState: ...
    @property
    def caddy(self) -> AdminCounters: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def json_pools(self) -> frozenset[str]:
        """The pools whose members Caddy reads from the route's JSON, not the resolver
        (quiet pools outside the dynamic budget, see membership/budget.py)."""
        ...

    def routes_of(self, container: ContainerInfo) -> Sequence[Route]: ...


class HealthSource(Protocol):
    """labelsync's own active checks (dynamic mode)."""

    def states(self) -> Mapping[tuple[str, str], MemberHealth]: ...
    @property
    def probes(self) -> int: ...
    @property
    def on_health_change(self) -> list[HealthListener]: ...
