"""The daemon's small read-only HTTP endpoint (`/metrics`, `/healthz`, ...).

Served on the daemon's own asyncio loop, not a thread: every value it reports lives on
that loop, and some answers need an async read of Caddy at request time. A stuck loop
then also shows as a request that does not answer, which is what a liveness probe
should see. HTTP/1.1, GET and HEAD only, one request per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping

from loguru import logger

from labelsync.core.names import parse_listen
from labelsync.errors import ConfigError

REQUEST_LIMIT = 16 * 1024  # bytes of request head accepted
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request


class Answer:
    """One response: status line text, content type, body."""

    __slots__ = ("body", "content_type", "status")

    def __init__(self, status: str, content_type: str, body: bytes) -> None:
        self.status = status
        self.content_type = content_type
        self.body = body


Handler = Callable[[], Awaitable[Answer]]

NOT_FOUND = Answer("404 Not Found", "text/plain", b"not found\n")


class HttpEndpoint:
    """Serves `routes` (path -> handler) on one listen address."""

    def __init__(self, routes: Mapping[str, Handler], *, setting: str) -> None:
        """`setting` names the listen setting in error messages."""
        self.routes = dict(routes)
        self.setting = setting
        self._server: asyncio.Server | None = None

    async def start(self, listen: str) -> None:
        """Listen on `listen` (`host:port`, `[v6]:port`, `:port` for every interface; port 0
        picks a free one); ConfigError when it cannot."""
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise ConfigError(f"{self.setting}: {exc}") from exc
        try:
            self._server = await asyncio.start_server(self._handle, host, port)
        except OSError as exc:
            raise ConfigError(
                f"{self.setting}: cannot listen on {listen}: {exc.strerror or exc}; "
                "choose a free address"
            ) from exc

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

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            answer = await self._answer(method, path)
            body_out = b"" if method == "HEAD" else answer.body
            writer.write(
                f"HTTP/1.1 {answer.status}\r\nContent-Type: {answer.content_type}\r\n"
                f"Content-Length: {len(answer.body)}\r\nConnection: close\r\n\r\n".encode()
                + body_out
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that does not speak HTTP gets the connection closed
        except ConnectionError:
            pass
        except Exception:
            logger.opt(exception=True).error(f"{self.setting}: answering a request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, method: str, path: str) -> Answer:
        if method not in ("GET", "HEAD"):
            return Answer("405 Method Not Allowed", "text/plain", b"GET or HEAD only\n")
        handler = self.routes.get(path.split("?", 1)[0])
        return NOT_FOUND if handler is None else await handler()


def _request_line(head: bytes) -> tuple[str, str]:
    if len(head) > REQUEST_LIMIT:
        return "", ""
    first = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = first.split(" ")
    return (parts[0], parts[1]) if len(parts) == 3 else ("", "")
