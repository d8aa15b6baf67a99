"""The read-only web dashboard on `LABELSYNC_DASHBOARD_LISTEN` (default 127.0.0.1:9465).

One page (`dashboard_page/`: HTML, CSS and JS shipped in the package, no external asset)
that polls `GET /api/status` every second: the very JSON `labelsync status --json` prints,
built from the daemon's live state and Caddy's admin API by the `gather` callable the
daemon passes in. Reports are built at most every `REPORT_TTL` seconds, however many
browsers poll, and carry an ETag: an unchanged report is a `304` of no body.

Served by the daemon's small HTTP endpoint (`report/http.py`) on its event loop, with a
strict security policy on every answer. Read-only: GET and HEAD only. On a loopback
address it answers only requests whose `Host` is a loopback name, so a web page
elsewhere cannot read it through DNS rebinding. Nothing on
it comes from the environment: the report holds pools, members, container names and
states, and labels under the prefix only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import time
from collections.abc import Awaitable, Callable
from importlib import resources

from loguru import logger

from labelsync.core.model import JSON
from labelsync.core.names import parse_listen
from labelsync.errors import ConfigError
from labelsync.report.http import TEXT, Answer, Handler, HttpEndpoint, Request, read_only

SETTING = "LABELSYNC_DASHBOARD_LISTEN"
REPORT_TTL = 0.5  # seconds a built report is served to every poller
ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
}
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def load_assets() -> dict[str, tuple[bytes, str]]:
    """The page's files, read from the installed package."""
    folder = resources.files("labelsync.report").joinpath("dashboard_page")
    return {
        path: (folder.joinpath(name).read_bytes(), content_type)
        for path, (name, content_type) in ASSETS.items()
    }


def is_loopback_host(host: str) -> bool:
    """Whether a `Host` header (name[:port]) names this machine's loopback."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Dashboard:
    """The dashboard endpoint of one daemon; `gather()` builds the report JSON."""

    def __init__(self, gather: Callable[[], Awaitable[JSON]]) -> None:
        self.gather = gather
        self.assets = load_assets()
        self.reports_built = 0
        self._loopback_only = True
        routes = {path: self._asset(path) for path in self.assets}
        self.endpoint = HttpEndpoint(
            {**routes, "/api/status": self._status},
            setting=SETTING,
            guards=(self._loopback_guard, read_only),
            headers=SECURITY_HEADERS,
        )
        self._cached: tuple[float, bytes, str] | None = None
        self._building: asyncio.Task[tuple[bytes, str]] | None = None

    # -- the report ----------------------------------------------------------------------------
    async def report(self) -> tuple[bytes, str]:
        """The current report as JSON bytes and its ETag; one build serves every poller
        for REPORT_TTL seconds, and concurrent requests share a build."""
        cached = self._cached
        if cached is not None and time.monotonic() - cached[0] < REPORT_TTL:
            return cached[1], cached[2]
        if self._building is None:
            self._building = asyncio.create_task(self._build())
        building = self._building
        try:
            return await asyncio.shield(building)
        finally:
            if building.done() and self._building is building:
                self._building = None

    async def _build(self) -> tuple[bytes, str]:
        body = json.dumps(await self.gather(), indent=1).encode() + b"\n"
        etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
        self._cached = (time.monotonic(), body, etag)
        self.reports_built += 1
        return body, etag

    # -- HTTP ----------------------------------------------------------------------------------
    async def start(self, listen: str, *, required: bool = True) -> bool:
        """Serve on `listen`. When it cannot be bound: ConfigError if `required` (the
        operator set the address), else one WARNING and False (the default address is
        taken, say by a second labelsync): the daemon runs on without a dashboard."""
        try:
            host, _ = parse_listen(listen)
            await self.endpoint.bind(listen)
        except ValueError as exc:
            raise ConfigError(f"{SETTING} must be host:port, not {listen!r}") from exc
        except OSError as exc:
            reason = f"the dashboard cannot listen on {listen}: {exc.strerror or exc}"
            if required:
                raise ConfigError(f"{reason}; set {SETTING} to a free address, or off") from exc
            logger.warning(f"{reason}; running without it (set {SETTING} to another address)")
            return False
        self._loopback_only = host is not None and _is_loopback_address(host)
        logger.info(f"dashboard on http://{_url_host(host, self.bound_port)}/")
        return True

    @property
    def bound_port(self) -> int | None:
        return self.endpoint.bound_port

    async def aclose(self) -> None:
        await self.endpoint.aclose()
        if self._building is not None:
            self._building.cancel()
            with contextlib.suppress(BaseException):
                await self._building

    def _loopback_guard(self, request: Request) -> Answer | None:
        if self._loopback_only and not is_loopback_host(request.headers.get("host", "")):
            return Answer(
                "403 Forbidden", TEXT, b"this dashboard answers on a loopback name only\n"
            )
        return None

    async def _status(self, request: Request) -> Answer:
        body, etag = await self.report()
        headers = {"Cache-Control": "no-store", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Answer("304 Not Modified", "application/json", b"", headers)
        return Answer("200 OK", "application/json", body, headers)

    def _asset(self, path: str) -> Handler:
        content, content_type = self.assets[path]

        async def serve(request: Request) -> Answer:
            return Answer("200 OK", content_type, content, {"Cache-Control": "no-cache"})

        return serve


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _url_host(host: str | None, port: int | None) -> str:
    name = host or "0.0.0.0"
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
