"""Golden files: containers and their labels in, Caddy routes and problems out.

Each `tests/golden/<name>.txt` holds a YAML document describing containers, a line
`---- expect ----`, then what labelsync makes of them: one line per problem
(`error: ...` / `warning: ...`) followed by the routes JSON in static upstream mode.
An optional `---- expect dynamic ----` section holds the routes in dynamic mode.

The YAML document::

    description: what the file shows
    default_network: app          # optional, LABELSYNC_NETWORK
    prefix: labelsync             # optional, LABELSYNC_LABEL_PREFIX
    containers:
      - name: web-1
        created: 100              # seconds, or an ISO time; default: file order
        labels: {labelsync.host: app.example.com}
        networks: {app: 172.18.0.2}   # default: {app: 172.18.0.<10 + position>}
        ports: [8080]             # exposed TCP ports; default [8080]
        state: running            # default
        health: healthy           # default: no HEALTHCHECK
        host_network: false       # default
        engine: b                 # several engines (core/engines.py): its engine's name,
        reach: published          #   how it is reached (default: container),
        host_address: 10.0.0.2    #   the engine's host address (default: none)
        published: ["8080:0.0.0.0:32768", "8080:[::]:32768"]  # port:host address:host port

Every scalar is read as a string (YAML's BaseLoader), so `on`, `08` and `1:30` reach
the label parser exactly as written. To rewrite the expectations after a deliberate
change, run `LABELSYNC_REGEN_GOLDEN=1 pytest tests/test_golden.py` and review the diff.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from labelsync.caddy.render import RenderOptions, render_routes
from labelsync.core.engines import Reach
from labelsync.core.labels import HEADER_KEY, KEYS, ROUTE_KEY
from labelsync.core.model import ContainerInfo, DesiredState, PublishedPort
from labelsync.core.pools import build_desired

GOLDEN_DIR = Path(__file__).parent / "golden"
EXPECT = "---- expect ----"
EXPECT_DYNAMIC = "---- expect dynamic ----"
REGENERATE = os.environ.get("LABELSYNC_REGEN_GOLDEN") == "1"
FIRST_CREATED = 1_700_000_000.0


@dataclass(frozen=True)
class Golden:
    path: Path
    head: str  # the YAML document, as written
    containers: tuple[ContainerInfo, ...]
    prefix: str
    default_network: str | None
    expected: str  # everything after EXPECT, dynamic section included
    has_dynamic: bool

    def desired(self, *, dynamic: bool) -> DesiredState:
        return build_desired(
            self.containers,
            prefix=self.prefix,
            default_network=self.default_network,
            dynamic=dynamic,
        )


def read_golden(path: Path) -> Golden:
    text = path.read_text()
    head, separator, expected = text.partition(f"\n{EXPECT}\n")
    if not separator:
        raise ValueError(f"{path}: no line {EXPECT!r}")
    document = yaml.load(head, Loader=yaml.BaseLoader) or {}
    containers = tuple(
        _container(entry, position) for position, entry in enumerate(document["containers"])
    )
    return Golden(
        path=path,
        head=head,
        containers=containers,
        prefix=document.get("prefix", "labelsync"),
        default_network=document.get("default_network"),
        expected=expected,
        has_dynamic=EXPECT_DYNAMIC in expected,
    )


def _container(entry: dict[str, Any], position: int) -> ContainerInfo:
    name = entry["name"]
    networks = entry.get("networks", {"app": f"172.18.0.{10 + position}"})
    return ContainerInfo(
        id=entry.get("id", f"{name}-id"),
        name=name,
        created=_created(entry.get("created"), position),
        labels=dict(entry.get("labels", {})),
        state=entry.get("state", "running"),
        health=entry.get("health"),
        networks=dict(networks),
        exposed_ports=tuple(sorted(int(p) for p in entry.get("ports", ["8080"]))),
        host_network=entry.get("host_network", "false") == "true",
        engine=entry.get("engine"),
        reach=Reach(entry.get("reach", Reach.CONTAINER)),
        host_address=entry.get("host_address"),
        published=tuple(_published(text) for text in entry.get("published", [])),
    )


def _published(text: str) -> PublishedPort:
    port, _, rest = text.partition(":")
    host_ip, _, host_port = rest.rpartition(":")
    return PublishedPort(int(port), host_ip.strip("[]"), int(host_port))


def _created(value: str | None, position: int) -> float:
    if value is None:
        return FIRST_CREATED + 60 * position
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(value).timestamp()


def expectation(golden: Golden) -> str:
    """What the file's expect sections should say, computed from its containers."""
    static = golden.desired(dynamic=False)
    lines = [f"{problem.severity}: {problem}" for problem in static.problems]
    lines.append(_routes_json(static, RenderOptions(upstreams="static")))
    if golden.has_dynamic:
        lines.append(EXPECT_DYNAMIC)
        lines.append(_routes_json(golden.desired(dynamic=True), RenderOptions()))
    return "\n".join(lines) + "\n"


def _routes_json(desired: DesiredState, options: RenderOptions) -> str:
    return json.dumps(render_routes(desired, options), indent=2, sort_keys=True)


GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.txt"))


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_golden(path: Path) -> None:
    golden = read_golden(path)
    produced = expectation(golden)
    if REGENERATE:
        path.write_text(f"{golden.head}\n{EXPECT}\n{produced}")
        return
    assert produced == golden.expected


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_golden_problems_do_not_depend_on_upstream_mode(path: Path) -> None:
    """The same problems in both modes, but for the one only dynamic mode has: https
    members whose certificate nothing lets Caddy verify (it checks resolver names)."""
    golden = read_golden(path)
    shared = [
        p
        for p in golden.desired(dynamic=True).problems
        if not p.key.endswith(".tls.server_name") or "dynamic upstreams" not in p.message
    ]
    assert tuple(shared) == golden.desired(dynamic=False).problems


def test_goldens_use_every_label_key() -> None:
    """The golden files double as the label reference: each key appears in one."""
    used: set[str] = set()
    for path in GOLDEN_FILES:
        golden = read_golden(path)
        base = golden.prefix + "."
        for container in golden.containers:
            for key in container.labels:
                relative = key.removeprefix(base)
                if relative.startswith(ROUTE_KEY):
                    relative = relative[len(ROUTE_KEY) :].partition(".")[2]
                used.add(HEADER_KEY if relative.startswith(HEADER_KEY) else relative)
    assert {*KEYS, HEADER_KEY} - used == set()
