"""What the sources tell the loop: one change signal from Docker, or from the stream itself."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class EventKind(StrEnum):
    """Where an event comes from; the values are the `kind` label of the events metric."""

    CONTAINER = "container"
    NETWORK = "network"
    SERVICE = "service"
    SWARM = "swarm"  # tasks changed somewhere in the cluster (seen by polling)
    STREAM_UP = "stream-up"  # the event stream (re)connected: everything may have changed
    STREAM_DOWN = "stream-down"  # the event stream was lost: Docker is unreachable
    # One of several engines (core/engines.py) came back or went out while others answer.
    ENGINE_UP = "engine-up"
    ENGINE_DOWN = "engine-down"

    @property
    def is_stream(self) -> bool:
        return self in (EventKind.STREAM_UP, EventKind.STREAM_DOWN)

    @property
    def is_connection(self) -> bool:
        """Docker's reachability changed: the whole stream, or one of several engines."""
        return self.is_stream or self in (EventKind.ENGINE_UP, EventKind.ENGINE_DOWN)


@dataclass(frozen=True)
class DockerEvent:
    """One change signal from Docker, or a synthetic change in the stream itself."""

    kind: EventKind
    action: str  # start, die, "health_status: healthy", connect, ...; "" for stream-up/down
    container_id: str | None
    time_ns: int  # Docker's timeNano; 0 for stream-up/down
    engine: str | None = None  # which engine, when labelsync reads several

    def __post_init__(self) -> None:
        # Accept the plain value too (`DockerEvent("container", ...)`): always the enum after.
        object.__setattr__(self, "kind", EventKind(self.kind))

    @property
    def verb(self) -> str:
        """The action without its detail: `health_status: healthy` -> `health_status`."""
        return self.action.split(":", 1)[0].strip()


STREAM_UP = DockerEvent(EventKind.STREAM_UP, "", None, 0)
STREAM_DOWN = DockerEvent(EventKind.STREAM_DOWN, "", None, 0)
SWARM_CHANGE = DockerEvent(EventKind.SWARM, "tasks-changed", None, 0)
