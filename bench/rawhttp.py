"""A minimal HTTP/1.1 client over asyncio streams, for polling and load.

httpx costs about a millisecond of CPU per request; polling Caddy every 2 ms with it
would steal the event loop (and the GIL) from the labelsync loop under measurement.
This client does one thing: GET on a keep-alive connection, Content-Length or chunked
bodies, and it says whether a failure happened on a reused connection (where a normal
client such as Go's or a browser retries an idempotent request once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

USER_AGENT = "labelsync-bench"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    done_ns: int = field(default=0)  # time.time_ns() when the last byte was read

    @property
    def backend(self) -> str | None:
        """Which backend answered (`X-Backend`, set by every bench backend)."""
        return self.headers.get("x-backend")


class StaleConnection(ConnectionError):
    """A reused keep-alive connection failed before any byte of the answer."""


class HttpConnection:
    """One keep-alive connection to `host:port`, reopened when the server closes it."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._used = False

    async def get(self, host_header: str, path: str = "/") -> Response:
        """One GET; raises StaleConnection, ConnectionError, TimeoutError or ValueError."""
        # Not asyncio.wait_for: on Python 3.11 it can swallow the caller's cancellation
        # when the request completes at the same moment, and a polling loop never ends.
        async with asyncio.timeout(self.timeout):
            return await self._get(host_header, path)

    async def _get(self, host_header: str, path: str) -> Response:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            self._used = False
        reader, writer = self._reader, self._writer
        assert reader is not None
        reused = self._used
        self._used = True
        request = f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n\r\n"
        try:
            writer.write(request.encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            await self.close()
            if reused:
                raise StaleConnection(str(exc) or type(exc).__name__) from exc
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
        try:
            status, headers = _parse_head(head)
            body = await _read_body(reader, headers)
        except (ConnectionError, asyncio.IncompleteReadError, OSError) as exc:
            await self.close()
            raise ConnectionError(str(exc) or type(exc).__name__) from exc
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, body, time.time_ns())

    async def close(self) -> None:
        writer, self._writer, self._reader = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        chunks: list[bytes] = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers from our servers
                return b"".join(chunks)
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""
