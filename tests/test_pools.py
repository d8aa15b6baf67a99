"""pools.py: aggregation, conflicts, member order, split weights, retries, pool order."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from labelsync.core.model import (
    ActiveHealth,
    ContainerInfo,
    Member,
    PoolSettings,
    Route,
    Severity,
)
from labelsync.core.names import pool_id
from labelsync.core.pools import (
    DYNAMIC_AUTO_RETRIES,
    ParseMemo,
    build_desired,
    build_pools,
    resolve_retries,
    split_weights,
)


def route(
    name: str,
    created: float = 100.0,
    *,
    hosts: tuple[str, ...] = ("a.example.com",),
    path: str | None = None,
    address: str | None = None,
    route_name: str = "",
    **fields: Any,
) -> Route:
    pool_keys = {k: fields.pop(k) for k in list(fields) if k in PoolSettings.__dataclass_fields__}
    settings = PoolSettings(**pool_keys)
    return Route(
        container_id="id-" + name,
        container_name=name,
        created=created,
        route_name=route_name,
        hosts=hosts,
        path=path,
        settings=settings,
        address=address or f"10.0.0.{sum(map(ord, name)) % 250}:80",
        **fields,
    )


# -- pool_id ----------------------------------------------------------------------------


def test_pool_id_is_readable_stable_and_caddy_safe() -> None:
    first = pool_id(("api.example.com", "b.example.com"), "/api/*")
    assert re.fullmatch(r"labelsync-api-example-com-api-[0-9a-f]{8}", first)
    assert pool_id(["b.example.com", "api.example.com"], "/api/*") == first
    assert pool_id(("api.example.com",), None) != pool_id(("api.example.com",), "/")
    assert re.fullmatch(r"labelsync-example-com-[0-9a-f]{8}", pool_id(("*.example.com",), "/"))
    assert re.fullmatch(r"labelsync-fd00-1-[0-9a-f]{8}", pool_id(("fd00::1",), None))


def test_pool_id_is_a_known_value() -> None:
    # Golden files depend on it: changing the hash input changes every @id users see.
    assert (
        pool_id(("a.example.com",), None)
        == "labelsync-a-example-com-"
        + (__import__("hashlib").sha256(b"a.example.com\0").hexdigest()[:8])
    )


# -- aggregation -------------------------------------------------------------------------


def test_routes_with_the_same_hosts_and_path_form_one_pool() -> None:
    pools, problems = build_pools(
        [route("web-2", 200), route("web-1", 100), route("api", 50, path="/api/*")],
        dynamic=True,
    )
    assert problems == ()
    assert [p.shape.path for p in pools] == ["/api/*", None]
    assert [m.container_name for m in pools[1].members] == ["web-1", "web-2"]
    assert pools[1].members[0] == Member(
        address=route("web-1").address, container_id="id-web-1", container_name="web-1"
    )


def test_members_are_ordered_by_order_then_creation_then_name() -> None:
    pools, _ = build_pools(
        [route("c", 300), route("b", 100), route("a", 100), route("z", 900, order=5)],
        dynamic=False,
    )
    assert [m.container_name for m in pools[0].members] == ["z", "a", "b", "c"]


def test_same_container_twice_in_one_pool_keeps_one_and_warns() -> None:
    pools, problems = build_pools(
        [route("web", route_name="api", address="10.0.0.1:81"), route("web")],
        dynamic=True,
    )
    assert [m.address for m in pools[0].members] == [route("web").address]
    assert [(p.severity, p.container) for p in problems] == [(Severity.WARNING, "web")]
    assert problems[0].message.startswith("routes (default) and 'api' both serve pool ")


# -- conflicts --------------------------------------------------------------------------


def test_disagreeing_pool_keys_use_the_oldest_member_and_warn_once_per_key() -> None:
    pools, problems = build_pools(
        [
            route("new", 300, lb_policy="first", timeout_dial="1s"),
            route("old", 100, lb_policy="round_robin"),
            route("mid", 200, lb_policy="first"),
        ],
        dynamic=True,
    )
    assert pools[0].shape.settings.lb_policy == "round_robin"
    assert pools[0].shape.settings.timeout_dial is None
    pid = pools[0].id
    assert [str(p) for p in problems] == [
        f"container 'mid, new': labelsync.lb.policy: members of pool {pid} disagree "
        f"('round_robin' from old; 'first' from mid, new); using 'round_robin' of the oldest "
        f"member 'old'",
        f"container 'new': labelsync.timeout.dial: members of pool {pid} disagree "
        f"('unset' from old, mid; '1s' from new); using 'unset' of the oldest member 'old'",
    ]


def test_oldest_ties_break_by_name() -> None:
    pools, problems = build_pools(
        [route("b", 1, scheme="https"), route("a", 1, scheme="h2c")],
        dynamic=True,
    )
    assert pools[0].shape.settings.scheme == "h2c"
    assert [p.key for p in problems] == ["labelsync.scheme"]


def test_health_sub_keys_compare_only_between_members_with_checks() -> None:
    check = ActiveHealth(path="/hz", interval="10s")
    _, problems = build_pools(
        [
            route("a", 1, active=check),
            route("b", 2),
            route("c", 3, active=dataclasses.replace(check, interval="5s")),
        ],
        dynamic=True,
    )
    assert [p.key for p in problems] == [
        "labelsync.health.path",
        "labelsync.health.interval",
    ]


def test_custom_prefix_in_conflict_keys() -> None:
    _, problems = build_pools([route("a", 1, split=5), route("b", 2)], dynamic=True, prefix="x")
    assert [p.key for p in problems] == ["x.split"]


# -- split -----------------------------------------------------------------------------


def test_split_ten_percent_with_two_stable_and_one_canary() -> None:
    pools, problems = build_pools(
        [
            route("s1", 1, split=10),
            route("s2", 2, split=10),
            route("c1", 3, split=10, track="canary"),
        ],
        dynamic=False,
    )
    assert problems == ()
    pool = pools[0]
    assert pool.shape.settings.lb_policy == "weighted_round_robin"
    assert [(m.container_name, m.weight, m.track) for m in pool.members] == [
        ("s1", 9, "stable"),
        ("s2", 9, "stable"),
        ("c1", 2, "canary"),
    ]


@pytest.mark.parametrize(
    ("split", "members", "expected"),
    [
        (50, [("stable", 1), ("canary", 1)], [1, 1]),
        (25, [("stable", 3), ("canary", 1), ("canary", 1)], [6, 1, 1]),
        (100, [("stable", 1), ("canary", 2)], [0, 1]),
        (0, [("stable", 1), ("canary", 1)], None),
        (10, [("stable", 1), ("stable", 1)], None),
        (10, [("canary", 1)], None),
        (10, [("stable", 1), ("canary", 0)], None),
    ],
)
def test_split_weights(
    split: int, members: list[tuple[str, int]], expected: list[int] | None
) -> None:
    routes = [route(f"m{i}", i, track=t, weight=w) for i, (t, w) in enumerate(members)]
    assert split_weights(routes, split) == expected


def test_split_canary_share_is_exact() -> None:
    routes = [
        route("a", 1, weight=3),
        route("b", 2, weight=5),
        route("c", 3, track="canary", weight=2),
        route("d", 4, track="canary", weight=7),
    ]
    weights = split_weights(routes, 30)
    assert weights is not None
    canary = weights[2] + weights[3]
    assert canary * 100 == 30 * sum(weights)
    assert weights[0] * 5 == weights[1] * 3 and weights[2] * 7 == weights[3] * 2


def test_split_without_canaries_keeps_the_policy_and_weights() -> None:
    pools, _ = build_pools(
        [route("a", 1, split=20, lb_policy="least_conn", weight=4)], dynamic=True
    )
    assert pools[0].shape.settings.lb_policy == "least_conn"
    assert [m.weight for m in pools[0].members] == [4]


def test_weighted_round_robin_without_split_uses_member_weights() -> None:
    pools, _ = build_pools(
        [
            route("a", 1, lb_policy="weighted_round_robin", weight=3),
            route("b", 2, lb_policy="weighted_round_robin", weight=0),
        ],
        dynamic=False,
    )
    assert [m.weight for m in pools[0].members] == [3, 0]


# -- retries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "members", "dynamic", "expected"),
    [
        (3, 5, True, 3),
        (3, 5, False, 3),
        (0, 5, False, None),
        ("auto", 3, False, 2),
        ("auto", 1, False, None),
        ("auto", 0, False, None),
        ("auto", 1, True, DYNAMIC_AUTO_RETRIES),
        ("auto", 50, True, DYNAMIC_AUTO_RETRIES),
    ],
)
def test_resolve_retries(
    setting: int | str, members: int, dynamic: bool, expected: int | None
) -> None:
    assert resolve_retries(setting, members, dynamic=dynamic) == expected


def test_dynamic_pool_shape_does_not_change_when_it_scales() -> None:
    one, _ = build_pools([route("a", 1)], dynamic=True)
    three, _ = build_pools([route("a", 1), route("b", 2), route("c", 3)], dynamic=True)
    assert one[0].shape == three[0].shape
    assert one[0].shape.retries == 2


def test_static_pool_retries_each_member_once() -> None:
    pools, _ = build_pools([route("a", 1), route("b", 2), route("c", 3)], dynamic=False)
    assert pools[0].shape.retries == 2


# -- order of pools -----------------------------------------------------------------------


def test_pools_are_sorted_as_caddy_must_match_them() -> None:
    pools, _ = build_pools(
        [
            route("root", hosts=("b.com",)),
            route("wild", hosts=("*.a.com",)),
            route("exact", hosts=("x.a.com",)),
            route("short", hosts=("a.com",), path="/a/*"),
            route("long", hosts=("a.com",), path="/a/b/*"),
            route("other", hosts=("0.com",), path="/a/*"),
        ],
        dynamic=True,
    )
    assert [p.members[0].container_name for p in pools] == [
        "long",
        "other",
        "short",
        "root",
        "exact",
        "wild",
    ]


# -- build_desired ------------------------------------------------------------------------


def container(name: str, created: float, labels: dict[str, str], **fields: Any) -> ContainerInfo:
    return ContainerInfo(
        id="id-" + name,
        name=name,
        created=created,
        labels={f"labelsync.{k}": v for k, v in labels.items()},
        networks={"net": f"10.0.0.{int(created)}"},
        exposed_ports=(80,),
        **fields,
    )


def test_build_desired_uses_serving_containers_only_and_collects_problems() -> None:
    desired = build_desired(
        [
            container("web-2", 2, {"host": "a.com", "lb.policy": "first"}),
            container("web-1", 1, {"host": "a.com"}),
            container("stopped", 3, {"host": "a.com"}, state="exited"),
            container("sick", 4, {"host": "a.com"}, health="unhealthy"),
            container("starting", 5, {"host": "a.com"}, health="starting"),
            container("ok", 6, {"host": "a.com"}, health="healthy"),
            container("bad", 7, {"host": "b.com", "weight": "x"}),
        ],
        dynamic=False,
    )
    assert len(desired.pools) == 1
    pool = desired.pools[0]
    assert [m.address for m in pool.members] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.6:80"]
    assert pool.shape.retries == 2
    assert [(p.severity, p.container, p.key) for p in desired.problems] == [
        (Severity.ERROR, "bad", "labelsync.weight"),
        (Severity.WARNING, "web-2", "labelsync.lb.policy"),
    ]
    assert desired.pool(pool.id) is pool


def test_build_desired_passes_prefix_and_default_network() -> None:
    c = ContainerInfo(
        id="i",
        name="n",
        created=1,
        labels={"x.host": "a.com"},
        networks={"a": "10.0.0.1", "b": "10.0.0.2"},
        exposed_ports=(80,),
    )
    desired = build_desired([c], prefix="x", default_network="b")
    assert desired.problems == ()
    assert desired.pools[0].members[0].address == "10.0.0.2:80"


def test_https_in_dynamic_mode_without_a_server_name_is_one_warning() -> None:
    """Caddy would check certificates against the resolver's member names: say so."""
    web = ContainerInfo(
        id="c1",
        name="tls-web",
        created=1.0,
        labels={"labelsync.host": "secure.test", "labelsync.port": "8443"},
        networks={"net": "172.18.0.2"},
    )
    dynamic = build_desired([web], dynamic=True)
    (problem,) = dynamic.problems
    assert problem.severity is Severity.WARNING
    assert problem.key == "labelsync.tls.server_name"
    assert "labelsync.tls.skip_verify=true" in problem.message
    assert build_desired([web], dynamic=False).problems == ()
    named = dataclasses.replace(
        web, labels={**web.labels, "labelsync.tls.server_name": "secure.test"}
    )
    skipped = dataclasses.replace(web, labels={**web.labels, "labelsync.tls.skip_verify": "true"})
    assert build_desired([named], dynamic=True).problems == ()
    assert build_desired([skipped], dynamic=True).problems == ()


@pytest.mark.parametrize("dynamic", [True, False])
def test_a_pool_of_containers_never_started_awaits_its_first_start(dynamic: bool) -> None:
    """`docker run` creates, then starts: a pool whose containers were only created yet is
    marked, so its route is written once, at the start, with its first member (or never,
    when the start shows the route invalid: a missing port is known only then)."""
    created = container("new", 1, {"host": "a.com"}, state="created")
    for memo in (None, ParseMemo()):
        (pool,) = build_desired([created], dynamic=dynamic, memo=memo).pools
        assert pool.awaiting_start and pool.members == ()
        started = dataclasses.replace(created, state="running")
        (pool,) = build_desired([started], dynamic=dynamic, memo=memo).pools
        assert not pool.awaiting_start
        assert [m.container_name for m in pool.members] == ["new"]
    stopped = container("old", 2, {"host": "a.com"}, state="exited")
    (pool,) = build_desired([created, stopped], dynamic=dynamic).pools  # one ran once
    assert not pool.awaiting_start and pool.members == ()


def test_a_replica_told_to_stop_is_draining_not_a_member() -> None:
    """Withdrawn at its kill or stop event while it still runs: the resolver's last resort."""
    replicas = [container(f"web-{i}", i, {"host": "a.com"}) for i in (1, 2)]
    for memo in (None, ParseMemo()):
        (pool,) = build_desired(replicas, withdrawn={"id-web-1"}, memo=memo).pools
        assert [m.container_name for m in pool.members] == ["web-2"]
        assert [m.container_name for m in pool.draining] == ["web-1"]
    gone = [dataclasses.replace(replicas[0], state="exited"), replicas[1]]
    (pool,) = build_desired(gone, withdrawn={"id-web-1"}).pools
    assert pool.draining == ()
