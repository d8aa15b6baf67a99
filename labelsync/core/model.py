"""Plain, frozen records that flow through the pure core.

The edges (Docker, the static file) convert what they read into `ContainerInfo`
once; everything after that — labels, pools, render, diff — works on these records
only, so it can be tested without Docker or Caddy.

A pool is split into its *shape* (hosts, path, policy, checks, transport: what the
Caddy JSON holds in every mode) and its *members* (which replicas, in which order,
with which weight). In dynamic upstream mode members never reach Caddy's config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from labelsync.core.engines import Reach

JSON = dict[str, Any]  # a Caddy config object, as the admin API reads and writes it


# The ids of the static file's synthetic containers (`static:<file>:<route>:<index>`)
# and the `Problem.container` of its problems (`static:<file>[<route>]`) start with this.
STATIC_PREFIX = "static:"


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


class ProblemCause(StrEnum):
    """What a problem is, for code that treats one kind apart (never shown to users)."""

    NO_PORT = "no_port"  # the container exposes no port and `port` is not set


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the input, as data; the edges decide how to log it."""

    severity: Severity
    container: str  # container name, or "static:<file>[route]" for static routes
    key: str  # full label key, e.g. "labelsync.lb.policy"; "" when not about one key
    value: str | None
    message: str
    line: int | None = None  # static routes: the key's line in the file, when known
    # Set on the problems some caller recognises (`check` rewords NO_PORT for a compose
    # service whose image was not inspected); not part of equality, as the text says it.
    cause: ProblemCause | None = field(default=None, compare=False)

    def __str__(self) -> str:
        where = f"container {self.container!r}"
        file, _, route = self.container.removeprefix(STATIC_PREFIX).partition("[")
        if self.container.startswith(STATIC_PREFIX) and route.endswith("]"):
            # A route in a file: in the file's own terms, keys without the label prefix.
            where = f"static file {file}, [routes.{route[:-1]}]"
            if self.line is not None:
                where += f", line {self.line}"
        elif self.container.startswith(STATIC_PREFIX):
            where = f"static file {self.container.removeprefix(STATIC_PREFIX)}"
        if not self.key:
            return f"{where}: {self.message}"
        if self.value is None:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.key}={self.value!r}: {self.message}"


class Track(StrEnum):
    """A member's `track` label: canary members share `split` percent of the requests."""

    STABLE = "stable"
    CANARY = "canary"


class Origin(StrEnum):
    """Where a route (and so a pool member) comes from."""

    CONTAINER = "container"
    STATIC = "static"  # an upstream of the static file


class Membership(StrEnum):
    """How Caddy learns a pool's members."""

    RESOLVER = "resolver"  # dynamic upstreams: SRV answers of labelsync's resolver
    JSON = "json"  # in the route itself: static mode, or a quiet pool outside the budget


class HealthStatus(StrEnum):
    """A pool member's health as judged from every check that has a verdict on it."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"  # no verdict yet, or no check configured


class PublishedPort(NamedTuple):
    """A container's TCP port as its engine publishes it on the engine's host."""

    port: int  # the container's port
    host_ip: str  # the host address it is bound to: "0.0.0.0" or "::" for every one
    host_port: int


@dataclass(frozen=True)
class ContainerInfo:
    """What labelsync needs to know of one container, read once at the edge."""

    id: str
    name: str
    created: float  # seconds since the epoch
    labels: Mapping[str, str]
    state: str = "running"  # Docker's State.Status: running, paused, exited, ...
    health: str | None = None  # healthy, unhealthy, starting; None without HEALTHCHECK
    networks: Mapping[str, str] = field(default_factory=dict)  # network name -> IPv4
    exposed_ports: tuple[int, ...] = ()  # TCP ports, sorted
    compose_project: str | None = None
    compose_service: str | None = None
    host_network: bool = False
    # Several engines (core/engines.py): the engine's name, and how Caddy reaches its
    # containers: their own address, or the published port at `host_address` (None: the
    # port's own host address, else 127.0.0.1).
    engine: str | None = None
    published: tuple[PublishedPort, ...] = ()  # sorted; IPv4 bindings first
    reach: Reach = Reach.CONTAINER
    host_address: str | None = None

    @property
    def is_up(self) -> bool:
        """Its processes exist (running or paused): it holds its address and may serve
        again without a start."""
        return self.state in ("running", "paused")

    @property
    def origin(self) -> Origin:
        """A static-file upstream (its id starts with `STATIC_PREFIX`), or a container."""
        return Origin.STATIC if self.id.startswith(STATIC_PREFIX) else Origin.CONTAINER

    @property
    def is_serving(self) -> bool:
        """Running, and healthy when it has a HEALTHCHECK."""
        if self.state != "running":
            return False
        return self.health in (None, "healthy")


@dataclass(frozen=True)
class ActiveHealth:
    path: str
    interval: str = "30s"  # Go duration strings, normalised
    timeout: str = "5s"
    # Expected status as Caddy writes it: an exact code (200) or a class digit (2 = 2xx).
    expect_status: int = 200
    port: int | None = None
    body: str | None = None
    passes: int = 1
    fails: int = 1
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PassiveHealth:
    fail_duration: str = "30s"
    max_fails: int = 3
    unhealthy_latency: str | None = None  # None = off
    # Status codes or class digits (5 = 5xx), as Caddy's unhealthy_status takes them.
    unhealthy_status: tuple[int, ...] = ()


RETRIES_AUTO = "auto"
DEFAULT_COOKIE_NAME = "lb"  # `lb.policy=cookie` without `lb.key` (Caddy's own default too)


@dataclass(frozen=True)
class PoolSettings:
    """Pool keys: every member of a pool must agree on these."""

    scheme: str = "http"  # http | https | h2c
    tls_skip_verify: bool = False
    tls_server_name: str | None = None
    split: int = 0  # percent to canary members
    lb_policy: str = "random"
    lb_key: str | None = None  # cookie/header/query name
    lb_choose: int = 2
    lb_retries: int | str = RETRIES_AUTO  # int or "auto"
    lb_try_duration: str | None = None
    lb_try_interval: str | None = None
    active: ActiveHealth | None = None
    passive: PassiveHealth | None = None
    timeout_dial: str | None = None
    timeout_response_header: str | None = None


@dataclass(frozen=True)
class Route:
    """One route of one container (or of one static-file entry), parsed and valid."""

    container_id: str
    container_name: str
    created: float
    route_name: str  # "" for the default route
    hosts: tuple[str, ...]  # lower-cased, sorted, unique
    path: str | None
    settings: PoolSettings
    # member keys, resolved at the edge of the container
    address: str  # "host:port" this member is dialled at
    weight: int = 1
    order: int | None = None
    track: Track = Track.STABLE
    origin: Origin = Origin.CONTAINER
    # Running (or paused) containers define a pool's shape before stopped ones do;
    # only serving ones (running, healthy, not leaving) are members. A pool whose
    # members all stopped keeps its route, so a crash writes no Caddy config.
    running: bool = True
    serving: bool = True
    # Told to stop (a kill or stop event came) but still running and serving, as a
    # replica that drains does: not a member, a last resort (`Pool.draining`).
    draining: bool = False
    # Created and never started yet (`docker run` and `compose up` start it a moment later).
    starting: bool = False


PoolKey = tuple[tuple[str, ...], str | None]  # (hosts, path)


@dataclass(frozen=True)
class Member:
    address: str  # "host:port"
    container_id: str
    container_name: str
    weight: int = 1  # effective weight, after split
    track: Track = Track.STABLE
    origin: Origin = Origin.CONTAINER


@dataclass(frozen=True)
class PoolShape:
    """Everything about a pool except which members it has."""

    id: str  # stable Caddy @id, "labelsync-..."
    hosts: tuple[str, ...]
    path: str | None
    settings: PoolSettings
    retries: int | None  # resolved lb.retries; None = not written


@dataclass(frozen=True)
class Pool:
    shape: PoolShape
    members: tuple[Member, ...]  # in selection order (`first`: by order, then created)
    # Leaving replicas still running (SIGTERM sent, draining). Never members; the
    # resolver answers them only while no member passes its check, so a roll that stops
    # the old replica as its successor starts is served by the old one until the new
    # one answers.
    draining: tuple[Member, ...] = ()
    # No member, and every container of the pool was created and never started. Its
    # route is not written until a member starts (it would cost a second write for its
    # members or fallback list, and a route that is invalid once started, a missing port
    # say, would cost two), nor deleted while Caddy holds it (a `compose up` that
    # recreates a service removes the old container before it starts the new one).
    awaiting_start: bool = False

    @property
    def id(self) -> str:
        return self.shape.id


@dataclass(frozen=True)
class DesiredState:
    pools: tuple[Pool, ...]  # sorted as the routes must appear in Caddy
    problems: tuple[Problem, ...] = ()

    def pool(self, pool_id: str) -> Pool | None:
        return next((p for p in self.pools if p.id == pool_id), None)


@dataclass
class MemberHealth:
    """The verdict of labelsync's active check of one member (dynamic mode), as it goes."""

    healthy: bool = True
    reason: str = "not checked yet"
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    pending: bool = False  # new, and no check has passed yet: not answered (not healthy)

    @property
    def checked(self) -> bool:
        """False until a check gave a result (a pending member: until one failed, so a
        member whose checks never pass is reported as failing, with why)."""
        if self.pending:
            return self.failures > 0
        return bool(self.successes or self.failures) or not self.healthy
