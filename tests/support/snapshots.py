"""Snapshots for report tests: a loop stand-in with what the report layer reads."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from labelsync.core.labels import parse_container
from labelsync.core.model import ContainerInfo, Route
from labelsync.loop.reconcile import SyncState
from labelsync.report.snapshot import Snapshot, build_snapshot
from labelsync.report.status_report import StatusReport, build_report
from labelsync.settings import Settings


@dataclass
class FakeLoop:
    """What the report layer reads of a reconciler (`ObservedLoop`)."""

    state: SyncState
    caddy: Any = field(
        default_factory=lambda: SimpleNamespace(endpoint="x", requests_sent=0, bytes_sent=0)
    )
    settings: Settings = field(default_factory=Settings)
    json_pools: frozenset[str] = frozenset()

    def routes_of(self, container: ContainerInfo) -> Sequence[Route]:
        routes, _ = parse_container(
            container, prefix=self.settings.label_prefix, default_network=self.settings.network
        )
        return routes


def snapshot_of(
    states: Sequence[SyncState], settings: Settings | None = None, endpoints: Sequence[str] = ()
) -> Snapshot:
    settings = settings or Settings()
    names = list(endpoints) or ["x"] * len(states)
    loops = [
        FakeLoop(
            state,
            SimpleNamespace(endpoint=name, requests_sent=0, bytes_sent=0),
            settings,
        )
        for state, name in zip(states, names, strict=True)
    ]
    return build_snapshot(loops, settings=settings)


def report_of(snapshot: Snapshot) -> StatusReport:
    """The report `labelsync status` builds from the state file the daemon writes (the
    snapshot through its JSON, as another process reads it back)."""
    read_back = Snapshot.from_json(json.loads(json.dumps(snapshot.to_json())))
    return build_report(
        caddy_admin="http://127.0.0.1:2019",
        caddy_server="labelsync",
        routes=None,
        upstreams=[],
        caddy_health=None,
        snapshot=read_back,
    )
