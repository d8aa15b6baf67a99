"""The real Caddy accepts what render writes, and applies diff's operations as predicted.

One bundled Caddy for the module (admin and listener on free loopback ports). Every
rendered config is loaded with `POST /load`; Caddy keeps the JSON it was given, so a GET
returns it unchanged. Operations go through the admin API exactly as labelsync's client
sends them, and the routes Caddy then holds must equal `apply_operations`' prediction.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from labelsync.caddy.diff import diff_routes, owned_routes
from labelsync.caddy.operations import (
    AddRoute,
    DeleteRoute,
    Operation,
    ReplaceRoute,
    ReplaceUpstreams,
    apply_operations,
)
from labelsync.caddy.render import RenderOptions, render_config, render_routes
from labelsync.core.model import JSON, ActiveHealth, DesiredState, PassiveHealth, Pool
from tests.support.caddy import CaddyProcess, admin_client
from tests.test_diff import current_lists, owned_lists, route, user_route
from tests.test_golden import GOLDEN_FILES, read_golden
from tests.test_render import make_pool

pytestmark = pytest.mark.caddy

SERVER = "labelsync"
USER_SERVER = "srv0"


@pytest.fixture(scope="module")
def caddy_process() -> Iterator[CaddyProcess]:
    process = CaddyProcess("render-accepts").start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def admin(caddy_process: CaddyProcess) -> Iterator[httpx.Client]:
    with admin_client(base_url=caddy_process.admin_url, timeout=10) as client:
        yield client


def load(caddy: CaddyProcess, admin: httpx.Client, servers: JSON) -> None:
    """POST /load a whole config: the base (admin, storage) with these servers."""
    config = caddy.base_config()
    config["apps"]["http"]["servers"] = servers
    response = admin.post("/load", json=config)  # httpx sets Content-Type: application/json
    assert response.status_code == 200, response.text


def load_rendered(
    caddy: CaddyProcess, admin: httpx.Client, desired: DesiredState, options: RenderOptions
) -> None:
    config = render_config(
        desired,
        options,
        server_name=SERVER,
        listen=[f"127.0.0.1:{caddy.http_port}"],
        auto_https="off",  # "on" would make Caddy ask an ACME CA for these hostnames
    )
    load(caddy, admin, config["apps"]["http"]["servers"])
    held = admin.get(f"/config/apps/http/servers/{SERVER}/routes").json()
    assert held == render_routes(desired, options)


def feature_catalogue() -> DesiredState:
    """Pools that together use every field render can write."""
    policies: list[dict[str, Any]] = [
        {"lb_policy": "random"},
        {"lb_policy": "round_robin"},
        {"lb_policy": "weighted_round_robin"},
        {"lb_policy": "least_conn"},
        {"lb_policy": "ip_hash"},
        {"lb_policy": "client_ip_hash"},
        {"lb_policy": "uri_hash"},
        {"lb_policy": "first"},
        {"lb_policy": "cookie"},
        {"lb_policy": "cookie", "lb_key": "sticky_session_id"},
        {"lb_policy": "header", "lb_key": "X-Tenant"},
        {"lb_policy": "query", "lb_key": "user"},
        {"lb_policy": "random_choose", "lb_choose": 3},
        {"split": 10},
    ]
    pools: list[Pool] = [
        make_pool(
            pool_id=f"labelsync-policy-{i}",
            hosts=(f"policy-{i}.example.com",),
            addresses=("10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"),
            weights=(9, 1, 0),
            **policy,
        )
        for i, policy in enumerate(policies)
    ]
    pools += [
        make_pool(
            pool_id="labelsync-everything",
            hosts=("a.example.com", "b.example.com"),
            path="/api/*",
            retries=2,
            lb_try_duration="5s",
            lb_try_interval="250ms",
            scheme="https",
            tls_skip_verify=True,
            tls_server_name="api.internal",
            active=ActiveHealth(
                path="/healthz",
                interval="10s",
                timeout="2s",
                expect_status=2,
                port=8081,
                body="^ok",
                passes=2,
                fails=3,
                headers=(("Host", "probe.internal"), ("X-Probe", "1")),
            ),
            passive=PassiveHealth(
                fail_duration="30s", max_fails=3, unhealthy_latency="2s", unhealthy_status=(5, 429)
            ),
            timeout_dial="3s",
            timeout_response_header="1m30s",
        ),
        make_pool(pool_id="labelsync-h2c", hosts=("grpc.example.com",), scheme="h2c"),
        make_pool(pool_id="labelsync-tls", hosts=("tls.example.com",), scheme="https"),
        make_pool(pool_id="labelsync-empty", hosts=("empty.example.com",), addresses=()),
        make_pool(
            pool_id="labelsync-passive-only",
            hosts=("passive.example.com",),
            passive=PassiveHealth(),
        ),
    ]
    return DesiredState(pools=tuple(pools))


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_caddy_loads_every_feature(
    caddy_process: CaddyProcess, admin: httpx.Client, mode: str
) -> None:
    options = RenderOptions(upstreams="static" if mode == "static" else "dynamic")
    load_rendered(caddy_process, admin, feature_catalogue(), options)


def test_caddy_loads_custom_render_options(
    caddy_process: CaddyProcess, admin: httpx.Client
) -> None:
    options = RenderOptions(
        resolver="127.0.0.1:9953", resolver_refresh="1s", stream_close_delay="1h30m"
    )
    load_rendered(caddy_process, admin, feature_catalogue(), options)


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_caddy_loads_every_golden(
    caddy_process: CaddyProcess, admin: httpx.Client, path: Path
) -> None:
    golden = read_golden(path)
    static = RenderOptions(upstreams="static")
    load_rendered(caddy_process, admin, golden.desired(dynamic=False), static)
    load_rendered(caddy_process, admin, golden.desired(dynamic=True), RenderOptions())


class _Named(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"backend-{cast(HTTPServer, self.server).server_port}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_rendered_static_route_serves_traffic(
    caddy_process: CaddyProcess, admin: httpx.Client
) -> None:
    backends = [HTTPServer(("127.0.0.1", 0), _Named) for _ in range(2)]
    threads = [threading.Thread(target=b.serve_forever, daemon=True) for b in backends]
    for thread in threads:
        thread.start()
    try:
        addresses = tuple(f"127.0.0.1:{b.server_port}" for b in backends)
        pool = make_pool(
            pool_id="labelsync-traffic",
            hosts=("traffic.example.com",),
            addresses=addresses,
            lb_policy="round_robin",
            retries=1,
        )
        load_rendered(
            caddy_process, admin, DesiredState(pools=(pool,)), RenderOptions(upstreams="static")
        )
        bodies = {caddy_process.request("traffic.example.com").text for _ in range(4)}
        assert bodies == {f"backend-{b.server_port}" for b in backends}
    finally:
        for backend in backends:
            backend.shutdown()
            backend.server_close()


# -- operations against the real admin API ------------------------------------------------


def send(admin: httpx.Client, server: str, operation: Operation) -> None:
    """One operation as the admin request labelsync's client makes for it."""
    match operation:
        case AddRoute(index=index, route=new_route):
            response = admin.put(
                f"/config/apps/http/servers/{server}/routes/{index}", json=new_route
            )
        case ReplaceRoute(route_id=route_id, route=new_route):
            response = admin.patch(f"/id/{route_id}", json=new_route)
        case ReplaceUpstreams(route_id=route_id, upstreams=upstreams):
            response = admin.patch(f"/id/{route_id}/handle/0/upstreams", json=upstreams)
        case DeleteRoute(route_id=route_id):
            response = admin.delete(f"/id/{route_id}")
    assert response.status_code == 200, f"{operation}: {response.status_code} {response.text}"


def check_operations_match_caddy(
    caddy: CaddyProcess, admin: httpx.Client, current: list[JSON], desired: list[JSON]
) -> None:
    load(
        caddy,
        admin,
        {
            USER_SERVER: {
                "listen": [f"127.0.0.1:{caddy.http_port}"],
                "automatic_https": {"disable": True},
                "routes": current,
            }
        },
    )
    operations = diff_routes(current, desired)
    for operation in operations:
        send(admin, USER_SERVER, operation)
    held = admin.get(f"/config/apps/http/servers/{USER_SERVER}/routes").json() or []
    assert held == apply_operations(current, operations)
    assert owned_routes(held) == desired


def test_caddy_applies_every_kind_of_operation(
    caddy_process: CaddyProcess, admin: httpx.Client
) -> None:
    current = [
        route("labelsync-r1"),
        user_route("user-a"),
        route("labelsync-r2"),
        route("labelsync-r3"),
        route("labelsync-r4"),
        user_route(None, body="catch-all"),
    ]
    desired = [
        route("labelsync-r4"),  # moved: delete + add
        route("labelsync-r0"),  # new
        route("labelsync-r2", dials=("10.0.0.7:80", "10.0.0.8:80")),  # upstreams only
        route("labelsync-r3", policy="first"),  # whole route
        route("labelsync-r5"),  # new, appended at the end of the owned block
    ]  # r1: deleted
    kinds = {type(op) for op in diff_routes(current, desired)}
    assert kinds == {AddRoute, DeleteRoute, ReplaceRoute, ReplaceUpstreams}
    check_operations_match_caddy(caddy_process, admin, current, desired)


def test_caddy_puts_first_routes_on_top_and_appends_at_the_end(
    caddy_process: CaddyProcess, admin: httpx.Client
) -> None:
    users = [user_route("user-a"), user_route(None, body="catch-all")]
    check_operations_match_caddy(caddy_process, admin, users, [route("labelsync-r1")])
    # An index equal to the list's length appends.
    tail = [user_route("user-a"), route("labelsync-r1")]
    check_operations_match_caddy(
        caddy_process, admin, tail, [route("labelsync-r1"), route("labelsync-r2")]
    )
    # Deleting the last route leaves an empty list.
    check_operations_match_caddy(caddy_process, admin, [route("labelsync-r1")], [])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(current=current_lists(), desired=owned_lists())
def test_caddy_agrees_with_apply_operations(
    caddy_process: CaddyProcess, admin: httpx.Client, current: list[JSON], desired: list[JSON]
) -> None:
    check_operations_match_caddy(caddy_process, admin, current, desired)
