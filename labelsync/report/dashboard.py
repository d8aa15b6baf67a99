"""The read-only web dashboard on `LABELSYNC_DASHBOARD_LISTEN` (default 127.0.0.1:9465).

One page (`dashboard_page/`: HTML, CSS and JS shipped in the package, no external asset)
that polls `GET /api/status` every second: the very JSON `labelsync status --json` prints,
built from the daemon's live state and Caddy's admin API by the `gather` callable the
daemon passes in. Reports are built at most every `REPORT_TTL` seconds, however many
browsers poll, and carry an ETag: an unchanged report is a `304` of no body.

Served by a small HTTP/1.1 server of its own on the daemon's event loop (`report/http.py`
serves `/metrics`, but knows neither request headers nor response headers, and the page
needs both: ETag, Host, its security policy). Read-only:
GET and HEAD only. On a loopback address it answers only requests whose `Host` is a
loopback name, so a web page elsewhere cannot read it through DNS rebinding. Nothing on
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

SETTING = "LABELSYNC_DASHBOARD_LISTEN"
REPORT_TTL = 0.5  # seconds a built report is served to every poller
REQUEST_LIMIT = 16 * 1024
REQUEST_TIMEOUT = 5.0
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
        self._server: asyncio.Server | None = None
        self._loopback_only = True
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
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise ConfigError(f"{SETTING} must be host:port, not {listen!r}") from exc
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
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
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        if self._building is not None:
            self._building.cancel()
            with contextlib.suppress(BaseException):
                await self._building

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            status, headers, body = await self.answer(head)
            method = head.split(b" ", 1)[0]
            lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", "Connection: close"]
            lines += [f"{name}: {value}" for name, value in {**SECURITY_HEADERS, **headers}.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # not HTTP, or too slow: closed
        except ConnectionError:
            pass
        except Exception:
            logger.opt(exception=True).error("dashboard: answering a request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def answer(self, head: bytes) -> tuple[str, dict[str, str], bytes]:
        """Status line, headers and body for one request head."""
        if len(head) > REQUEST_LIMIT:
            return "431 Request Header Fields Too Large", _text(), b"request head too large\n"
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return "400 Bad Request", _text(), b"bad request line\n"
        method, target, _ = parts
        fields = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if self._loopback_only and not is_loopback_host(fields.get("host", "")):
            return "403 Forbidden", _text(), b"this dashboard answers on a loopback name only\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", {**_text(), "Allow": "GET, HEAD"}, b"read-only\n"
        path = target.split("?", 1)[0]
        if path == "/api/status":
            body, etag = await self.report()
            headers = {
                "Content-Type": "application/json",
                "Cache-Control": "no-store",
                "ETag": etag,
            }
            if fields.get("if-none-match") == etag:
                return "304 Not Modified", headers, b""
            return "200 OK", headers, body
        if path in self.assets:
            content, content_type = self.assets[path]
            return "200 OK", {"Content-Type": content_type, "Cache-Control": "no-cache"}, content
        return "404 Not Found", _text(), b"not found\n"


def _text() -> dict[str, str]:
    return {"Content-Type": "text/plain; charset=utf-8"}


def _is_loopback_address(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _url_host(host: str | None, port: int | None) -> str:
    name = host or "0.0.0.0"
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"
