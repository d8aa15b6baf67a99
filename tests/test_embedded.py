"""EmbeddedCaddy: the bundled binary as a supervised child, its admin API on a unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.embedded import EmbeddedCaddy, bundled_caddy, default_runtime_dir
from labelsync.caddy.operations import AddRoute
from labelsync.caddy.render import render_server
from labelsync.core.caddy_metrics import read_http_counts, turns_metrics_on
from labelsync.errors import CaddyUnavailable
from tests.support.caddy import CaddyProcess, free_port
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(autouse=True)
def private_caddy_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Children inherit the environment: keep Caddy's data and config out of $HOME."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture
async def make_caddy(tmp_path: Path) -> AsyncIterator[Callable[..., EmbeddedCaddy]]:
    """Factory for EmbeddedCaddy instances in the test's runtime dir; all stopped after."""
    made: list[EmbeddedCaddy] = []

    def make(**options: object) -> EmbeddedCaddy:
        options.setdefault("runtime_dir", tmp_path / "run")
        options.setdefault("listen", [f"127.0.0.1:{free_port()}"])
        options.setdefault("auto_https", "off")
        caddy = EmbeddedCaddy(**options)  # type: ignore[arg-type]
        made.append(caddy)
        return caddy

    yield make
    for caddy in made:
        await caddy.stop()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child stays a zombie until reaped; it no longer runs.
    status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return status != "Z"


async def get_text(url: str, host: str) -> tuple[int, str]:
    async with httpx.AsyncClient(trust_env=False, timeout=5.0) as client:
        response = await client.get(url, headers={"Host": host})
        return response.status_code, response.text


async def test_start_answers_on_the_socket_and_serves_on_the_listen_address(
    make_caddy: Callable[..., EmbeddedCaddy],
) -> None:
    port = free_port()
    caddy = make_caddy(listen=[f"127.0.0.1:{port}"])
    await caddy.start()

    assert caddy.admin_endpoint == f"unix://{caddy.runtime_dir}/admin.sock"
    assert stat.S_IMODE(caddy.runtime_dir.stat().st_mode) == 0o700
    admin = CaddyAdmin(caddy.admin_endpoint)
    try:
        assert await admin.ping()
        skeleton = render_server([f"127.0.0.1:{port}"], "off", [])
        server, etag = await admin.server("labelsync")
        assert server == skeleton
        assert await admin.ensure_server("labelsync", skeleton) is False

        route = {
            "@id": "labelsync-hello",
            "match": [{"host": ["hello.test"]}],
            "handle": [{"handler": "static_response", "body": "hello"}],
        }
        await admin.apply("labelsync", [], [AddRoute(0, route)], etag)
        assert await get_text(f"http://127.0.0.1:{port}/", "hello.test") == (200, "hello")
    finally:
        await admin.aclose()

    pid = caddy.pid
    assert pid is not None
    await caddy.stop()
    assert caddy.pid is None
    assert not alive(pid)
    assert not caddy.pid_path.exists()
    assert "admin endpoint started" in caddy.log_path.read_text()


async def test_the_bundled_caddy_counts_requests_per_host_when_told_to(
    make_caddy: Callable[..., EmbeddedCaddy], tmp_path: Path
) -> None:
    """Issue 18: per-host request metrics cost the bundled Caddy more than 5 % of its
    throughput (docs/performance.md, busy pools), so they are opt-in there too:
    `LABELSYNC_CADDY_METRICS=on` puts them in its base config, and each pool's host then
    has counters of its own in Caddy's `/metrics`."""
    default = make_caddy(runtime_dir=tmp_path / "default")
    assert "metrics" not in default.base_config()["apps"]["http"]
    port = free_port()
    caddy = make_caddy(
        listen=[f"127.0.0.1:{port}"], http_metrics=turns_metrics_on("on", bundled=True)
    )
    assert caddy.base_config()["apps"]["http"]["metrics"] == {"per_host": True}
    await caddy.start()
    dead = {"dial": f"127.0.0.1:{free_port()}"}  # nothing listens: each request a 502
    route = {
        "@id": "labelsync-proxy",
        "match": [{"host": ["proxy.test"]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [dead]}],
    }
    admin = CaddyAdmin(caddy.admin_endpoint)
    try:
        _, etag = await admin.server("labelsync")
        await admin.apply("labelsync", [], [AddRoute(0, route)], etag)
        for _ in range(3):
            assert (await get_text(f"http://127.0.0.1:{port}/", "proxy.test"))[0] == 502
        reading = read_http_counts(await admin.metrics_text(), "labelsync")
    finally:
        await admin.aclose()
    counted = reading.hosts["proxy.test"]
    assert (counted.requests, counted.failed, counted.proxy_errors) == (3, 3, 3)


async def test_nothing_is_autosaved(
    make_caddy: Callable[..., EmbeddedCaddy], tmp_path: Path
) -> None:
    caddy = make_caddy()
    await caddy.start()
    admin = CaddyAdmin(caddy.admin_endpoint)
    try:
        await admin.ensure_server("other", {"listen": [f"127.0.0.1:{free_port()}"]})
    finally:
        await admin.aclose()
    await caddy.stop()
    assert not list((tmp_path / "config").rglob("autosave.json"))


async def test_supervise_restarts_a_killed_child_from_the_base_config(
    make_caddy: Callable[..., EmbeddedCaddy],
) -> None:
    restarted = asyncio.Event()
    port = free_port()
    caddy = make_caddy(listen=[f"127.0.0.1:{port}"], on_restart=restarted.set)
    await caddy.start()
    supervisor = asyncio.create_task(caddy.supervise())
    first_pid = caddy.pid
    assert first_pid is not None

    os.kill(first_pid, signal.SIGKILL)
    await asyncio.wait_for(restarted.wait(), timeout=20)

    assert caddy.restarts == 1
    assert caddy.pid not in (None, first_pid)
    admin = CaddyAdmin(caddy.admin_endpoint)
    try:
        server, _ = await admin.server("labelsync")
        assert server == render_server([f"127.0.0.1:{port}"], "off", [])
    finally:
        await admin.aclose()
    # The listener is back (no routes yet: Caddy answers an empty 200).
    assert await eventually(lambda: get_text(f"http://127.0.0.1:{port}/", "any.test"))

    second_pid = caddy.pid
    assert second_pid is not None
    await caddy.stop()
    await asyncio.wait_for(supervisor, timeout=10)
    assert not alive(second_pid)


async def test_start_fails_with_caddys_output_when_the_port_is_taken(
    make_caddy: Callable[..., EmbeddedCaddy],
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        caddy = make_caddy(listen=[f"127.0.0.1:{port}"])
        with pytest.raises(CaddyUnavailable) as caught:
            await caddy.start()
    assert "exited with code 1" in str(caught.value)
    assert "address already in use" in str(caught.value)


async def test_a_child_that_never_answers_is_killed(
    make_caddy: Callable[..., EmbeddedCaddy], tmp_path: Path
) -> None:
    """A child ignoring SIGTERM is SIGKILLed after the grace period; start() reports it."""
    stubborn = tmp_path / "stubborn-caddy"
    stubborn.write_text("#!/bin/sh\ntrap '' TERM\necho 'not really caddy'\nexec sleep 60\n")
    stubborn.chmod(0o755)
    caddy = make_caddy(binary=stubborn, start_timeout=0.5)

    with pytest.raises(CaddyUnavailable) as caught:
        await caddy.start()

    assert "did not answer" in str(caught.value)
    assert "not really caddy" in str(caught.value)
    assert caddy.pid is None


HELLO_ROUTE = {
    "@id": "labelsync-hello",
    "match": [{"host": ["hello.test"]}],
    "handle": [{"handler": "static_response", "body": "hello"}],
}


def admin_request_lines(text: str) -> list[str]:
    """Caddy's log lines for admin API requests (logger `admin.api`, "received request")."""
    found = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("logger") == "admin.api" and entry.get("msg") == "received request":
            found.append(line)
    return found


async def test_start_adopts_a_healthy_child_left_by_an_earlier_run(
    make_caddy: Callable[..., EmbeddedCaddy],
) -> None:
    """A labelsync killed with -9 leaves its Caddy running: the next start in the same
    runtime directory adopts it (same pid, routes still served, nothing restarted), and
    stop() ends it as it would its own child."""
    port = free_port()
    earlier = make_caddy(listen=[f"127.0.0.1:{port}"])
    await earlier.start()
    orphan = earlier.pid
    assert orphan is not None
    admin = CaddyAdmin(earlier.admin_endpoint)
    try:
        server, etag = await admin.server("labelsync")
        assert server is not None
        await admin.apply("labelsync", [], [AddRoute(0, HELLO_ROUTE)], etag)
        before = (await admin.get("/config/"))[1]
    finally:
        await admin.aclose()

    later = make_caddy(listen=[f"127.0.0.1:{port}"])
    await later.start()

    assert later.pid == orphan
    assert later.adopted
    assert await get_text(f"http://127.0.0.1:{port}/", "hello.test") == (200, "hello")
    admin = CaddyAdmin(later.admin_endpoint)
    try:
        assert (await admin.get("/config/"))[1] == before, "adopting wrote to Caddy"
    finally:
        await admin.aclose()

    await later.stop()
    assert not alive(orphan)
    assert not later.pid_path.exists()


async def test_an_adopted_caddy_that_dies_is_restarted_as_a_child(
    make_caddy: Callable[..., EmbeddedCaddy], errors_logged: list[str]
) -> None:
    """supervise() watches an adopted Caddy (not its child) as it does a child: when it
    dies, the ERROR says so and a fresh child takes over (on_restart restores routes)."""
    port = free_port()
    earlier = make_caddy(listen=[f"127.0.0.1:{port}"])
    await earlier.start()
    orphan = earlier.pid
    assert orphan is not None
    restarted = asyncio.Event()
    later = make_caddy(listen=[f"127.0.0.1:{port}"], on_restart=restarted.set)
    await later.start()
    assert later.adopted
    supervisor = asyncio.create_task(later.supervise())

    os.kill(orphan, signal.SIGKILL)
    await asyncio.wait_for(restarted.wait(), timeout=20)

    assert later.pid not in (None, orphan)
    assert not later.adopted
    assert later.restarts == 1
    assert any(f"(pid {orphan}) exited" in m for m in errors_logged), errors_logged
    await later.stop()
    await asyncio.wait_for(supervisor, timeout=10)


async def test_a_leftover_that_does_not_answer_is_replaced(
    make_caddy: Callable[..., EmbeddedCaddy],
) -> None:
    """A leftover Caddy that is alive but does not answer its admin API (frozen here) is
    stopped, and a fresh child takes its place."""
    port = free_port()
    earlier = make_caddy(listen=[f"127.0.0.1:{port}"])
    await earlier.start()
    orphan = earlier.pid
    assert orphan is not None
    os.kill(orphan, signal.SIGSTOP)

    later = make_caddy(listen=[f"127.0.0.1:{port}"])
    await later.start()

    assert not alive(orphan)
    assert later.pid not in (None, orphan)
    assert not later.adopted
    admin = CaddyAdmin(later.admin_endpoint)
    try:
        assert await admin.ping()
    finally:
        await admin.aclose()


async def test_a_leftover_with_other_settings_is_replaced(
    make_caddy: Callable[..., EmbeddedCaddy],
) -> None:
    """A leftover that answers but was started for other settings (another listen
    address) is not adopted: it is stopped and a child with this run's config starts."""
    earlier = make_caddy(listen=[f"127.0.0.1:{free_port()}"])
    await earlier.start()
    orphan = earlier.pid
    assert orphan is not None

    port = free_port()
    later = make_caddy(listen=[f"127.0.0.1:{port}"])
    await later.start()

    assert not alive(orphan)
    assert later.pid not in (None, orphan)
    assert await eventually(lambda: get_text(f"http://127.0.0.1:{port}/", "any.test"))


async def test_admin_requests_stay_out_of_caddys_log(
    make_caddy: Callable[..., EmbeddedCaddy],
) -> None:
    """labelsync polls the admin API (a route probe every 0.5 s): Caddy logs every admin
    request at INFO (logger `admin.api`), which buried the bundled Caddy's log. After
    labelsync's own kinds of writes and a few seconds of polling, caddy.log holds no
    request line, the setting is still in Caddy's config, and Caddy's other lines are
    there."""
    caddy = make_caddy()
    await caddy.start()
    admin = CaddyAdmin(caddy.admin_endpoint)
    try:
        server, etag = await admin.server("labelsync")
        assert server is not None
        await admin.apply("labelsync", [], [AddRoute(0, HELLO_ROUTE)], etag)
        await admin.ensure_server("other", {"listen": [f"127.0.0.1:{free_port()}"]})
        for _ in range(30):  # 3 s of polling, as the route watch does
            assert await admin.has_id("labelsync-hello")
            await asyncio.sleep(0.1)
        logging_now, _ = await admin.get("/config/logging")
    finally:
        await admin.aclose()
    await caddy.stop()

    text = caddy.log_path.read_text()
    assert admin_request_lines(text) == []
    assert "admin endpoint started" in text
    assert logging_now == caddy.base_config()["logging"]


async def test_the_exit_error_shows_the_cause(
    make_caddy: Callable[..., EmbeddedCaddy], errors_logged: list[str]
) -> None:
    """Caddy stopped from outside (SIGTERM) after a while of admin polling: the ERROR
    names the cause line (`exiting ... SIGTERM`) and no admin request line."""
    restarted = asyncio.Event()
    caddy = make_caddy(on_restart=restarted.set)
    await caddy.start()
    supervisor = asyncio.create_task(caddy.supervise())
    admin = CaddyAdmin(caddy.admin_endpoint)
    try:
        for _ in range(20):
            assert await admin.ping()
            await asyncio.sleep(0.05)
    finally:
        await admin.aclose()
    pid = caddy.pid
    assert pid is not None

    os.kill(pid, signal.SIGTERM)
    await asyncio.wait_for(restarted.wait(), timeout=20)
    await caddy.stop()
    await asyncio.wait_for(supervisor, timeout=10)

    exits = [m for m in errors_logged if f"(pid {pid}) exited" in m]
    assert len(exits) == 1, errors_logged
    assert '"signal":"SIGTERM"' in exits[0]
    assert "received request" not in exits[0]


PANICKY_CADDY = """#!/bin/sh
# The real Caddy until {trigger} appears (once); then a death the way a Go panic looks.
"{real}" "$@" &
child=$!
trap 'kill $child; wait $child; exit 0' TERM
while [ ! -e "{trigger}" ]; do sleep 0.05; done
rm -f "{trigger}"
kill -9 $child
wait $child
echo 'panic: runtime error: invalid memory address or nil pointer dereference' >&2
echo '[signal SIGSEGV: segmentation violation code=0x1 addr=0x0 pc=0x5d1e2a]' >&2
echo >&2
i=0
while [ $i -lt 40 ]; do
  echo "goroutine $i [running]:" >&2
  echo "github.com/caddyserver/caddy/v2.(*App).run(0xc000123456)" >&2
  echo "	/go/src/caddy/app.go:$i +0x1d" >&2
  i=$((i + 1))
done
exit 2
"""


async def test_the_exit_error_shows_a_panic_above_its_goroutine_dump(
    make_caddy: Callable[..., EmbeddedCaddy], errors_logged: list[str], tmp_path: Path
) -> None:
    """A Go panic prints its cause first and then a long goroutine dump: the ERROR shows
    the panic line, not only the last lines of the dump."""
    trigger = tmp_path / "panic-now"
    panicky = tmp_path / "panicky-caddy"
    panicky.write_text(PANICKY_CADDY.format(real=bundled_caddy(), trigger=trigger))
    panicky.chmod(0o755)
    restarted = asyncio.Event()
    caddy = make_caddy(binary=panicky, on_restart=restarted.set)
    await caddy.start()
    supervisor = asyncio.create_task(caddy.supervise())
    pid = caddy.pid

    trigger.touch()
    await asyncio.wait_for(restarted.wait(), timeout=20)
    await caddy.stop()
    await asyncio.wait_for(supervisor, timeout=10)

    exits = [m for m in errors_logged if f"(pid {pid}) exited" in m]
    assert len(exits) == 1, errors_logged
    assert "exited with code 2" in exits[0]
    assert "panic: runtime error: invalid memory address" in exits[0]


async def test_default_runtime_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_runtime_dir() == tmp_path / "labelsync"

    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_runtime_dir() == Path("/run/labelsync")

    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    private = default_runtime_dir()
    assert private.parent == tmp_path and private.name.startswith("labelsync-")
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


async def test_auto_uses_the_first_caddy_that_answers(
    monkeypatch: pytest.MonkeyPatch, caddy: CaddyProcess
) -> None:
    """`LABELSYNC_CADDY_ADMIN=auto` tries localhost:2019, then labelsync-caddy.service's
    socket, and starts the bundled Caddy only when neither answers (production: the Caddy
    unit must not be shadowed by a bundled Caddy clashing on its ports)."""
    from labelsync.app import daemon

    nobody = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(daemon, "AUTO_CADDY_ADMINS", (nobody, caddy.admin_url))
    assert await daemon._auto_endpoints() == [caddy.admin_url]
    monkeypatch.setattr(daemon, "AUTO_CADDY_ADMINS", (nobody,))
    assert await daemon._auto_endpoints() == ["embedded"]
