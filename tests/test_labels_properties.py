"""Properties of the label parser and the pool builder, over generated input.

- parse_container turns any labels on any container into routes or problems, never an
  exception, and every route it returns can be dialled ("host:port").
- build_pools is deterministic and does not depend on the order routes arrive in.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from random import Random

from hypothesis import given, settings
from hypothesis import strategies as st

from labelsync.core.label_values import is_dns_name
from labelsync.core.labels import HEADER_KEY, KEYS, parse_container
from labelsync.core.model import ContainerInfo, Problem, Route
from labelsync.core.pools import ParseMemo, build_desired, build_pools

PREFIX = "labelsync"
SETTINGS = settings(max_examples=200, deadline=None)

VALUES = [
    "a.example.com",
    "B.example.com, a.example.com",
    "*.example.com",
    "localhost",
    "::1",
    "/",
    "/api/*",
    "api",
    "80",
    "443",
    "8443",
    "0",
    "-1",
    "3.0",
    "65536",
    "1000001",
    "true",
    "OFF",
    "yes",
    "ture",
    "1s",
    "250ms",
    "1m30s",
    "5",
    "0s",
    "2xx",
    "204",
    "600",
    "5xx,429",
    "random",
    "round_robin",
    "weighted_round_robin",
    "first",
    "cookie",
    "header",
    "query",
    "random_choose",
    "rond_robin",
    "auto",
    "stable",
    "canary",
    "http",
    "https",
    "h2c",
    "net",
    "front",
    "10.0.0.1:8080",
    "[fd00::1]:80",
    "backend:9000",
    "host-only",
    "(",
    "^ok$",
    "(?=x)",
    "a{2000}",
    "X-Token",
    "",
    " ",
    "\n",
]
NAMES = st.sampled_from(["api", "admin", "x", ""]) | st.text(max_size=6)
KNOWN_KEYS = st.sampled_from(sorted(KEYS))


@st.composite
def label_keys(draw: st.DrawFn) -> str:
    key = draw(
        KNOWN_KEYS | st.builds(lambda n: HEADER_KEY + n, st.text(max_size=8)) | st.text(max_size=20)
    )
    if draw(st.booleans()):
        key = f"route.{draw(NAMES)}.{key}"
    where = draw(st.sampled_from([f"{PREFIX}.", f"{PREFIX}.", "", "other."]))
    return where + key


VALUE = st.sampled_from(VALUES) | st.text(max_size=30)
IPS = st.sampled_from(["172.18.0.2", "10.0.0.9", "fd00::2", "", "not-an-ip"]) | st.text(max_size=8)


PLAUSIBLE_LABELS = st.fixed_dictionaries(
    {},
    optional={
        f"{PREFIX}.host": st.sampled_from(["a.example.com", "*.b.com, A.com", "localhost"]),
        f"{PREFIX}.route.api.host": st.sampled_from(["api.example.com", "::1"]),
        f"{PREFIX}.address": st.sampled_from(["10.0.0.1:8080", "[fd00::1]:80", "b:9", "b"]),
        f"{PREFIX}.port": st.sampled_from(["80", "443", "0"]),
        f"{PREFIX}.network": st.sampled_from(["net", "front", "nope"]),
    },
)


@st.composite
def containers(draw: st.DrawFn) -> ContainerInfo:
    """Any container: junk labels over plausible ones, so some routes come out."""
    labels = draw(PLAUSIBLE_LABELS)
    labels.update(draw(st.dictionaries(label_keys(), VALUE, max_size=10)))
    ports = st.sets(st.integers(0, 70000), max_size=3) | st.sets(st.just(80), max_size=1)
    return ContainerInfo(
        id=draw(st.sampled_from(["c1", "static:extra.toml[x]"]) | st.text(max_size=10)),
        name=draw(st.text(max_size=10)),
        created=draw(st.floats(min_value=0, max_value=2e9, allow_nan=False)),
        labels=labels,
        networks=draw(
            st.dictionaries(
                st.sampled_from(["net", "front", "back"]) | st.text(max_size=5), IPS, max_size=3
            )
        ),
        exposed_ports=tuple(sorted(draw(ports))),
        host_network=draw(st.booleans()),
    )


def is_dialable(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    if not sep or not re.fullmatch(r"[0-9]+", port) or not 1 <= int(port) <= 65535:
        return False
    if host.startswith("["):
        return host.endswith("]") and ipaddress.ip_address(host[1:-1]).version == 6
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return is_dns_name(host)


@SETTINGS
@given(containers(), st.sampled_from([None, "net", "front"]))
def test_parse_container_never_raises_and_routes_are_dialable(
    container: ContainerInfo, default_network: str | None
) -> None:
    routes, problems = parse_container(container, default_network=default_network)
    assert all(isinstance(p, Problem) and p.container == container.name for p in problems)
    assert len(set(problems)) == len(problems)
    for route in routes:
        assert is_dialable(route.address), route.address
        assert route.hosts and list(route.hosts) == sorted(set(route.hosts))
        assert route.path is None or route.path.startswith("/")


# Routes that mostly succeed, so the pool properties see real pools.
POOL_LABELS = st.fixed_dictionaries(
    {f"{PREFIX}.host": st.sampled_from(["a.com", "b.com", "a.com,b.com", "*.c.com"])},
    optional={
        f"{PREFIX}.path": st.sampled_from(["/", "/api/*", "/api/v1/*"]),
        f"{PREFIX}.lb.policy": st.sampled_from(["first", "round_robin", "cookie"]),
        f"{PREFIX}.weight": st.sampled_from(["0", "1", "3"]),
        f"{PREFIX}.order": st.sampled_from(["1", "2", "-1"]),
        f"{PREFIX}.track": st.sampled_from(["stable", "canary"]),
        f"{PREFIX}.split": st.sampled_from(["0", "10", "50", "100"]),
        f"{PREFIX}.health.path": st.sampled_from(["/hz", "/ready"]),
        f"{PREFIX}.lb.retries": st.sampled_from(["auto", "0", "3"]),
        f"{PREFIX}.route.api.host": st.sampled_from(["a.com", "api.com"]),
        f"{PREFIX}.route.api.path": st.sampled_from(["/api/*", "/x"]),
    },
)


@st.composite
def pool_routes(draw: st.DrawFn) -> list[Route]:
    routes: list[Route] = []
    count = draw(st.integers(0, 8))
    for index in range(count):
        container = ContainerInfo(
            id=f"id{index}",
            name=draw(st.sampled_from(["web", "api", "z"])) + str(index),
            created=draw(st.sampled_from([1.0, 2.0, 3.0])),
            labels=draw(POOL_LABELS),
            networks={"net": f"10.0.0.{index + 1}"},
            exposed_ports=(80,),
        )
        routes.extend(parse_container(container)[0])
    return routes


@SETTINGS
@given(pool_routes(), st.randoms(use_true_random=False), st.booleans())
def test_build_pools_is_deterministic_and_order_independent(
    routes: list[Route], random: Random, dynamic: bool
) -> None:
    shuffled = list(routes)
    random.shuffle(shuffled)
    first = build_pools(routes, dynamic=dynamic)
    assert build_pools(routes, dynamic=dynamic) == first
    assert build_pools(shuffled, dynamic=dynamic) == first
    pools, _ = first
    assert len({p.id for p in pools}) == len(pools)
    assert sum(len(p.members) for p in pools) <= len(routes)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(containers(), max_size=6),
    st.lists(containers(), max_size=6),
    st.sets(st.integers(0, 5)),
)
def test_a_memoised_build_equals_a_fresh_one(
    first: list[ContainerInfo], second: list[ContainerInfo], relabelled: set[int]
) -> None:
    """The loop's parse memo never changes a result, even when a record keeps its id
    but changes its labels (static-file entries and Swarm services do)."""
    memo = ParseMemo()
    build_desired(first, memo=memo)
    changed = [
        replace(c, labels={**c.labels, "labelsync.lb.policy": "first"}) if i in relabelled else c
        for i, c in enumerate(first)
    ]
    for listing in (changed + second, second, changed):
        assert build_desired(listing, memo=memo) == build_desired(listing)
