"""report/dashboard.py: the page and /api/status over real HTTP on loopback, without Docker;
the browser test (tests/e2e/test_dashboard_browser.py) drives it with real containers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from labelsync.errors import ConfigError
from labelsync.report.dashboard import Dashboard, is_loopback_host, load_assets
from labelsync.settings import Settings


class Source:
    """A gather() that counts its calls and returns whatever `report` holds."""

    def __init__(self) -> None:
        self.report: dict[str, Any] = {"version": 1, "pools": []}
        self.calls = 0

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0.01)
        return self.report


@pytest.fixture
async def served() -> AsyncIterator[tuple[Dashboard, Source, str]]:
    source = Source()
    dashboard = Dashboard(source)
    assert await dashboard.start("127.0.0.1:0")
    try:
        yield dashboard, source, f"http://127.0.0.1:{dashboard.bound_port}"
    finally:
        await dashboard.aclose()


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=5.0)


async def test_page_and_assets_come_from_the_package_with_a_strict_policy(
    served: tuple[Dashboard, Source, str],
) -> None:
    _, _, url = served
    async with client() as http:
        page = await http.get(url + "/")
        script = await http.get(url + "/dashboard.js")
        style = await http.get(url + "/dashboard.css")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/dashboard.js"' in page.text and "http" not in page.text.lower()
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    # no external asset anywhere: every URL the page uses is its own
    for asset in load_assets().values():
        assert b"https://" not in asset[0] and b"http://" not in asset[0]


async def test_api_status_is_the_report_with_an_etag_and_304_when_unchanged(
    served: tuple[Dashboard, Source, str],
) -> None:
    _, source, url = served
    source.report = {"version": 1, "pools": [{"id": "labelsync-a"}]}
    async with client() as http:
        first = await http.get(url + "/api/status")
        same = await http.get(url + "/api/status", headers={"If-None-Match": first.headers["etag"]})
        await asyncio.sleep(0.6)  # past the report's time to live
        source.report = {"version": 1, "pools": []}
        changed = await http.get(
            url + "/api/status", headers={"If-None-Match": first.headers["etag"]}
        )
    assert first.status_code == 200 and first.json() == {
        "version": 1,
        "pools": [{"id": "labelsync-a"}],
    }
    assert first.headers["cache-control"] == "no-store"
    assert same.status_code == 304 and same.content == b""
    assert changed.status_code == 200 and changed.json()["pools"] == []
    assert changed.headers["etag"] != first.headers["etag"]


async def test_many_pollers_at_once_share_one_build(served: tuple[Dashboard, Source, str]) -> None:
    dashboard, source, url = served
    async with client() as http:
        answers = await asyncio.gather(*(http.get(url + "/api/status") for _ in range(20)))
    assert {a.status_code for a in answers} == {200}
    assert source.calls == 1 == dashboard.reports_built


async def test_read_only_and_loopback_names_only(served: tuple[Dashboard, Source, str]) -> None:
    _, _, url = served
    async with client() as http:
        posted = await http.post(url + "/api/status", content=b"{}")
        rebound = await http.get(url + "/api/status", headers={"Host": "evil.example:9465"})
        named = await http.get(url + "/", headers={"Host": "localhost:9465"})
        missing = await http.get(url + "/nothing")
    assert posted.status_code == 405
    assert rebound.status_code == 403
    assert named.status_code == 200
    assert missing.status_code == 404


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:9465", True),
        ("localhost", True),
        ("[::1]:9465", True),
        ("app.localhost:80", True),
        ("127.0.0.1.nip.io", False),
        ("example.com:9465", False),
        ("", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


async def test_a_taken_address_is_an_error_when_set_and_a_warning_by_default() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(ConfigError, match="LABELSYNC_DASHBOARD_LISTEN"):
            await Dashboard(Source()).start(address, required=True)
        dashboard = Dashboard(Source())
        assert await dashboard.start(address, required=False) is False
        await dashboard.aclose()
    with pytest.raises(ConfigError, match="must be host:port"):
        await Dashboard(Source()).start("nonsense", required=True)


def test_dashboard_is_on_at_loopback_by_default_and_can_be_turned_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().dashboard_listen == "127.0.0.1:9465"
    for off in ("off", "", "OFF"):
        monkeypatch.setenv("LABELSYNC_DASHBOARD_LISTEN", off)
        assert Settings().dashboard_listen is None
    monkeypatch.setenv("LABELSYNC_DASHBOARD_LISTEN", "0.0.0.0:9000")
    assert Settings().dashboard_listen == "0.0.0.0:9000"


async def test_with_caddy_unreachable_the_page_still_shows_the_daemons_view() -> None:
    from labelsync.app.status import live_report
    from labelsync.core.model import ContainerInfo
    from labelsync.core.pools import build_desired
    from labelsync.loop.reconcile import SyncState
    from tests.support.snapshots import snapshot_of

    web = ContainerInfo(
        id="w" * 64,
        name="web",
        created=1.0,
        labels={"labelsync.host": "app.test"},
        networks={"bridge": "172.17.0.9"},
        exposed_ports=(8080,),
    )
    state = SyncState(docker_up=True, caddy_up=False, last_apply_ok=False)
    state.desired, state.containers = build_desired([web]), (web,)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    report = await live_report(Settings(), snapshot_of([state]), endpoint)
    assert [p["hosts"] for p in report["pools"]] == [["app.test"]]
    assert report["containers"][0]["status"] == "routed"
    assert report["notes"][0].startswith("Caddy could not be read")


async def test_api_status_lists_a_stale_static_file_as_a_warning(tmp_path: Any) -> None:
    """The daemon's /api/status: a static file it cannot parse is a warning (with the
    file, the reason and since when) besides its problem, and the page draws warnings."""
    from labelsync.app.status import live_report
    from labelsync.core.model import DesiredState
    from labelsync.core.pools import build_desired
    from labelsync.loop.reconcile import SyncState
    from labelsync.sources.static import StaticFile
    from tests.support.snapshots import snapshot_of

    path = tmp_path / "static.toml"
    path.write_text('[routes.a]\nhost = "a.test"\nupstreams = ["10.9.9.9:80"]\n')
    static = StaticFile(path)
    static.reload()
    path.write_text("[routes.a\n")
    static.reload()
    built = build_desired(static.containers)
    state = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    state.desired = DesiredState(built.pools, static.merge_problems(built.problems))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    snapshot = snapshot_of([state])
    dashboard = Dashboard(lambda: live_report(Settings(), snapshot, endpoint))
    assert await dashboard.start("127.0.0.1:0")
    try:
        async with client() as http:
            report = (await http.get(f"http://127.0.0.1:{dashboard.bound_port}/api/status")).json()
    finally:
        await dashboard.aclose()
    (warning,) = report["warnings"]
    assert warning.startswith(f"static file {path}: not valid TOML: ")
    assert "(at line 1, column 10); stale since " in warning
    assert warning.endswith("Z: keeping the last good version (its routes still serve)")
    assert [p["text"] for p in report["other_problems"]] == [warning]
    assert [p["hosts"] for p in report["pools"]] == [["a.test"]]  # the last good route
    assert b"data.warnings" in load_assets()["/dashboard.js"][0]
