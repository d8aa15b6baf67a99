"""The daemon's small read-only HTTP endpoints (`/metrics` and `/healthz`; the dashboard).

Served on the daemon's own asyncio loop, not a thread: every value they report lives on
that loop, and some answers need an async read of Caddy at request time. A stuck loop
then also shows as a request that does not answer, which is what a liveness probe
should see. HTTP/1.1, one request per connection; GET and HEAD only unless a guard
answers first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from loguru import logger

from labelsync.core.names import parse_listen
from labelsync.errors import ConfigError

REQUEST_LIMIT = 16 * 1024  # bytes of request head accepted
REQUEST_TIMEOUT = 5.0  # seconds for a client to send its request
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query
    headers: Mapping[str, str]  # names in lower case


@dataclass(frozen=True)
class Answer:
    status: str  # "200 OK"
    content_type: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Answer]]
Guard = Callable[[Request], Answer | None]  # an answer refuses the request before routing

NOT_FOUND = Answer("404 Not Found", TEXT, b"not found\n")


def read_only(request: Request) -> Answer | None:
    """Refuse everything but GET and HEAD."""
    if request.method in ("GET", "HEAD"):
        return None
    return Answer("405 Method Not Allowed", TEXT, b"GET or HEAD only\n", {"Allow": "GET, HEAD"})


class HttpEndpoint:
    """Serves `routes` (path -> handler) on one listen address."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        *,
        setting: str,
        guards: tuple[Guard, ...] = (read_only,),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`setting` names the listen setting in messages; `headers` go on every answer."""
        self.routes = dict(routes)
        self.setting = setting
        self.guards = guards
        self.headers = dict(headers or {})
        self._server: asyncio.Server | None = None

    async def bind(self, listen: str) -> None:
        """Listen on `listen` (`host:port`, `[v6]:port`, `:port` for every interface; port
        0 picks a free one). ValueError for an address that is none, OSError when it
        cannot be bound."""
        host, port = parse_listen(listen)
        self._server = await asyncio.start_server(self._handle, host, port)

    async def start(self, listen: str) -> None:
        """`bind`, with one ConfigError naming the setting when it cannot."""
        try:
            await self.bind(listen)
        except ValueError as exc:
            raise ConfigError(f"{self.setting}: {exc}") from exc
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
            request = parse_head(head)
            answer = await self.answer(request)
            lines = [
                f"HTTP/1.1 {answer.status}",
                f"Content-Type: {answer.content_type}",
                f"Content-Length: {len(answer.body)}",
                "Connection: close",
                *(f"{name}: {value}" for name, value in {**self.headers, **answer.headers}.items()),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            if request.method != "HEAD":
                writer.write(answer.body)
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

    async def answer(self, request: Request) -> Answer:
        if not request.method:
            return Answer("400 Bad Request", TEXT, b"bad request\n")
        for guard in self.guards:
            if (refused := guard(request)) is not None:
                return refused
        handler = self.routes.get(request.path)
        return NOT_FOUND if handler is None else await handler(request)


def parse_head(head: bytes) -> Request:
    """The request line and headers; an empty method for anything that is not HTTP."""
    if len(head) > REQUEST_LIMIT:
        return Request("", "", {})
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return Request("", "", {})
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return Request(parts[0], parts[1].split("?", 1)[0], headers)
