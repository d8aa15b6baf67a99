"""What the loop needs from each edge, as Protocols: the loop's ports.

The loop (`Reconciler`) is written against these, never against the concrete edges, so
its tests plug in a listing of records and an in-memory Caddy:

| port | in the daemon | in tests |
|---|---|---|
| `ContainerSource` | `DockerSource`, shared through `fanout.SharedSource` | a list of records |
| `CaddyWriter` | `CaddyAdmin` | `CaddyAdmin` over `tests/support/memory_caddy` |
| `MembershipPublisher` | `DynamicMembership` | a recorder |
| `StaticRoutes` | `StaticFile`, shared through `fanout.SharedStatic` | |
| `SyncObserver` | `Metrics`, `Observability` | the benchmarks' recorders |
| `MetricsReader` | `CaddyAdmin` (a client of its own) | `CaddyAdmin` over `memory_caddy` |

`MembershipChannel` is the publisher as the daemon sees it: with the health checks'
state and flips that the report reads (`report.snapshot.HealthSource`), and the
resolver whose reachability is checked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from labelsync.caddy.operations import Operation
from labelsync.core.events import DockerEvent
from labelsync.core.model import JSON, ContainerInfo, DesiredState, Problem
from labelsync.core.outcomes import SyncResult
from labelsync.report.snapshot import AdminCounters, HealthSource

if TYPE_CHECKING:
    from labelsync.membership.resolver import Resolver


class ContainerSource(Protocol):
    """Containers as records, and the signals that they may have changed."""

    @property
    def endpoint(self) -> str:
        """Where the containers come from, for messages."""
        ...

    async def snapshot(self) -> Sequence[ContainerInfo]:
        """Every container now; raises `DockerUnavailable` when the engine does not answer."""
        ...

    def events(self) -> AsyncIterator[DockerEvent]:
        """Change signals, forever, with `stream-up`/`stream-down` around outages."""
        ...

    def close(self) -> None:
        """Stop event readers and release connections."""
        ...


class CaddyWriter(AdminCounters, Protocol):
    """One Caddy's admin API, as far as the loop reads and writes it (and, as
    `AdminCounters`, its endpoint and what it sent, for the report).

    Errors are `labelsync.errors.CaddyError`s: `CaddyRefused` for a config Caddy will
    not load, a `CaddyTemporary` for anything that may succeed later.
    """

    async def get(self, path: str) -> tuple[Any, str | None]:
        """The JSON at `path` and its Etag; (None, None) when missing."""
        ...

    async def has_id(self, object_id: str) -> bool:
        """True when Caddy holds an object with this `@id`."""
        ...

    async def server(self, name: str) -> tuple[JSON | None, str | None]:
        """The server `apps.http.servers.<name>` (None when missing) and its Etag."""
        ...

    async def ensure_server(self, name: str, server: JSON) -> bool:
        """Create the server when missing; True when this call created it."""
        ...

    async def apply(
        self,
        server_name: str,
        current_routes: list[JSON],
        operations: list[Operation],
        etag: str | None,
    ) -> None:
        """Send `operations` against `current_routes` as one write, guarded by `etag`."""
        ...


class MembershipPublisher(Protocol):
    """Where live membership goes when it does not go into Caddy's JSON."""

    def publish(self, desired: DesiredState) -> None: ...

    def channels(
        self, desired: DesiredState, now: float
    ) -> tuple[DesiredState, frozenset[str], float | None]:
        """After `publish`: the pools as the JSON carries them, the ids of those whose
        members go into the JSON (outside the dynamic budget), and when (monotonic
        seconds) that set changes next without any event; see membership/budget.py."""
        ...


class MembershipChannel(MembershipPublisher, HealthSource, Protocol):
    """The publisher as the daemon sees it: with the health checks' verdicts, count and
    flips (`HealthSource`, read by the report), and the resolver, whose reachability from
    Caddy is checked once."""

    @property
    def resolver(self) -> Resolver: ...


class StaticRoutes(Protocol):
    """Routes for backends that are not containers (the static file), as records."""

    @property
    def path(self) -> Path: ...

    @property
    def containers(self) -> tuple[ContainerInfo, ...]: ...

    @property
    def problems(self) -> tuple[Problem, ...]: ...

    def reload(self) -> bool:
        """Read again; True when what it yields changed."""
        ...

    def merge_problems(self, problems: tuple[Problem, ...]) -> tuple[Problem, ...]:
        """Its own problems, then those of a build that are not restatements of them."""
        ...

    def changes(self) -> AsyncIterator[None]:
        """Yield after each change that altered what it yields."""
        ...


class SyncObserver(Protocol):
    """Sees every Docker event and every sync (metrics, state file, systemd status).

    `latency` runs from the oldest event the sync covers to the end (None unless the
    result is ok).
    """

    def on_event(self, event: DockerEvent) -> None: ...

    def on_sync(self, result: SyncResult, seconds: float, latency: float | None) -> None: ...


class MetricsReader(Protocol):
    """One Caddy's request counters and the config that turns them on (`loop/traffic.py`).

    Errors are `labelsync.errors.CaddyError`s, as for `CaddyWriter`.
    """

    @property
    def endpoint(self) -> str: ...

    async def metrics_text(self) -> str:
        """Caddy's `/metrics`, as Prometheus text."""
        ...

    async def http_metrics(self) -> Any:
        """`apps.http.metrics`; None when absent."""
        ...

    async def set_http_metrics(self, config: JSON, *, replace: bool) -> None:
        """Write `apps.http.metrics`: over what is there (`replace`), else created."""
        ...

    async def aclose(self) -> None: ...
