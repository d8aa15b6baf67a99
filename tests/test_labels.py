"""labels.py: every key, its default, its errors, and inheritance between routes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from labelsync.core.labels import KEYS, parse_container
from labelsync.core.model import (
    ActiveHealth,
    ContainerInfo,
    Origin,
    PassiveHealth,
    PoolSettings,
    Problem,
    Route,
    Severity,
    Track,
)


def container(
    labels: Mapping[str, str] | None = None,
    *,
    name: str = "web",
    networks: Mapping[str, str] | None = None,
    ports: tuple[int, ...] = (80,),
    **fields: Any,
) -> ContainerInfo:
    """A container; label keys without a dot-prefix get `labelsync.` in front."""
    full = {
        k if k.startswith("labelsync") else f"labelsync.{k}": v for k, v in (labels or {}).items()
    }
    return ContainerInfo(
        id=str(fields.pop("id", "c-" + name)),
        name=name,
        created=float(fields.pop("created", 100.0)),
        labels=full,
        networks={"net": "172.18.0.2"} if networks is None else networks,
        exposed_ports=ports,
        **fields,
    )


def parse(labels: Mapping[str, str], **kw: Any) -> tuple[list[Route], list[Problem]]:
    default_network = kw.pop("default_network", None)
    return parse_container(container(labels, **kw), default_network=default_network)


def one_route(labels: Mapping[str, str], **kw: object) -> Route:
    routes, problems = parse(labels, **kw)
    assert [p for p in problems if p.severity is Severity.ERROR] == []
    assert len(routes) == 1
    return routes[0]


def settings(labels: Mapping[str, str], **kw: object) -> PoolSettings:
    return one_route({"host": "a.example.com", **labels}, **kw).settings


def messages(labels: Mapping[str, str], **kw: object) -> list[str]:
    return [str(p) for p in parse(labels, **kw)[1]]


def errors(labels: Mapping[str, str], **kw: object) -> list[str]:
    return [str(p) for p in parse(labels, **kw)[1] if p.severity is Severity.ERROR]


def warnings(labels: Mapping[str, str], **kw: object) -> list[str]:
    return [str(p) for p in parse(labels, **kw)[1] if p.severity is Severity.WARNING]


# -- basics ---------------------------------------------------------------------------


def test_container_without_labels_has_no_routes_and_no_problems() -> None:
    other = ContainerInfo(id="x", name="x", created=1, labels={"traefik.enable": "true"})
    assert parse_container(other) == ([], [])
    assert parse_container(container({})) == ([], [])


def test_default_route_with_every_default() -> None:
    route = one_route({"host": "app.example.com"})
    assert route == Route(
        container_id="c-web",
        container_name="web",
        created=100.0,
        route_name="",
        hosts=("app.example.com",),
        path=None,
        settings=PoolSettings(),
        address="172.18.0.2:80",
        weight=1,
        order=None,
        track=Track.STABLE,
        origin=Origin.CONTAINER,
    )


def test_custom_prefix() -> None:
    c = ContainerInfo(
        id="x",
        name="x",
        created=1,
        labels={"lb.host": "a.com"},
        networks={"n": "10.0.0.1"},
        exposed_ports=(8080,),
    )
    routes, problems = parse_container(c, prefix="lb")
    assert problems == [] and routes[0].address == "10.0.0.1:8080"


def test_static_origin() -> None:
    route = one_route({"host": "a.com", "address": "10.1.1.1:80"}, id="static:extra.toml[x]")
    assert route.origin == "static"


def test_labels_without_any_host_warn() -> None:
    assert messages({"port": "80"}) == [
        "container 'web': has labelsync labels but no route: set labelsync.host"
    ]


def test_unknown_keys_warn_with_nearest_key() -> None:
    routes, problems = parse({"host": "a.com", "lb.polcy": "first", "route.x.helth.path": "/"})
    assert len(routes) == 1
    assert [str(p) for p in problems] == [
        "container 'web': labelsync.lb.polcy='first': unknown key; "
        "did you mean 'labelsync.lb.policy'?",
        "container 'web': labelsync.route.x.helth.path='/': unknown key; "
        "did you mean 'labelsync.route.x.health.path'?",
    ]
    assert all(p.severity is Severity.WARNING for p in problems)


def test_unknown_key_without_a_near_one() -> None:
    assert warnings({"host": "a.com", "zzzzzzzz": "1", "route.only": "x"}) == [
        "container 'web': labelsync.route.only='x': unknown key",
        "container 'web': labelsync.zzzzzzzz='1': unknown key",
    ]


def test_every_documented_key_is_known() -> None:
    documented = {
        "host",
        "path",
        "port",
        "scheme",
        "tls.skip_verify",
        "tls.server_name",
        "network",
        "address",
        "reach",
        "enable",
        "weight",
        "order",
        "track",
        "split",
        "lb.policy",
        "lb.key",
        "lb.choose",
        "lb.retries",
        "lb.try_duration",
        "lb.try_interval",
        "health.path",
        "health.interval",
        "health.timeout",
        "health.status",
        "health.port",
        "health.body",
        "health.passes",
        "health.fails",
        "health.passive",
        "health.passive.fail_duration",
        "health.passive.max_fails",
        "health.passive.unhealthy_latency",
        "health.passive.unhealthy_status",
        "timeout.dial",
        "timeout.response_header",
    }
    assert set(KEYS) == documented


# -- host and path --------------------------------------------------------------------


def test_hosts_are_trimmed_lowercased_deduplicated_sorted() -> None:
    route = one_route({"host": " B.example.com, a.example.com,b.example.com, "})
    assert route.hosts == ("a.example.com", "b.example.com")


@pytest.mark.parametrize(
    ("value", "hosts"),
    [
        ("*.example.com", ("*.example.com",)),
        ("localhost", ("localhost",)),
        ("127.0.0.1", ("127.0.0.1",)),
        ("::1", ("::1",)),
        ("[::1]", ("::1",)),
        ("xn--bcher-kva.example", ("xn--bcher-kva.example",)),
    ],
)
def test_host_forms(value: str, hosts: tuple[str, ...]) -> None:
    assert one_route({"host": value}).hosts == hosts


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("bad_host.com", "'bad_host.com' is not a host name (e.g. app.example.com, *.example.com)"),
        ("a.com:8080", "'a.com:8080': host names carry no port (set labelsync.port)"),
        ("-a.com", "'-a.com' is not a host name (e.g. app.example.com, *.example.com)"),
        ("a.*.com", "'a.*.com' is not a host name (e.g. app.example.com, *.example.com)"),
        (" , ", "no host name given (e.g. app.example.com)"),
    ],
)
def test_bad_hosts(value: str, why: str) -> None:
    routes, problems = parse({"host": value})
    assert routes == []
    assert [str(p) for p in problems] == [f"container 'web': labelsync.host={value!r}: {why}"]


def test_path() -> None:
    assert one_route({"host": "a.com", "path": "/api/*"}).path == "/api/*"
    assert errors({"host": "a.com", "path": "api/*"}) == [
        "container 'web': labelsync.path='api/*': must start with '/'; did you mean '/api/*'?"
    ]
    assert errors({"host": "a.com", "path": "/a b"}) == [
        "container 'web': labelsync.path='/a b': must not contain spaces or control characters"
    ]


# -- where the member is dialled ----------------------------------------------------------


def test_port_defaults_to_the_only_exposed_port() -> None:
    assert one_route({"host": "a.com"}, ports=(3000,)).address == "172.18.0.2:3000"


def test_port_label_wins_over_exposed_ports() -> None:
    assert one_route({"host": "a.com", "port": "8080"}, ports=(80, 443)).address == (
        "172.18.0.2:8080"
    )


def test_no_exposed_port_is_an_error() -> None:
    routes, problems = parse({"host": "a.com"}, ports=())
    assert routes == []
    assert [str(p) for p in problems] == [
        "container 'web': labelsync.port: container exposes no port; set labelsync.port"
    ]


def test_several_exposed_ports_is_an_error_naming_them() -> None:
    assert errors({"host": "a.com"}, ports=(443, 80)) == [
        "container 'web': labelsync.port: container exposes several ports (80, 443); "
        "set labelsync.port to one of them"
    ]


@pytest.mark.parametrize("value", ["0", "65536", "http", "80.0", "-1", "+80", ""])
def test_bad_port(value: str) -> None:
    routes, problems = parse({"host": "a.com", "port": value})
    assert routes == []
    assert len(problems) == 1 and problems[0].key == "labelsync.port"


def test_address_wins_over_port_and_network() -> None:
    routes, problems = parse(
        {"host": "a.com", "address": "Backend.internal:9000", "port": "80", "network": "x"},
        ports=(),
        networks={},
    )
    assert routes[0].address == "backend.internal:9000"
    assert [str(p) for p in problems] == [
        "container 'web': labelsync.port='80': has no effect when labelsync.address is set",
        "container 'web': labelsync.network='x': has no effect when labelsync.address is set",
    ]


def test_address_on_a_named_route_keeps_the_inherited_port_quiet() -> None:
    routes, problems = parse(
        {
            "host": "a.com",
            "port": "8080",
            "route.ext.host": "b.com",
            "route.ext.address": "10.9.9.9:80",
        },
        ports=(),
    )
    assert [r.address for r in routes] == ["172.18.0.2:8080", "10.9.9.9:80"]
    assert problems == []


def test_own_port_under_an_inherited_address_warns() -> None:
    assert warnings(
        {"host": "a.com", "address": "10.9.9.9:80", "route.x.host": "x.com", "route.x.port": "81"}
    ) == [
        "container 'web': labelsync.route.x.port='81': has no effect when labelsync.address is set"
    ]


@pytest.mark.parametrize(
    ("value", "address"),
    [("10.0.0.5:8080", "10.0.0.5:8080"), ("[fd00:0::5]:81", "[fd00::5]:81")],
)
def test_address_forms(value: str, address: str) -> None:
    assert one_route({"host": "a.com", "address": value}).address == address


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("10.0.0.5", "needs host:port (e.g. 10.0.0.5:8080, [fd00::5]:8080)"),
        ("10.0.0.5:0", "'0' is not a port (use 1..65535)"),
        ("fd00::5:80", "IPv6 addresses need brackets: [fd00::5]:8080"),
        ("[10.0.0.1]:80", "'[10.0.0.1]' is not a bracketed IPv6 address"),
        ("bad host:80", "'bad host' is not a host name or IP address"),
    ],
)
def test_bad_address(value: str, why: str) -> None:
    assert errors({"host": "a.com", "address": value}) == [
        f"container 'web': labelsync.address={value!r}: {why}"
    ]


def test_network_label_picks_the_address() -> None:
    nets = {"front": "10.0.1.2", "back": "10.0.2.2"}
    assert one_route({"host": "a.com", "network": "back"}, networks=nets).address == ("10.0.2.2:80")


def test_network_label_must_be_one_of_the_containers_networks() -> None:
    nets = {"front": "10.0.1.2", "back": "10.0.2.2"}
    assert errors({"host": "a.com", "network": "bakc"}, networks=nets) == [
        "container 'web': labelsync.network='bakc': not one of the container's networks; "
        "did you mean 'back'?"
    ]
    assert errors({"host": "a.com", "network": "zzz"}, networks=nets) == [
        "container 'web': labelsync.network='zzz': not one of the container's networks "
        "(one of: back, front)"
    ]


def test_default_network_setting_is_used_when_the_container_is_on_it() -> None:
    nets = {"front": "10.0.1.2", "back": "10.0.2.2"}
    route = one_route({"host": "a.com"}, networks=nets, default_network="back")
    assert route.address == "10.0.2.2:80"


def test_default_network_setting_is_skipped_when_the_container_is_not_on_it() -> None:
    route = one_route({"host": "a.com"}, networks={"only": "10.9.9.9"}, default_network="back")
    assert route.address == "10.9.9.9:80"


def test_several_networks_without_a_choice_is_an_error_naming_them() -> None:
    nets = {"front": "10.0.1.2", "back": "10.0.2.2"}
    assert errors({"host": "a.com"}, networks=nets, default_network="other") == [
        "container 'web': labelsync.network: container is on several networks "
        "('back', 'front'); set labelsync.network to one of them"
    ]


def test_no_network_is_an_error() -> None:
    assert errors({"host": "a.com"}, networks={}) == [
        "container 'web': labelsync.address: container is on no network; "
        "set labelsync.address (host:port) to reach it"
    ]


def test_network_without_an_ip_is_an_error() -> None:
    assert errors({"host": "a.com"}, networks={"net": ""}) == [
        "container 'web': labelsync.network: container has no IP address on network 'net'"
    ]


def test_ipv6_network_address_is_bracketed() -> None:
    assert one_route({"host": "a.com"}, networks={"v6": "fd00::2"}).address == "[fd00::2]:80"


def test_host_network_needs_an_address() -> None:
    assert errors({"host": "a.com"}, host_network=True, networks={"host": ""}) == [
        "container 'web': labelsync.address: container uses the host network; "
        "set labelsync.address (host:port) to reach it"
    ]
    route = one_route({"host": "a.com", "address": "127.0.0.1:8080"}, host_network=True)
    assert route.address == "127.0.0.1:8080"


# -- scheme and TLS -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("port", "scheme"),
    [
        (80, "http"),
        (443, "https"),
        (8443, "https"),
        (9443, "https"),
        (10443, "https"),
        (8080, "http"),
    ],
)
def test_scheme_default_follows_the_port(port: int, scheme: str) -> None:
    assert settings({}, ports=(port,)).scheme == scheme


def test_scheme_default_follows_the_address_port() -> None:
    assert settings({"address": "backend:443"}).scheme == "https"


def test_scheme_label() -> None:
    assert settings({"scheme": "H2C"}).scheme == "h2c"
    assert settings({"scheme": "http"}, ports=(443,)).scheme == "http"
    assert errors({"host": "a.com", "scheme": "htps"}) == [
        "container 'web': labelsync.scheme='htps': unknown scheme; did you mean 'https'?"
    ]


def test_tls_keys() -> None:
    tls = settings({"scheme": "https", "tls.skip_verify": "yes", "tls.server_name": "App.Int"})
    assert tls.tls_skip_verify is True and tls.tls_server_name == "app.int"
    assert errors({"host": "a.com", "tls.server_name": "a b"}) == [
        "container 'web': labelsync.tls.server_name='a b': not a server name (e.g. app.internal)"
    ]


def test_tls_keys_without_https_warn_and_are_dropped() -> None:
    labels = {"host": "a.com", "tls.skip_verify": "true", "tls.server_name": "x"}
    assert warnings(labels) == [
        "container 'web': labelsync.tls.skip_verify='true': has no effect with scheme 'http'",
        "container 'web': labelsync.tls.server_name='x': has no effect with scheme 'http'",
    ]
    assert one_route(labels).settings == PoolSettings()


# -- booleans, integers, durations ------------------------------------------------------


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes", "On", " on "])
def test_true_booleans(value: str) -> None:
    assert settings({"scheme": "https", "tls.skip_verify": value}).tls_skip_verify is True


@pytest.mark.parametrize("value", ["false", "False", "0", "no", "OFF"])
def test_false_booleans(value: str) -> None:
    assert settings({"scheme": "https", "tls.skip_verify": value}).tls_skip_verify is False


def test_bad_boolean() -> None:
    assert errors({"host": "a.com", "enable": "ture"}) == [
        "container 'web': labelsync.enable='ture': not a boolean "
        "(true/false, yes/no, on/off, 1/0); did you mean 'true'?"
    ]


@pytest.mark.parametrize("value", ["3.0", "-1", "+3", "1e3", "three", "", "\u0661"])
def test_integers_are_strict(value: str) -> None:
    routes, problems = parse({"host": "a.com", "weight": value})
    assert routes == [] and [p.key for p in problems] == ["labelsync.weight"]


def test_integer_error_texts() -> None:
    assert errors({"host": "a.com", "weight": "-1", "split": "101"}) == [
        "container 'web': labelsync.split='101': out of range (use 0..100)",
        "container 'web': labelsync.weight='-1': out of range (use 0..1000000)",
    ]
    assert errors({"host": "a.com", "weight": "1.5"}) == [
        "container 'web': labelsync.weight='1.5': not a whole number (use 0..1000000)"
    ]


def test_durations_are_normalised() -> None:
    s = settings(
        {
            "lb.try_duration": "90s",
            "lb.try_interval": "250ms",
            "timeout.dial": "1.5s",
            "timeout.response_header": "1m0s",
        }
    )
    assert (s.lb_try_duration, s.lb_try_interval) == ("1m30s", "250ms")
    assert (s.timeout_dial, s.timeout_response_header) == ("1500ms", "1m")


@pytest.mark.parametrize("value", ["5", "5 s", "5sec", "-5s", "", "1e3s"])
def test_bad_durations(value: str) -> None:
    routes, problems = parse({"host": "a.com", "timeout.dial": value})
    assert routes == [] and [p.key for p in problems] == ["labelsync.timeout.dial"]


def test_duration_error_text() -> None:
    assert errors({"host": "a.com", "timeout.dial": "5sec"}) == [
        "container 'web': labelsync.timeout.dial='5sec': not a duration "
        "(use a number and a unit: 250ms, 5s, 1m30s)"
    ]
    assert errors({"host": "a.com", "timeout.dial": "0"}) == [
        "container 'web': labelsync.timeout.dial='0': must be longer than 0 (e.g. 250ms, 5s, 1m30s)"
    ]
    assert errors({"host": "a.com", "timeout.dial": "9" * 30 + "h"}) == [
        f"container 'web': labelsync.timeout.dial='{'9' * 30}h': duration too long"
    ]


# -- member keys -------------------------------------------------------------------------


def test_member_keys() -> None:
    route = one_route({"host": "a.com", "weight": "0", "order": "-5", "track": "Canary"})
    assert (route.weight, route.order, route.track) == (0, -5, "canary")
    assert errors({"host": "a.com", "track": "canery"}) == [
        "container 'web': labelsync.track='canery': unknown track; did you mean 'canary'?"
    ]


def test_split() -> None:
    assert settings({"split": "10"}).split == 10
    assert settings({"split": "0"}).split == 0


def test_enable_false_drops_the_container_without_problems() -> None:
    assert parse({"host": "a.com", "enable": "false", "lb.policy": "bogus"}) == ([], [])


def test_enable_false_on_the_default_route_can_be_overridden_by_a_named_route() -> None:
    routes, problems = parse(
        {"enable": "off", "host": "a.com", "route.api.host": "api.com", "route.api.enable": "on"}
    )
    assert problems == [] and [r.route_name for r in routes] == ["api"]


# -- load balancing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "policy",
    [
        "random",
        "round_robin",
        "weighted_round_robin",
        "least_conn",
        "ip_hash",
        "client_ip_hash",
        "uri_hash",
        "first",
        "random_choose",
    ],
)
def test_policies_without_a_key(policy: str) -> None:
    assert settings({"lb.policy": policy.upper()}).lb_policy == policy


def test_unknown_policy_error_text() -> None:
    routes, problems = parse({"host": "a.com", "lb.policy": "rond_robin"})
    assert routes == []
    assert problems == [
        Problem(
            Severity.ERROR,
            "web",
            "labelsync.lb.policy",
            "rond_robin",
            "unknown policy; did you mean 'round_robin'?",
        )
    ]
    assert str(problems[0]) == (
        "container 'web': labelsync.lb.policy='rond_robin': "
        "unknown policy; did you mean 'round_robin'?"
    )


def test_cookie_policy_key_defaults_to_lb() -> None:
    assert settings({"lb.policy": "cookie"}).lb_key == "lb"
    assert settings({"lb.policy": "cookie", "lb.key": "sticky"}).lb_key == "sticky"


@pytest.mark.parametrize(("policy", "what"), [("header", "header"), ("query", "query parameter")])
def test_header_and_query_policies_need_a_key(policy: str, what: str) -> None:
    assert settings({"lb.policy": policy, "lb.key": "X-User"}).lb_key == "X-User"
    assert errors({"host": "a.com", "lb.policy": policy}) == [
        f"container 'web': labelsync.lb.policy={policy!r}: policy {policy!r} needs "
        f"labelsync.lb.key (the {what} name)"
    ]


def test_lb_key_validation_and_no_effect() -> None:
    assert errors({"host": "a.com", "lb.policy": "header", "lb.key": "X User"}) == [
        "container 'web': labelsync.lb.key='X User': "
        "not a valid name (letters, digits and -_.!#$%&'*+^`|~)"
    ]
    assert warnings({"host": "a.com", "lb.key": "k"}) == [
        "container 'web': labelsync.lb.key='k': has no effect with lb.policy 'random'"
    ]
    assert settings({"lb.key": "k"}).lb_key is None


def test_lb_choose() -> None:
    assert settings({}).lb_choose == 2
    assert settings({"lb.policy": "random_choose", "lb.choose": "3"}).lb_choose == 3
    assert errors({"host": "a.com", "lb.policy": "random_choose", "lb.choose": "1"}) == [
        "container 'web': labelsync.lb.choose='1': out of range (use 2..1000)"
    ]
    assert warnings({"host": "a.com", "lb.choose": "3"}) == [
        "container 'web': labelsync.lb.choose='3': has no effect with lb.policy 'random'"
    ]


def test_lb_retries() -> None:
    assert settings({}).lb_retries == "auto"
    assert settings({"lb.retries": "AUTO"}).lb_retries == "auto"
    assert settings({"lb.retries": "0"}).lb_retries == 0
    assert settings({"lb.retries": "4"}).lb_retries == 4
    assert errors({"host": "a.com", "lb.retries": "-1"}) == [
        "container 'web': labelsync.lb.retries='-1': "
        "not a retry count (use a whole number >= 0, or auto)"
    ]


def test_lb_try_duration_accepts_zero() -> None:
    assert settings({"lb.try_duration": "0"}).lb_try_duration == "0s"


# -- active health ---------------------------------------------------------------------


def test_health_path_turns_on_active_and_passive_checks_with_defaults() -> None:
    s = settings({"health.path": "/healthz"})
    assert s.active == ActiveHealth(path="/healthz")
    assert s.passive == PassiveHealth()


def test_every_active_health_key() -> None:
    s = settings(
        {
            "health.path": "/hz",
            "health.interval": "10s",
            "health.timeout": "2s",
            "health.status": "2XX",
            "health.port": "9000",
            "health.body": "^ok$",
            "health.passes": "2",
            "health.fails": "3",
            "health.headers.Host": "internal",
            "health.headers.X-Check": "1",
        }
    )
    assert s.active == ActiveHealth(
        path="/hz",
        interval="10s",
        timeout="2s",
        expect_status=2,
        port=9000,
        body="^ok$",
        passes=2,
        fails=3,
        headers=(("Host", "internal"), ("X-Check", "1")),
    )


def test_exact_health_status() -> None:
    active = settings({"health.path": "/", "health.status": "204"}).active
    assert active is not None and active.expect_status == 204


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("health.path", "hz", "must start with '/'; did you mean '/hz'?"),
        ("health.status", "2x", "'2x' is not a status (use a code like 200 or a class like 2xx)"),
        ("health.status", "600", "'600' is not a status (use a code like 200 or a class like 2xx)"),
        ("health.body", "(", "not a Go (RE2) regular expression: missing ): ("),
        (
            "health.body",
            "a\\Cb",
            "not a Go (RE2) regular expression: invalid escape sequence: \\C (any byte)",
        ),
        ("health.body", "(?=x)", "not a Go (RE2) regular expression: invalid perl operator: (?="),
        ("health.body", "ok++", "not a Go (RE2) regular expression: bad repetition operator: ++"),
        ("health.body", "(?>a)", "not a Go (RE2) regular expression: invalid perl operator: (?>"),
        ("health.body", "a\\1", "not a Go (RE2) regular expression: invalid escape sequence: \\1"),
        (
            "health.body",
            "\\u0041",
            "not a Go (RE2) regular expression: invalid escape sequence: \\u",
        ),
        (
            "health.body",
            "a{1001}",
            "not a Go (RE2) regular expression: invalid repetition size: {1001}",
        ),
        ("health.passes", "0", "out of range (use 1..1000)"),
        ("health.fails", "0", "out of range (use 1..1000)"),
        ("health.interval", "0s", "must be longer than 0 (e.g. 250ms, 5s, 1m30s)"),
        ("health.headers.Bad Name", "x", "'Bad Name' is not a valid header name"),
        ("health.headers.X-A", "a\nb", "header values cannot contain line breaks"),
    ],
)
def test_bad_health_values(key: str, value: str, why: str) -> None:
    routes, problems = parse({"host": "a.com", "health.path": "/hz", key: value})
    assert routes == []
    assert [str(p) for p in problems] == [f"container 'web': labelsync.{key}={value!r}: {why}"]


def test_health_keys_without_a_path_warn() -> None:
    labels = {"host": "a.com", "health.interval": "5s", "health.headers.X-A": "1"}
    assert warnings(labels) == [
        "container 'web': labelsync.health.interval='5s': has no effect without "
        "labelsync.health.path",
        "container 'web': labelsync.health.headers.X-A='1': has no effect without "
        "labelsync.health.path",
    ]
    assert one_route(labels).settings.active is None


# -- passive health --------------------------------------------------------------------


def test_no_passive_checks_by_default() -> None:
    assert settings({}).passive is None


def test_passive_on_alone_uses_defaults() -> None:
    assert settings({"health.passive": "on"}).passive == PassiveHealth()


def test_passive_off_with_a_health_path() -> None:
    s = settings({"health.path": "/hz", "health.passive": "off"})
    assert s.active is not None and s.passive is None


def test_every_passive_key() -> None:
    s = settings(
        {
            "health.passive.fail_duration": "1m",
            "health.passive.max_fails": "5",
            "health.passive.unhealthy_latency": "2s",
            "health.passive.unhealthy_status": "429, 5XX,429",
        }
    )
    assert s.passive == PassiveHealth(
        fail_duration="1m", max_fails=5, unhealthy_latency="2s", unhealthy_status=(5, 429)
    )
    assert s.active is None


def test_unhealthy_latency_zero_is_off() -> None:
    passive = settings({"health.passive.unhealthy_latency": "0"}).passive
    assert passive is not None and passive.unhealthy_latency is None


def test_passive_keys_while_passive_is_off_warn() -> None:
    labels = {"host": "a.com", "health.passive": "off", "health.passive.max_fails": "2"}
    assert warnings(labels) == [
        "container 'web': labelsync.health.passive.max_fails='2': has no effect while "
        "labelsync.health.passive is off"
    ]
    assert one_route(labels).settings.passive is None


def test_bad_passive_values() -> None:
    assert errors(
        {
            "host": "a.com",
            "health.passive.max_fails": "0",
            "health.passive.unhealthy_status": "5xx,oops",
        }
    ) == [
        "container 'web': labelsync.health.passive.max_fails='0': out of range (use 1..1000000)",
        "container 'web': labelsync.health.passive.unhealthy_status='5xx,oops': "
        "'oops' is not a status (use a code like 200 or a class like 2xx)",
    ]


# -- named routes and inheritance -----------------------------------------------------------


def test_named_routes_inherit_every_default_key() -> None:
    routes, problems = parse(
        {
            "host": "a.com",
            "lb.policy": "first",
            "port": "8080",
            "weight": "3",
            "route.api.host": "api.a.com",
            "route.api.path": "/api/*",
            "route.admin.host": "admin.a.com",
            "route.admin.port": "9000",
            "route.admin.lb.policy": "least_conn",
        },
        ports=(8080, 9000),
    )
    assert problems == []
    by_name = {r.route_name: r for r in routes}
    assert [r.route_name for r in routes] == ["", "admin", "api"]
    assert by_name["api"].settings.lb_policy == "first"
    assert by_name["api"].address == "172.18.0.2:8080"
    assert by_name["api"].path == "/api/*" and by_name[""].path is None
    assert by_name["admin"].settings.lb_policy == "least_conn"
    assert by_name["admin"].address == "172.18.0.2:9000"
    assert by_name["admin"].weight == 3


def test_named_route_needs_a_host_to_exist() -> None:
    routes, problems = parse({"route.api.path": "/api"})
    assert routes == []
    assert [str(p) for p in problems] == [
        "container 'web': has labelsync labels but no route: set labelsync.host"
    ]


def test_named_route_inherits_the_default_host() -> None:
    routes, _ = parse({"host": "a.com", "route.api.path": "/api/*", "route.api.port": "81"})
    assert [(r.route_name, r.hosts, r.path) for r in routes] == [
        ("", ("a.com",), None),
        ("api", ("a.com",), "/api/*"),
    ]


def test_bad_value_on_a_named_route_drops_only_that_route() -> None:
    routes, problems = parse(
        {"host": "a.com", "route.api.host": "api.com", "route.api.lb.policy": "nope"}
    )
    assert [r.route_name for r in routes] == [""]
    assert [p.key for p in problems] == ["labelsync.route.api.lb.policy"]


def test_inherited_bad_value_drops_the_named_route_and_says_so_once() -> None:
    routes, problems = parse(
        {
            "host": "a.com",
            "lb.policy": "nope",
            "weight": "x",
            "route.api.host": "api.com",
            "route.ok.host": "ok.com",
            "route.ok.lb.policy": "first",
            "route.ok.weight": "2",
        }
    )
    assert [r.route_name for r in routes] == ["ok"]
    assert [str(p) for p in problems] == [
        "container 'web': labelsync.lb.policy='nope': unknown policy (one of: random, "
        "round_robin, weighted_round_robin, least_conn, ip_hash, client_ip_hash, uri_hash, "
        "first, cookie, header, query, random_choose)",
        "container 'web': labelsync.weight='x': not a whole number (use 0..1000000)",
        "container 'web': labelsync.route.api: route dropped: it inherits the invalid "
        "labelsync.lb.policy, labelsync.weight",
    ]


def test_missing_port_is_reported_once_for_all_routes() -> None:
    routes, problems = parse({"host": "a.com", "route.api.host": "api.com"}, ports=(1, 2))
    assert routes == []
    assert [p.key for p in problems] == ["labelsync.port"]


def test_named_route_headers_inherit_per_header() -> None:
    routes, _ = parse(
        {
            "host": "a.com",
            "health.path": "/hz",
            "health.headers.A": "1",
            "health.headers.B": "2",
            "route.x.host": "x.com",
            "route.x.health.headers.B": "3",
        }
    )
    active = routes[1].settings.active
    assert active is not None and active.headers == (("A", "1"), ("B", "3"))


def test_the_label_schema_is_one_table() -> None:
    """Every pool key of KEYS maps back from PoolSettings, and nothing else does: the
    conflict warnings and the parser speak of the same keys."""
    from labelsync.core.labels import KEYS, MEMBER_KEYS, pool_key_values
    from labelsync.core.model import ActiveHealth, PassiveHealth, PoolSettings

    everything = PoolSettings(
        active=ActiveHealth(path="/health", headers=(("X-Probe", "1"),)),
        passive=PassiveHealth(),
    )
    written = set(pool_key_values(everything)) - {"health.headers.X-Probe"}
    pool_keys = set(KEYS) - MEMBER_KEYS - {"host", "path"}  # host and path name the pool
    assert written == pool_keys
