"""`labelsync run` as a real subprocess against the session Caddy.

Each daemon writes into a server of its own (own name, own loopback port) and answers
DNS on its own loopback port, so tests sharing one Caddy never see each other's routes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path
from typing import Any

import httpx

from labelsync.loop.coalesce import FILL_DELAY
from tests.support.cli import run_cli

from .caddy import LOG_DIR, CaddyProcess, admin_client, free_port
from .waiting import wait_until


def free_udp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1, below the kernel's ephemeral range.

    The resolver binds both and must bind them again when a test restarts labelsync; a
    port from the ephemeral range can meanwhile become the source port of one of the
    many outgoing connections a load test makes (seen: "Address already in use").
    """
    for port in random.sample(range(20000, 32000), 200):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        ):
            try:
                udp.bind(("127.0.0.1", port))
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port for a resolver between 20000 and 32000")


class LabelsyncProcess:
    """A `labelsync run` child process: its early exit raised with its log, and stopped
    by a signal (SIGKILL after `timeout`)."""

    process: subprocess.Popen[bytes] | None = None
    log_path: Path
    env: dict[str, str]

    def logs(self) -> str:
        raise NotImplementedError

    def _spawn(self) -> None:
        """Start `labelsync run` with `env`, its output appended to `log_path`."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "labelsync.app.cli", "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )

    def _raise_if_exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(
                f"labelsync exited with {self.process.returncode}:\n{self.logs()[-3000:]}"
            )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the daemon and wait; its exit code (None when it was not running)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        code = self.process.returncode
        self.process = None
        return code


class Daemon(LabelsyncProcess):
    """One `labelsync run`; `request()` goes through the server it owns in Caddy."""

    def __init__(
        self,
        caddy: CaddyProcess,
        *,
        name: str,
        upstreams: str = "dynamic",
        env: dict[str, str] | None = None,
    ) -> None:
        self.caddy = caddy
        self.server = name
        self.http_port = free_port()
        self.resolver_port = free_udp_port()
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = LOG_DIR / f"daemon-{name}.log"
        self.env = {
            **os.environ,
            "LABELSYNC_CADDY_ADMIN": caddy.admin_url,
            "LABELSYNC_CADDY_SERVER": name,
            "LABELSYNC_LISTEN": f"127.0.0.1:{self.http_port}",
            "LABELSYNC_AUTO_HTTPS": "off",
            "LABELSYNC_UPSTREAMS": upstreams,
            "LABELSYNC_RESOLVER_LISTEN": f"127.0.0.1:{self.resolver_port}",
            "LABELSYNC_LOG_LEVEL": "DEBUG",
            "LABELSYNC_RESYNC_INTERVAL": "60s",
            # Not the shared /run/labelsync/state.json: each test daemon keeps its own.
            "LABELSYNC_STATE_FILE": str(LOG_DIR / f"state-{name}.json"),
            # Off unless a test asks for it: daemons running side by side would race
            # for the default 127.0.0.1:9465.
            "LABELSYNC_DASHBOARD_LISTEN": "off",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._client = admin_client(timeout=10.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def server_path(self) -> str:
        return f"/config/apps/http/servers/{self.server}"

    def start(self, *, wait_synced: bool = True) -> Daemon:
        self._spawn()
        if wait_synced:
            # The first sync ends with the server present in Caddy.
            wait_until(self._server_exists, timeout=20, message=f"daemon {self.server} to sync")
        return self

    def _server_exists(self) -> bool:
        self._raise_if_exited()
        response = self._client.get(f"{self.caddy.admin_url}{self.server_path}")
        return response.status_code == 200 and response.json() is not None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`labelsync ARGS…` with this daemon's settings (`status`, `explain`, ...)."""
        return run_cli(*args, env=self.env)

    def status_json(self) -> dict[str, Any]:
        """`labelsync status --json`, which must succeed."""
        done = self.cli("status", "--json")
        assert done.returncode == 0, done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        return report

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, *, timeout: float = 15.0, after: int = 0) -> re.Match[str]:
        """Wait for a log line matching `pattern` (searching from character `after`)."""
        regex = re.compile(pattern)

        def found() -> re.Match[str] | None:
            self._raise_if_exited()
            return regex.search(self.logs(), after)

        return wait_until(found, timeout=timeout, message=f"log line /{pattern}/")

    def request(self, host: str, path: str = "/", **options: Any) -> httpx.Response:
        """One request through this daemon's Caddy server, on a fresh connection."""
        headers = {"Host": host, "Connection": "close", **options.pop("headers", {})}
        return self._client.get(f"{self.url}{path}", headers=headers, **options)

    def body(self, host: str, path: str = "/") -> str | None:
        """The answering backend's name, or None when the request failed or was not 200."""
        try:
            response = self.request(host, path, timeout=5.0)
        except httpx.HTTPError:
            return None
        return response.text.strip() if response.status_code == 200 else None

    def routes(self) -> list[dict[str, Any]]:
        response = self._client.get(f"{self.caddy.admin_url}{self.server_path}/routes")
        return list(response.json() or []) if response.status_code == 200 else []

    def shapes(self) -> list[dict[str, Any]]:
        """The owned routes without their member lists: what a membership change leaves be."""
        shapes = []
        for route in self.routes():
            if str(route.get("@id", "")).startswith("labelsync-"):
                handler = {k: v for k, v in route["handle"][0].items() if k != "upstreams"}
                shapes.append({**route, "handle": [handler, *route["handle"][1:]]})
        return shapes

    def fallbacks(self) -> dict[str, list[str]]:
        """Each owned dynamic route's fallback members (dial addresses), by @id."""
        return {
            route["@id"]: [u["dial"] for u in route["handle"][0].get("upstreams", [])]
            for route in self.routes()
            if "dynamic_upstreams" in route["handle"][0]
        }

    def config_etag(self) -> str:
        """The Etag of Caddy's whole config: unchanged means no admin write happened."""
        response = self._client.get(f"{self.caddy.admin_url}/config/")
        return response.headers["Etag"]

    def remove_server(self) -> None:
        with contextlib.suppress(httpx.HTTPError):
            self._client.delete(f"{self.caddy.admin_url}{self.server_path}")

    def close(self) -> None:
        self.stop()
        self.remove_server()
        self._client.close()


def wait_settled(
    daemon: Daemon,
    *,
    filled: Collection[str] = (),
    quiet: float = FILL_DELAY + 0.5,
    timeout: float = 20.0,
) -> None:
    """Wait until the dynamic routes of the `filled` hosts have their fallback lists and
    Caddy's config has not changed for `quiet` seconds.

    A join is routed (through the resolver) before the sync after it lands, and a
    later sync may still write: a pool's first member fills its empty fallback list
    once the loop has been quiet for `FILL_DELAY` (later while other pools the daemon
    sees keep changing). Tests that compare Caddy's config before and after something,
    or load it, wait for it first.
    """
    deadline = time.monotonic() + timeout

    def unfilled() -> list[str]:
        return [
            str(route["@id"])
            for route in daemon.routes()
            if "dynamic_upstreams" in route["handle"][0]
            and not route["handle"][0].get("upstreams")
            and set(route.get("match", [{}])[0].get("host", ())) & set(filled)
        ]

    etag, since = daemon.config_etag(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = daemon.config_etag()
        if now != etag:
            etag, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet and not unfilled():
            return
    raise AssertionError(
        f"Caddy's config kept changing for {timeout}s (fallback lists still empty: {unfilled()})"
    )


def wait_routed(
    daemon: Daemon, host: str, expected: set[str], *, timeout: float = 15.0, path: str = "/"
) -> None:
    """Wait until requests to `host` reach exactly the backends in `expected`."""
    deadline = time.monotonic() + timeout
    seen: set[str | None] = set()
    while time.monotonic() < deadline:
        seen = {daemon.body(host, path) for _ in range(max(4, 3 * len(expected)))}
        if seen == expected or (not expected and seen <= {None}):
            return
        time.sleep(0.1)
    raise AssertionError(f"{host}{path}: routed to {seen}, wanted {expected}")
