"""What an operator sees of a running labelsync: `labelsync status`, the Prometheus endpoint
with `/healthz`, JSON logs, and systemd's notify protocol, against real containers, a real
Caddy and real `labelsync run` processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import StartDaemon
from tests.support.caddy import free_port
from tests.support.containers import ContainerHandle
from tests.support.daemon import Daemon, wait_routed
from tests.support.docker_relay import DockerRelay
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]

FAST_CHECKS = {
    "labelsync.health.path": "/health",
    "labelsync.health.interval": "500ms",
    "labelsync.health.timeout": "1s",
    # Count 5xx answers as failures without ever ejecting the member for them.
    "labelsync.health.passive.unhealthy_status": "5xx",
    "labelsync.health.passive.max_fails": "1000",
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: unix socket paths must stay under 108 bytes."""
    with tempfile.TemporaryDirectory(prefix="lso-") as name:
        yield Path(name)


def pool_of(report: dict[str, Any], host: str) -> dict[str, Any] | None:
    return next((p for p in report["pools"] if host in p["hosts"]), None)


def members_by_name(daemon: Daemon, host: str) -> dict[str, dict[str, Any]]:
    pool = pool_of(daemon.status_json(), host)
    return {m["container"]: m for m in pool["members"]} if pool else {}


def test_status_shows_members_health_and_caddy_counts(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str, tmp_path: Path
) -> None:
    """Seed: `labelsync status` lists every member of a pool with its health; a failing
    health path turns one unhealthy (with why); in-flight requests and failures move."""
    daemon = start_daemon(env={"LABELSYNC_STATE_FILE": str(tmp_path / "state.json")})
    labels = {"labelsync.host": unique_host, "labelsync.lb.policy": "round_robin", **FAST_CHECKS}
    first, second = backend(labels=labels), backend(labels=labels)
    wait_routed(daemon, unique_host, {first.name, second.name})

    def both_healthy() -> dict[str, dict[str, Any]] | None:
        members = members_by_name(daemon, unique_host)
        healthy = {n for n, m in members.items() if m["health"] == "healthy"}
        return members if healthy == {first.name, second.name} else None

    members = wait_until(both_healthy, timeout=20, interval=0.2, message="both members healthy")
    assert members[first.name]["address"] == first.address()
    assert members[second.name]["address"] == second.address()
    assert all(m["total_requests"] is None for m in members.values())  # Caddy has no totals
    pool = pool_of(daemon.status_json(), unique_host)
    assert pool is not None and pool["policy"] == "round_robin"
    assert pool["upstreams"] == "dynamic"

    first.exec("rm", "/www/health")

    def first_unhealthy() -> dict[str, dict[str, Any]] | None:
        members = members_by_name(daemon, unique_host)
        return members if members[first.name]["health"] == "unhealthy" else None

    members = wait_until(first_unhealthy, timeout=20, interval=0.2, message="unhealthy member")
    assert "503" in members[first.name]["reason"]
    assert members[second.name]["health"] == "healthy"

    # Only the healthy member serves now: its failures and in-flight requests move.
    wait_routed(daemon, unique_host, {second.name})
    for _ in range(3):
        assert daemon.request(unique_host, "/status/500").status_code == 500
    slow = threading.Thread(target=daemon.request, args=(unique_host, "/slow?6"), daemon=True)
    slow.start()

    def counted() -> dict[str, Any] | None:
        member = members_by_name(daemon, unique_host)[second.name]
        return member if member["active_requests"] >= 1 and member["failures"] >= 3 else None

    member = wait_until(counted, timeout=6, interval=0.2, message="counts from Caddy")
    assert member["caddy_upstream"].endswith(f".labelsync.internal.:{second.ports[0]}")
    slow.join(timeout=10)

    table = daemon.cli("status")
    assert table.returncode == 0, table.stderr
    assert "MEMBER" in table.stdout and "HEALTH" in table.stdout
    rows = {line.split()[0]: line for line in table.stdout.splitlines() if line.strip()}
    assert "unhealthy" in rows[first.name] and "503" in rows[first.name]
    assert " healthy" in rows[second.name]
    assert "\x1b[" not in table.stdout  # no colour when not on a terminal


def test_status_in_static_mode_lists_members_from_caddy(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str, tmp_path: Path
) -> None:
    """Static mode: members come from Caddy's route, container names from the daemon."""
    daemon = start_daemon(
        upstreams="static", env={"LABELSYNC_STATE_FILE": str(tmp_path / "state.json")}
    )
    labels = {"labelsync.host": unique_host, "labelsync.health.passive.max_fails": "5"}
    one, two = backend(labels=labels), backend(labels=labels)
    wait_routed(daemon, unique_host, {one.name, two.name})

    def listed() -> dict[str, dict[str, Any]] | None:
        members = members_by_name(daemon, unique_host)
        return members if set(members) == {one.name, two.name} else None

    members = wait_until(listed, timeout=10, interval=0.2, message="both members listed")
    assert members[one.name]["address"] == one.address()
    # Passive checks only: healthy while failures stay under max_fails.
    assert {m["health"] for m in members.values()} == {"healthy"}
    assert all(m["failures"] == 0 for m in members.values())


def families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_metrics_healthz_and_json_logs(
    start_daemon: StartDaemon,
    backend: StartBackend,
    unique_host: str,
    short_dir: Path,
    tmp_path: Path,
) -> None:
    """Seed: /metrics answers with every family; /healthz turns 503 while the Docker socket
    is cut and 200 once it is back; JSON logs name the container of a label problem."""
    relay = DockerRelay(short_dir / "docker.sock").start()
    port = free_port()
    daemon: Daemon | None = None
    try:
        daemon = start_daemon(
            env={
                "LABELSYNC_DOCKER_HOST": relay.url,
                "LABELSYNC_METRICS_LISTEN": f"127.0.0.1:{port}",
                "LABELSYNC_LOG_FORMAT": "json",
                "LABELSYNC_STATE_FILE": str(tmp_path / "state.json"),
            }
        )
        labels = {"labelsync.host": unique_host, **FAST_CHECKS}
        good = backend(labels=labels)
        bad = backend(labels={"labelsync.host": unique_host, "labelsync.lb.policy": "rond_robin"})
        wait_routed(daemon, unique_host, {good.name})
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(trust_env=False, timeout=10) as client:
            daemon.request(unique_host, "/")

            def scraped() -> dict[str, Any] | None:
                found = families(client.get(f"{base}/metrics").text)
                healthy = found.get("labelsync_upstream_healthy")
                problems = found["labelsync_label_problems"]
                errors = [s for s in problems.samples if s.labels["severity"] == "error"]
                ready = healthy is not None and healthy.samples and errors[0].value >= 1
                return found if ready else None

            found = wait_until(scraped, timeout=15, interval=0.2, message="metrics of both")
            expected = {
                "labelsync_docker_events",
                "labelsync_applies",
                "labelsync_apply_duration_seconds",
                "labelsync_event_to_applied_seconds",
                "labelsync_caddy_admin_requests",
                "labelsync_caddy_admin_request_bytes",
                "labelsync_caddy_admin_writes",
                "labelsync_docker_up",
                "labelsync_caddy_up",
                "labelsync_last_apply_ok",
                "labelsync_pools",
                "labelsync_members",
                "labelsync_label_problems",
                "labelsync_health_checks",
                "labelsync_upstream_healthy",
                "labelsync_upstream_active_requests",
                "labelsync_upstream_failures",
            }
            assert expected <= set(found)
            sample = next(
                s
                for s in found["labelsync_upstream_healthy"].samples
                if s.labels["address"] == good.address()
            )
            assert sample.labels["container"] == good.name and sample.value == 1
            starts = [
                s
                for s in found["labelsync_docker_events"].samples
                if s.labels.get("action") == "start" and s.name.endswith("_total")
            ]
            assert starts and starts[0].value >= 2
            assert found["labelsync_docker_up"].samples[0].value == 1

            healthz = client.get(f"{base}/healthz")
            assert healthz.status_code == 200, healthz.text
            assert healthz.json()["status"] == "ok"

            relay.cut()

            def unavailable() -> httpx.Response | None:
                response = client.get(f"{base}/healthz")
                return response if response.status_code == 503 else None

            down = wait_until(unavailable, timeout=15, interval=0.1, message="/healthz 503")
            assert any("Docker" in reason for reason in down.json()["reasons"])
            assert down.json()["docker_up"] is False

            relay.restore()
            wait_until(
                lambda: client.get(f"{base}/healthz").status_code == 200,
                timeout=20,
                interval=0.2,
                message="/healthz 200 again",
            )

        lines = [line for line in daemon.logs().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        problem = next(
            r for r in records if r.get("container") == bad.name and r["level"] == "ERROR"
        )
        assert "lb.policy" in problem["message"] and problem["key"] == "labelsync.lb.policy"
    finally:
        if daemon is not None:
            daemon.stop()  # first: no reconnect may race the relay's shutdown
        relay.close()


class NotifyListener:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, address: str) -> None:
        self.address = address  # as NOTIFY_SOCKET spells it
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = "\0" + address[1:] if address.startswith("@") else address
        self.socket.bind(bind_to)
        self.messages: list[str] = []

    def wait_for(self, assignment: str, timeout: float = 20.0) -> list[str]:
        """Receive until a message holding `assignment` arrives; that message's lines."""
        self.socket.settimeout(timeout)
        while True:
            message = self.socket.recv(4096).decode()
            self.messages.append(message)
            lines = message.split("\n")
            if assignment in lines:
                return lines

    def close(self) -> None:
        self.socket.close()
        if not self.address.startswith("@"):
            with contextlib.suppress(OSError):
                os.unlink(self.address)


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_systemd_notify_ready_after_first_sync_and_watchdog(
    kind: str, start_daemon: StartDaemon, short_dir: Path, tmp_path: Path
) -> None:
    """`Type=notify`: READY=1 only once the first sync has written Caddy; WATCHDOG=1 pings
    when WATCHDOG_USEC asks for them; RELOADING=1 then READY=1 on SIGHUP; STOPPING=1 on
    the way out."""
    address = str(short_dir / "notify") if kind == "path" else f"@labelsync-{uuid.uuid4().hex}"
    listener = NotifyListener(address)
    try:
        daemon = start_daemon(
            wait_synced=False,
            env={
                "NOTIFY_SOCKET": address,
                "WATCHDOG_USEC": "400000",
                "LABELSYNC_STATE_FILE": str(tmp_path / "state.json"),
            },
        )
        ready = listener.wait_for("READY=1")
        # The first sync ends with labelsync's server in Caddy: it must be there already.
        server = httpx.get(f"{daemon.caddy.admin_url}{daemon.server_path}", trust_env=False)
        assert server.json() is not None
        assert any(line.startswith("STATUS=in sync") for line in ready)
        listener.wait_for("WATCHDOG=1")
        # SIGHUP: RELOADING=1 (with the monotonic time systemd matches it by), then READY=1.
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        reloading = listener.wait_for("RELOADING=1")
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        listener.wait_for("READY=1")
        daemon.stop()
        listener.wait_for("STOPPING=1", timeout=5)
    finally:
        listener.close()
