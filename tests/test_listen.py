"""Where Caddy listens: the listen plan, and the bundled Caddy serving each documented
combination with the curl docs/operations.md shows ("HTTPS and the listen ports")."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.embedded import EmbeddedCaddy
from labelsync.caddy.listen import (
    for_caddy_http_port,
    listen_plan,
    plan_listen,
    port_mismatch,
    whole_config,
)
from labelsync.caddy.operations import AddRoute
from labelsync.settings import Settings
from tests.support.caddy import free_port


@pytest.mark.parametrize(
    ("listen", "auto_https", "ports", "server_listen", "automatic_https"),
    [
        # The default: :443 is labelsync's, Caddy's redirect server takes :80.
        ([":80", ":443"], "on", (80, 443), (":443",), None),
        ([":8080", ":8443"], "on", (8080, 8443), (":8443",), None),
        ([":443", ":80"], "on", (80, 443), (":443",), None),
        # One port that is not the HTTPS port: plain HTTP, asked for by the listen.
        ([":8080"], "on", (8080, 443), (":8080",), {"disable": True}),
        # HTTPS only: no redirect server on a port nobody asked for.
        ([":443"], "on", (80, 443), (":443",), {"disable_redirects": True}),
        ([":8080", ":8443"], "off", (8080, 8443), (":8080", ":8443"), {"disable": True}),
        (
            [":8080", ":8443"],
            "disable_redirects",
            (8080, 8443),
            (":8080", ":8443"),
            {"disable_redirects": True},
        ),
    ],
)
def test_plan_of_each_combination(
    listen: list[str],
    auto_https: str,
    ports: tuple[int, int],
    server_listen: tuple[str, ...],
    automatic_https: object,
) -> None:
    plan = plan_listen(listen, auto_https)
    assert (plan.http_port, plan.https_port) == ports
    server = plan.server([])
    assert tuple(server["listen"]) == server_listen
    assert server.get("automatic_https") == automatic_https


def test_explicit_ports_win_over_the_derived_ones() -> None:
    plan = plan_listen([":9443", ":9080"], "on", http_port=9080, https_port=9443)
    assert (plan.http_port, plan.https_port) == (9080, 9443)
    assert plan.server([])["listen"] == [":9443"]
    settings = Settings(listen="127.0.0.1:7000", http_port=7000)
    assert listen_plan(settings).server([])["automatic_https"] == {"disable": True}


def test_the_bundled_config_sets_the_http_port_and_never_trusts_by_default() -> None:
    plan = plan_listen([":8080", ":8443"])
    config = whole_config(plan, "labelsync", [])
    assert config["apps"]["http"]["http_port"] == 8080
    # Caddy drops the port from redirects to its https_port: it must stay the default.
    assert "https_port" not in config["apps"]["http"]
    assert config["apps"]["pki"] == {"certificate_authorities": {"local": {"install_trust": False}}}
    trusting = whole_config(plan, "labelsync", [], install_trust=True)
    assert trusting["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is True


def test_descriptions_say_what_each_port_speaks() -> None:
    text = plan_listen([":8080", ":8443"]).describe()
    assert ":8080 (HTTP: Caddy redirects every request to HTTPS on :8443)" in text
    assert ":8443 (HTTPS)" in text
    assert "LABELSYNC_INSTALL_TRUST" in text
    assert plan_listen([":8080"]).describe() == ":8080 (plain HTTP)"
    assert plan_listen([":80", ":443"]).try_url("app.localhost") == "https://app.localhost/"
    assert plan_listen([":8080", ":8443"]).try_url("a.localhost") == "https://a.localhost:8443/"
    assert plan_listen([":8080"], "on").try_url("a.localhost") == "http://a.localhost:8080/"


def test_an_external_caddy_with_other_ports_gets_a_warning_not_a_change() -> None:
    plan = plan_listen([":8080", ":8443"])
    warning = port_mismatch(plan, None)
    assert warning is not None
    assert "apps.http.http_port is 80" in warning and '"http_port": 8080' in warning
    assert port_mismatch(plan, 8080) is None
    assert port_mismatch(plan_listen([":80", ":443"]), None) is None
    assert port_mismatch(plan_listen([":8080", ":8443"], "off"), None) is None
    # What labelsync creates there instead: both listeners, TLS, no redirect server.
    served = for_caddy_http_port(plan, None)
    assert served.server([]) == {
        "listen": [":8080", ":8443"],
        "automatic_https": {"disable_redirects": True},
        "routes": [],
    }
    assert ":8080 (HTTPS)" in served.describe()
    assert for_caddy_http_port(plan, 8080) == plan


# --- the bundled Caddy, each combination with its curl ------------------------------------


@pytest.fixture
async def bundled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[object]]:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    started: list[object] = []
    yield started
    for caddy in started:
        assert isinstance(caddy, EmbeddedCaddy)
        await caddy.stop()


async def _serve(caddy: EmbeddedCaddy, host: str) -> None:
    await caddy.start()
    admin = CaddyAdmin(caddy.admin_endpoint)
    try:
        _, etag = await admin.server("labelsync")
        route = {
            "@id": "labelsync-first-run",
            "match": [{"host": [host]}],
            "handle": [{"handler": "static_response", "body": "hello"}],
            "terminal": True,
        }
        await admin.apply("labelsync", [], [AddRoute(0, route)], etag)
    finally:
        await admin.aclose()


async def curl(*args: str) -> str:
    """curl -sS -i with the given arguments: status line and headers, then the body."""
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "-i", "-m", "5", *args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    out, _ = await process.communicate()
    return out.decode(errors="replace")


async def eventually_curl(expect: str, *args: str) -> str:
    """Caddy obtains the local certificate just after the write: allow it a moment."""
    text = ""
    for _ in range(50):
        text = await curl(*args)
        if expect in text:
            return text
        await asyncio.sleep(0.1)
    raise AssertionError(f"curl {' '.join(args)}: {expect!r} not in:\n{text}")


@pytest.mark.caddy
async def test_bundled_caddy_off_the_privileged_ports_redirects_to_its_https_port(
    bundled: list[object], tmp_path: Path
) -> None:
    http, https = free_port(), free_port()
    caddy = EmbeddedCaddy(
        runtime_dir=tmp_path / "run", listen=[f"127.0.0.1:{http}", f"127.0.0.1:{https}"]
    )
    bundled.append(caddy)
    await _serve(caddy, "first-run.localhost")
    resolve = f"first-run.localhost:{https}:127.0.0.1"
    body = await eventually_curl(
        "hello", "-k", "--resolve", resolve, f"https://first-run.localhost:{https}/"
    )
    assert body.startswith("HTTP/2 200")
    redirect = await curl("-H", "Host: first-run.localhost", f"http://127.0.0.1:{http}/x")
    assert redirect.startswith("HTTP/1.1 308"), redirect
    assert f"Location: https://first-run.localhost:{https}/x" in redirect
    log = caddy.log_path.read_text()
    assert "enabling automatic HTTP->HTTPS redirects" in log
    assert "root certificate trust store installation disabled" in log
    assert "certificate installed properly" not in log


@pytest.mark.caddy
async def test_bundled_caddy_plain_http_when_asked(bundled: list[object], tmp_path: Path) -> None:
    http, https = free_port(), free_port()
    caddy = EmbeddedCaddy(
        runtime_dir=tmp_path / "run",
        listen=[f"127.0.0.1:{http}", f"127.0.0.1:{https}"],
        auto_https="off",
    )
    bundled.append(caddy)
    await _serve(caddy, "plain.localhost")
    text = await eventually_curl(
        "hello", "-H", "Host: plain.localhost", f"http://127.0.0.1:{http}/"
    )
    assert text.startswith("HTTP/1.1 200")

    single = EmbeddedCaddy(runtime_dir=tmp_path / "run2", listen=[f"127.0.0.1:{free_port()}"])
    bundled.append(single)
    await _serve(single, "single.localhost")
    port = single.listen[0].rsplit(":", 1)[1]
    text = await eventually_curl(
        "hello", "-H", "Host: single.localhost", f"http://127.0.0.1:{port}/"
    )
    assert text.startswith("HTTP/1.1 200")
    assert os.path.exists(single.log_path)


@pytest.mark.caddy
async def test_bundled_caddy_disable_redirects_serves_both_and_https_only_binds_one(
    bundled: list[object], tmp_path: Path
) -> None:
    http, https = free_port(), free_port()
    caddy = EmbeddedCaddy(
        runtime_dir=tmp_path / "run",
        listen=[f"127.0.0.1:{http}", f"127.0.0.1:{https}"],
        auto_https="disable_redirects",
    )
    bundled.append(caddy)
    await _serve(caddy, "both.localhost")
    plain = await eventually_curl(
        "hello", "-H", "Host: both.localhost", f"http://127.0.0.1:{http}/"
    )
    assert plain.startswith("HTTP/1.1 200")
    resolve = f"both.localhost:{https}:127.0.0.1"
    secure = await eventually_curl(
        "hello", "-k", "--resolve", resolve, f"https://both.localhost:{https}/"
    )
    assert secure.startswith("HTTP/2 200")

    only = free_port()
    https_only = EmbeddedCaddy(
        runtime_dir=tmp_path / "run2", listen=[f"127.0.0.1:{only}"], https_port=only
    )
    bundled.append(https_only)
    await _serve(https_only, "tls.localhost")
    resolve = f"tls.localhost:{only}:127.0.0.1"
    secure = await eventually_curl(
        "hello", "-k", "--resolve", resolve, f"https://tls.localhost:{only}/"
    )
    assert secure.startswith("HTTP/2 200")
    assert "enabling automatic HTTP->HTTPS redirects" not in https_only.log_path.read_text()
