"""Whatever labels labelsync accepts, Caddy accepts: generated label sets, a real Caddy.

Random label sets (every known key, values from a catalogue of near misses and random
text rich in regex and duration characters) are parsed and rendered like the daemon
does, in both upstream modes, and loaded into a scratch Caddy with `POST /load`. A route
labelsync accepted and Caddy refused is a validator gap: it would be quarantined at run
time. Loads go in batches of pools; a refused batch is split to name the pool.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from random import Random

import httpx
import pytest

from labelsync.caddy.render import RenderOptions, render_config
from labelsync.core.labels import KEYS, parse_container
from labelsync.core.model import ContainerInfo, DesiredState, Pool, Severity
from labelsync.core.pools import build_desired
from tests.support.caddy import CaddyProcess, admin_client
from tests.test_labels_properties import VALUES

pytestmark = pytest.mark.caddy

ROUNDS = 150
CONTAINERS_PER_ROUND = 12
REGEXES = [
    "ok++",
    "ok*+",
    "a?+",
    "a{2}+",
    "(?>a)",
    "(?<=a)b",
    "(?<!a)b",
    "(?!x)",
    "\\1",
    "(a)\\1",
    "\\Z",
    "\\A",
    "\\z",
    "\\u0041",
    "\\x41",
    "\\x{41}",
    "\\N{DIGIT ONE}",
    "(?x) a b",
    "(?i)ok",
    "(?s).",
    "(?U)a+",
    "(?a)a",
    "(?P<n>a)",
    "(?<n>a)",
    "(?P=n)",
    "[[:alpha:]]",
    "[a-",
    "\\pL",
    "\\p{Greek}",
    "a{1000}",
    "a{1001}",
    "a{2,1}",
    "a**",
    "(a*)*",
    "\\Q.*\\E",
    "\\C",
    "\\h",
    "\\e",
    "\\G",
    "^ok$",
    "ok|",
    "|",
    "()",
    "[]a]",
    "[^]",
    "\\b",
    "\\B",
    "\\d+",
    "(?#c)",
]
DURATIONS = ["1s", "0.5s", "1h", "1d", "1w", "-1s", "1e3s", "1.5.2s", "1µs", "1us", "100"]
ALPHABET = "ab01+*?{}()[]^$|\\.:-_/ ,smhµ%=<>!#\n"


def random_value(rng: Random, key: str) -> str:
    pick = rng.random()
    if key.endswith("body") and pick < 0.8:
        return rng.choice(REGEXES)
    if (
        key.endswith(("interval", "timeout", "duration", "latency", "dial", "header"))
        and pick < 0.5
    ):
        return rng.choice(DURATIONS)
    if pick < 0.35:
        return rng.choice(VALUES)
    if pick < 0.6:
        return rng.choice(REGEXES)
    if pick < 0.7:
        return rng.choice(DURATIONS)
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 12)))


def random_container(rng: Random, index: int) -> ContainerInfo:
    labels = {"labelsync.host": f"fuzz-{index}.example.com", "labelsync.port": "8080"}
    if rng.random() < 0.5:
        labels["labelsync.health.path"] = "/health"
    for key in rng.sample(sorted(KEYS), rng.randint(2, 8)):
        if key not in ("host", "port", "address", "network", "enable"):
            labels[f"labelsync.{key}"] = random_value(rng, key)
    container = _container(index, labels)
    # Drop the labels labelsync refuses: what is left is what it accepts, the set that
    # must load into Caddy (otherwise most sets would be refused whole, and say nothing).
    for _ in range(6):
        _, problems = parse_container(container)
        bad = {p.key for p in problems if p.severity == Severity.ERROR}
        if not bad:
            break
        labels = {k: v for k, v in labels.items() if k not in bad}
        container = _container(index, labels)
    return container


def _container(index: int, labels: dict[str, str]) -> ContainerInfo:
    return ContainerInfo(
        id=f"c{index}",
        name=f"fuzz-{index}",
        created=float(index),
        labels=labels,
        networks={"net": f"10.1.{index // 250}.{index % 250 + 1}"},
        exposed_ports=(8080,),
    )


@pytest.fixture(scope="module")
def scratch() -> Iterator[tuple[CaddyProcess, httpx.Client]]:
    process = CaddyProcess("validator-fuzz").start()
    client = admin_client(base_url=process.admin_url, timeout=30)
    try:
        yield process, client
    finally:
        client.close()
        process.stop()


def refused(
    caddy: CaddyProcess, admin: httpx.Client, pools: list[Pool], options: RenderOptions
) -> str | None:
    """Caddy's error for a config of these pools, None when it loads."""
    config = render_config(
        DesiredState(tuple(pools), ()),
        options,
        listen=[f"127.0.0.1:{caddy.http_port}"],
        auto_https="off",
    )
    body = {**caddy.base_config(), "apps": config["apps"]}
    for attempt in range(5):
        try:
            response = admin.post("/load", json=body)
            break
        except httpx.TransportError:  # the admin listener restarts with each load
            if attempt == 4:
                raise
            time.sleep(0.1)
    return None if response.status_code == 200 else response.text


def culprits(
    caddy: CaddyProcess, admin: httpx.Client, pools: list[Pool], options: RenderOptions
) -> list[tuple[Pool, str]]:
    """The pools Caddy refuses on their own (bisecting a refused batch)."""
    error = refused(caddy, admin, pools, options)
    if error is None:
        return []
    if len(pools) == 1:
        return [(pools[0], error)]
    middle = len(pools) // 2
    return culprits(caddy, admin, pools[:middle], options) + culprits(
        caddy, admin, pools[middle:], options
    )


def test_caddy_accepts_every_route_labelsync_accepts(
    scratch: tuple[CaddyProcess, httpx.Client],
) -> None:
    caddy, admin = scratch
    rng = Random(14)
    tried = accepted = 0
    gaps: list[str] = []
    for round_number in range(ROUNDS):
        containers = [
            random_container(rng, round_number * CONTAINERS_PER_ROUND + i)
            for i in range(CONTAINERS_PER_ROUND)
        ]
        tried += len(containers)
        for mode in ("static", "dynamic"):
            desired = build_desired(containers, dynamic=mode == "dynamic")
            if mode == "static":
                accepted += len(desired.pools)
            for pool, error in culprits(
                caddy, admin, list(desired.pools), RenderOptions(upstreams=mode)
            ):
                labels = next(
                    c.labels for c in containers if c.name == pool.members[0].container_name
                )
                gaps.append(f"[{mode}] {dict(labels)}: {error}")
    print(
        f"\nvalidator vs Caddy: {tried} label sets tried, {accepted} accepted by labelsync, "
        f"{len(gaps)} of those refused by Caddy"
    )
    assert not gaps, "\n".join(gaps[:20])
