"""render: pools -> Caddy JSON, in both upstream modes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelsync.caddy.diff import diff_routes
from labelsync.caddy.render import (
    RenderOptions,
    dynamic_policy,
    render_config,
    render_route,
    render_routes,
    render_server,
)
from labelsync.core.model import (
    ActiveHealth,
    DesiredState,
    Member,
    PassiveHealth,
    Pool,
    PoolSettings,
    PoolShape,
)
from labelsync.core.names import pool_dns_name

STATIC = RenderOptions(upstreams="static")
DYNAMIC = RenderOptions(upstreams="dynamic")
BOTH = pytest.mark.parametrize("options", [STATIC, DYNAMIC], ids=["static", "dynamic"])


def make_pool(
    *,
    addresses: tuple[str, ...] = ("10.0.0.2:80", "10.0.0.3:80"),
    weights: tuple[int, ...] | None = None,
    hosts: tuple[str, ...] = ("app.example.com",),
    path: str | None = None,
    retries: int | None = None,
    pool_id: str = "labelsync-app",
    **settings: Any,
) -> Pool:
    members = tuple(
        Member(
            address=address,
            container_id=f"c{i}",
            container_name=f"app-{i}",
            weight=weights[i] if weights else 1,
        )
        for i, address in enumerate(addresses)
    )
    shape = PoolShape(
        id=pool_id, hosts=hosts, path=path, settings=PoolSettings(**settings), retries=retries
    )
    return Pool(shape=shape, members=members)


def proxy(pool: Pool, options: RenderOptions) -> dict[str, Any]:
    handler: dict[str, Any] = render_route(pool, options)["handle"][0]
    return handler


def test_route_has_id_match_one_handler_and_is_terminal() -> None:
    pool = make_pool(hosts=("a.example.com", "b.example.com"), path="/api/*")
    route = render_route(pool, STATIC)
    assert route["@id"] == "labelsync-app"
    assert route["match"] == [{"host": ["a.example.com", "b.example.com"], "path": ["/api/*"]}]
    assert route["terminal"] is True
    assert [h["handler"] for h in route["handle"]] == ["reverse_proxy"]


def test_route_without_path_matches_hosts_only() -> None:
    assert render_route(make_pool(), STATIC)["match"] == [{"host": ["app.example.com"]}]


def test_static_upstreams_in_member_order() -> None:
    pool = make_pool(addresses=("10.0.0.9:80", "10.0.0.1:80", "10.0.0.5:8080"))
    handler = proxy(pool, STATIC)
    assert handler["upstreams"] == [
        {"dial": "10.0.0.9:80"},
        {"dial": "10.0.0.1:80"},
        {"dial": "10.0.0.5:8080"},
    ]
    assert "dynamic_upstreams" not in handler
    assert "resolver" not in handler["transport"]


def test_static_pool_without_members_writes_no_upstreams() -> None:
    assert "upstreams" not in proxy(make_pool(addresses=()), STATIC)


def test_dynamic_upstreams_point_at_the_resolver() -> None:
    options = RenderOptions(resolver="127.0.0.1:9053", resolver_refresh="1s")
    pool = make_pool()
    handler = proxy(pool, options)
    assert handler["dynamic_upstreams"] == {
        "source": "srv",
        "name": pool_dns_name("labelsync-app"),
        "refresh": "1s",
        "resolver": {"addresses": ["udp/127.0.0.1:9053"]},
    }
    # No grace period: a failed lookup must fall back to these IPs at once.
    assert handler["upstreams"] == [{"dial": m.address} for m in pool.members]
    assert handler["transport"]["resolver"] == {"addresses": ["udp/127.0.0.1:9053"]}


def test_dynamic_shape_does_not_depend_on_members() -> None:
    """Scaling changes only the fallback list, which is never a reason to write."""
    one = make_pool(addresses=("10.0.0.2:80",), retries=2)
    three = make_pool(addresses=("10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"), retries=2)
    before, after = render_route(one, DYNAMIC), render_route(three, DYNAMIC)
    assert diff_routes([before], [after]) == []
    for route in (before, after):
        del route["handle"][0]["upstreams"]
    assert before == after


def test_pool_dns_name_is_a_stable_hash_under_the_pool_domain() -> None:
    name = pool_dns_name("labelsync-app")
    assert re.fullmatch(r"[0-9a-f]{16}\.pool\.labelsync\.internal\.", name)  # fully qualified
    assert name == pool_dns_name("labelsync-app")
    assert name != pool_dns_name("labelsync-other")


@BOTH
@pytest.mark.parametrize(
    ("settings", "selection"),
    [
        ({}, {"policy": "random"}),
        ({"lb_policy": "round_robin"}, {"policy": "round_robin"}),
        ({"lb_policy": "least_conn"}, {"policy": "least_conn"}),
        ({"lb_policy": "ip_hash"}, {"policy": "ip_hash"}),
        ({"lb_policy": "client_ip_hash"}, {"policy": "client_ip_hash"}),
        ({"lb_policy": "uri_hash"}, {"policy": "uri_hash"}),
        ({"lb_policy": "first"}, {"policy": "first"}),
        ({"lb_policy": "cookie"}, {"policy": "cookie", "name": "lb"}),
        (
            {"lb_policy": "cookie", "lb_key": "sticky_session_id"},
            {"policy": "cookie", "name": "sticky_session_id"},
        ),
        ({"lb_policy": "header", "lb_key": "X-Tenant"}, {"policy": "header", "field": "X-Tenant"}),
        ({"lb_policy": "query", "lb_key": "user"}, {"policy": "query", "key": "user"}),
        ({"lb_policy": "random_choose"}, {"policy": "random_choose", "choose": 2}),
        ({"lb_policy": "random_choose", "lb_choose": 3}, {"policy": "random_choose", "choose": 3}),
    ],
)
def test_selection_policy_fields(
    options: RenderOptions, settings: dict[str, Any], selection: dict[str, Any]
) -> None:
    handler = proxy(make_pool(**settings), options)
    assert handler["load_balancing"]["selection_policy"] == selection


def test_static_weighted_round_robin_has_one_weight_per_upstream() -> None:
    pool = make_pool(
        addresses=("10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"),
        weights=(3, 1, 0),
        lb_policy="weighted_round_robin",
    )
    selection = proxy(pool, STATIC)["load_balancing"]["selection_policy"]
    assert selection == {"policy": "weighted_round_robin", "weights": [3, 1, 0]}


def test_static_split_uses_member_weights() -> None:
    pool = make_pool(weights=(9, 1), split=10, lb_policy="least_conn")
    selection = proxy(pool, STATIC)["load_balancing"]["selection_policy"]
    assert selection == {"policy": "weighted_round_robin", "weights": [9, 1]}


@pytest.mark.parametrize(
    "settings",
    [{"lb_policy": "weighted_round_robin"}, {"split": 10}, {"split": 50, "lb_policy": "first"}],
)
def test_dynamic_weighted_pools_become_round_robin(settings: dict[str, Any]) -> None:
    pool = make_pool(weights=(9, 1), **settings)
    assert proxy(pool, DYNAMIC)["load_balancing"]["selection_policy"] == {"policy": "round_robin"}
    assert dynamic_policy(pool.shape.settings) == "round_robin"


@pytest.mark.parametrize(
    "policy",
    ["random", "round_robin", "least_conn", "ip_hash", "client_ip_hash", "uri_hash", "first"],
)
def test_dynamic_policy_keeps_unweighted_policies(policy: str) -> None:
    assert dynamic_policy(PoolSettings(lb_policy=policy)) == policy


@given(st.lists(st.integers(min_value=0, max_value=100), max_size=12))
def test_weights_are_exactly_as_long_as_upstreams(weights: list[int]) -> None:
    addresses = tuple(f"10.0.{i // 250}.{i % 250 + 2}:80" for i in range(len(weights)))
    pool = make_pool(addresses=addresses, weights=tuple(weights), lb_policy="weighted_round_robin")
    handler = proxy(pool, STATIC)
    weights_out = handler["load_balancing"]["selection_policy"]["weights"]
    assert weights_out == weights
    assert len(weights_out) == len(handler.get("upstreams", []))


@BOTH
def test_retries_and_try_timing(options: RenderOptions) -> None:
    pool = make_pool(retries=2, lb_try_duration="5s", lb_try_interval="250ms")
    load_balancing = proxy(pool, options)["load_balancing"]
    assert load_balancing["retries"] == 2
    assert load_balancing["try_duration"] == "5s"
    assert load_balancing["try_interval"] == "250ms"


def test_dynamic_retries_pause_so_the_resolver_can_drop_a_killed_member() -> None:
    """A retry looks the pool up again; 50 ms lets labelsync publish a kill first."""
    dynamic = proxy(make_pool(retries=2), DYNAMIC)["load_balancing"]
    assert dynamic["try_interval"] == "50ms"
    assert "try_interval" not in proxy(make_pool(retries=2), STATIC)["load_balancing"]
    chosen = proxy(make_pool(retries=2, lb_try_interval="1s"), DYNAMIC)["load_balancing"]
    assert chosen["try_interval"] == "1s"


@BOTH
@pytest.mark.parametrize("retries", [None, 0])
def test_no_retries_writes_no_retries(options: RenderOptions, retries: int | None) -> None:
    load_balancing = proxy(make_pool(retries=retries), options)["load_balancing"]
    assert set(load_balancing) == {"selection_policy"}


ACTIVE = ActiveHealth(
    path="/healthz",
    interval="10s",
    timeout="2s",
    expect_status=2,
    port=8081,
    body="^ok$",
    passes=2,
    fails=3,
    headers=(("Host", "probe.internal"), ("X-Probe", "a"), ("X-Probe", "b")),
)


def test_static_active_health_check_fields() -> None:
    active = proxy(make_pool(active=ACTIVE), STATIC)["health_checks"]["active"]
    assert active == {
        "uri": "/healthz",
        "port": 8081,
        "interval": "10s",
        "timeout": "2s",
        "expect_status": 2,
        "expect_body": "^ok$",
        "passes": 2,
        "fails": 3,
        "headers": {"Host": ["probe.internal"], "X-Probe": ["a", "b"]},
    }


def test_static_active_health_check_defaults() -> None:
    active = proxy(make_pool(active=ActiveHealth(path="/")), STATIC)["health_checks"]["active"]
    assert active == {
        "uri": "/",
        "interval": "30s",
        "timeout": "5s",
        "expect_status": 200,
        "passes": 1,
        "fails": 1,
    }


def test_dynamic_mode_leaves_active_checks_to_labelsync() -> None:
    assert "health_checks" not in proxy(make_pool(active=ACTIVE), DYNAMIC)
    both = make_pool(active=ACTIVE, passive=PassiveHealth())
    assert set(proxy(both, DYNAMIC)["health_checks"]) == {"passive"}


@BOTH
def test_passive_health_check_fields(options: RenderOptions) -> None:
    passive = PassiveHealth(
        fail_duration="30s", max_fails=3, unhealthy_latency="2s", unhealthy_status=(5, 429)
    )
    checks = proxy(make_pool(passive=passive), options)["health_checks"]
    assert checks == {
        "passive": {
            "fail_duration": "30s",
            "max_fails": 3,
            "unhealthy_latency": "2s",
            "unhealthy_status": [5, 429],
        }
    }


@BOTH
@pytest.mark.parametrize("latency", [None, "0", "0s"])
def test_passive_latency_off_is_omitted(options: RenderOptions, latency: str | None) -> None:
    passive = PassiveHealth(unhealthy_latency=latency)
    checks = proxy(make_pool(passive=passive), options)["health_checks"]
    assert checks == {"passive": {"fail_duration": "30s", "max_fails": 3}}


@BOTH
def test_no_checks_writes_no_health_checks(options: RenderOptions) -> None:
    assert "health_checks" not in proxy(make_pool(), options)


def test_plain_http_transport() -> None:
    assert proxy(make_pool(), STATIC)["transport"] == {"protocol": "http"}


def test_https_transport_has_tls() -> None:
    assert proxy(make_pool(scheme="https"), STATIC)["transport"] == {
        "protocol": "http",
        "tls": {},
    }
    pool = make_pool(scheme="https", tls_skip_verify=True, tls_server_name="api.internal")
    assert proxy(pool, STATIC)["transport"]["tls"] == {
        "insecure_skip_verify": True,
        "server_name": "api.internal",
    }


def test_tls_keys_without_https_are_ignored() -> None:
    pool = make_pool(tls_skip_verify=True, tls_server_name="api.internal")
    assert proxy(pool, STATIC)["transport"] == {"protocol": "http"}


def test_h2c_transport_speaks_cleartext_http2() -> None:
    assert proxy(make_pool(scheme="h2c"), STATIC)["transport"] == {
        "protocol": "http",
        "versions": ["h2c", "2"],
    }


@BOTH
def test_transport_timeouts(options: RenderOptions) -> None:
    pool = make_pool(timeout_dial="3s", timeout_response_header="1m30s")
    transport = proxy(pool, options)["transport"]
    assert transport["dial_timeout"] == "3s"
    assert transport["response_header_timeout"] == "1m30s"


@BOTH
def test_stream_close_delay_always_written(options: RenderOptions) -> None:
    assert proxy(make_pool(), options)["stream_close_delay"] == "10m"
    custom = RenderOptions(upstreams=options.upstreams, stream_close_delay="90s")
    assert proxy(make_pool(), custom)["stream_close_delay"] == "1m30s"


def test_durations_are_normalised() -> None:
    pool = make_pool(
        lb_try_duration="1500ms",
        active=ActiveHealth(path="/", interval="60s", timeout="0.5s"),
        passive=PassiveHealth(fail_duration="120s"),
    )
    handler = proxy(pool, STATIC)
    assert handler["load_balancing"]["try_duration"] == "1500ms"
    assert handler["health_checks"]["active"]["interval"] == "1m"
    assert handler["health_checks"]["active"]["timeout"] == "500ms"
    assert handler["health_checks"]["passive"]["fail_duration"] == "2m"


DURATION_KEYS = {
    "refresh",
    "grace_period",
    "try_duration",
    "try_interval",
    "interval",
    "timeout",
    "fail_duration",
    "unhealthy_latency",
    "dial_timeout",
    "response_header_timeout",
    "stream_close_delay",
}


def everything_pool() -> Pool:
    return make_pool(
        path="/api/*",
        retries=2,
        scheme="https",
        tls_skip_verify=True,
        lb_policy="least_conn",
        lb_try_duration="5s",
        lb_try_interval="250ms",
        active=ACTIVE,
        passive=PassiveHealth(unhealthy_latency="2s", unhealthy_status=(5,)),
        timeout_dial="3s",
        timeout_response_header="10s",
    )


def walk(value: Any) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            found.append((key, inner))
            found.extend(walk(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(walk(inner))
    return found


@BOTH
def test_every_duration_is_a_string(options: RenderOptions) -> None:
    durations = [
        (key, value)
        for key, value in walk(render_route(everything_pool(), options))
        if key in DURATION_KEYS
    ]
    assert len(durations) >= 8
    assert all(isinstance(value, str) for _, value in durations), durations


@BOTH
def test_output_is_deterministic(options: RenderOptions) -> None:
    desired = DesiredState(pools=(everything_pool(), make_pool(pool_id="labelsync-b")))
    first = json.dumps(render_routes(desired, options), sort_keys=True)
    again = json.dumps(render_routes(desired, options), sort_keys=True)
    assert first == again


@BOTH
def test_no_empty_or_null_fields(options: RenderOptions) -> None:
    desired = DesiredState(pools=(everything_pool(), make_pool(addresses=())))
    for key, value in walk(render_routes(desired, options)):
        assert value is not None, key
        # An empty tls object is how Caddy spells "use TLS"; a dynamic pool keeps its
        # (empty) fallback list so that it can be replaced in place.
        if key != "tls" and not (key == "upstreams" and options.upstreams == "dynamic"):
            assert value not in ({}, [], ""), key


def test_render_routes_keeps_pool_order() -> None:
    desired = DesiredState(
        pools=(make_pool(pool_id="labelsync-b"), make_pool(pool_id="labelsync-a"))
    )
    assert [r["@id"] for r in render_routes(desired, STATIC)] == ["labelsync-b", "labelsync-a"]


@pytest.mark.parametrize(
    ("auto_https", "expected"),
    [
        ("on", None),
        ("off", {"disable": True}),
        ("disable_redirects", {"disable_redirects": True}),
    ],
)
def test_render_server_automatic_https(auto_https: str, expected: Any) -> None:
    server = render_server([":80", ":443"], auto_https, [])
    assert server["listen"] == [":80", ":443"]
    assert server["routes"] == []
    assert server.get("automatic_https") == expected


def test_render_server_rejects_unknown_auto_https() -> None:
    with pytest.raises(ValueError, match="auto_https"):
        render_server([":80"], "maybe", [])


def test_render_config_is_a_whole_config() -> None:
    desired = DesiredState(pools=(make_pool(),))
    config = render_config(desired, STATIC)
    server = config["apps"]["http"]["servers"]["labelsync"]
    assert server["listen"] == [":80", ":443"]
    assert server["routes"] == render_routes(desired, STATIC)
    assert "automatic_https" not in server

    custom = render_config(desired, DYNAMIC, server_name="edge", listen=[":8080"], auto_https="off")
    assert custom["apps"]["http"]["servers"]["edge"]["listen"] == [":8080"]
    assert custom["apps"]["http"]["servers"]["edge"]["automatic_https"] == {"disable": True}
