"""systemd integration: the notify protocol against real datagram sockets, and the unit file
checked by `systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from labelsync.loop.reconcile import SyncState
from labelsync.report.observability import status_line
from labelsync.report.sdnotify import SystemdNotifier, socket_address, watchdog_interval
from tests.support.requirements import systemd_analyze
from tests.support.snapshots import snapshot_of

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "labelsync.service"


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[tuple[str, socket.socket]]:
    """(NOTIFY_SOCKET value, the bound datagram socket systemd would hold)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.settimeout(5)
    with tempfile.TemporaryDirectory(prefix="lsn-") as directory:
        if request.param == "path":
            address = os.path.join(directory, "notify")
            listener.bind(address)
        else:
            address = f"@labelsync-test-{uuid.uuid4().hex}"
            listener.bind("\0" + address[1:])
        try:
            yield address, listener
        finally:
            listener.close()


def receive(listener: socket.socket) -> str:
    return listener.recv(4096).decode()


def test_messages_arrive_as_one_datagram_each(notify_socket: tuple[str, socket.socket]) -> None:
    address, listener = notify_socket
    notifier = SystemdNotifier(address, watchdog_every=0.5)
    assert notifier.ready("in sync: 1 pool(s)")
    assert receive(listener) == "READY=1\nSTATUS=in sync: 1 pool(s)"
    assert notifier.watchdog()
    assert receive(listener) == "WATCHDOG=1"
    assert notifier.status("Docker unreachable\nretrying")
    assert receive(listener) == "STATUS=Docker unreachable retrying"  # one assignment
    assert notifier.stopping()
    assert receive(listener) == "STOPPING=1"


def test_status_is_sent_only_when_it_changes(notify_socket: tuple[str, socket.socket]) -> None:
    address, listener = notify_socket
    notifier = SystemdNotifier(address)
    assert notifier.status("a")
    assert not notifier.status("a")
    assert notifier.status("b")
    assert [receive(listener), receive(listener)] == ["STATUS=a", "STATUS=b"]


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = SystemdNotifier(None, watchdog_every=1.0)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("x")
    assert not notifier.watchdog()


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path) -> None:
    notifier = SystemdNotifier(str(tmp_path / "gone"))
    assert not notifier.ready()
    assert not notifier.status("still running")


def test_environment_is_read_and_unset_for_children() -> None:
    environ = {
        "NOTIFY_SOCKET": "@sock",
        "WATCHDOG_USEC": "3000000",
        "WATCHDOG_PID": str(os.getpid()),
        "OTHER": "kept",
    }
    notifier = SystemdNotifier.from_environment(environ)
    assert notifier.notify_socket == "@sock"
    assert notifier.watchdog_interval == 1.5
    assert environ == {"OTHER": "kept"}


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        ("2000000", None, 1.0),
        ("2000000", "OWN", 1.0),
        ("2000000", "1", None),  # meant for another process
        ("0", None, None),
        ("x", None, None),
        (None, None, None),
    ],
)
def test_watchdog_interval(usec: str | None, pid: str | None, expected: float | None) -> None:
    own = os.getpid()
    assert watchdog_interval(usec, str(own) if pid == "OWN" else pid, own) == expected


def test_socket_address_forms() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abstract/name") == b"\0abstract/name"


# -- the unit ----------------------------------------------------------------------------------


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """The shipped unit, with ExecStart pointed at this checkout's labelsync (verify checks
    that the binary exists), loads without a single warning."""
    analyze = systemd_analyze()
    executable = Path(shutil.which("labelsync") or REPO / ".venv" / "bin" / "labelsync")
    assert executable.exists(), "the labelsync entry point is not installed"
    text = UNIT.read_text()
    assert "ExecStart=/opt/labelsync/bin/labelsync run" in text
    unit = tmp_path / "labelsync.service"
    unit.write_text(text.replace("/opt/labelsync/bin/labelsync", str(executable)))
    done = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # unknown keys only warn: none allowed


def test_unit_declares_notify_hardening_and_the_docker_group() -> None:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    assert settings["Type"] == ["notify"]
    assert settings["NotifyAccess"] == ["main"]  # the bundled Caddy must not speak for us
    assert settings["SupplementaryGroups"] == ["docker"]
    assert settings["RuntimeDirectory"] == ["labelsync"]
    assert settings["EnvironmentFile"] == ["-/etc/labelsync/labelsync.env"]
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "PrivateTmp": "yes",
        "Restart": "on-failure",
    }.items():
        assert settings[key] == [value], key
    assert "WatchdogSec" in settings


def test_status_line_says_what_is_wrong_first() -> None:
    starting = SyncState(docker_up=True)
    assert status_line(snapshot_of([starting])) == "starting: first sync pending"
    synced = SyncState(docker_up=True, caddy_up=True, last_apply_ok=True)
    synced.synced.set()
    in_sync = "in sync: 0 pool(s), 0 member(s), 0 label problem(s)"
    assert status_line(snapshot_of([synced])) == in_sync
    synced.docker_up, synced.last_error = False, "no such socket"
    no_docker = "Docker unreachable; Caddy keeps its config (no such socket)"
    assert status_line(snapshot_of([synced])) == no_docker
    synced.docker_up, synced.caddy_up, synced.last_error = True, False, "refused"
    assert status_line(snapshot_of([synced])) == "Caddy unreachable; retrying (refused)"
