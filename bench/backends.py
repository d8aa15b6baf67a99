"""Tiny HTTP backends on loopback addresses (127.0.0.x), for the synthetic scenarios.

Each answers every request with 200 and `X-Backend: <its ip>`, keep-alive, so that a
request through Caddy says which member it reached.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

from tests.support.caddy import free_port


class LoopbackBackend:
    def __init__(self, ip: str, port: int) -> None:
        self.ip = ip
        self.port = port
        self.requests = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.ip, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = f"{self.ip}\n".encode()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nX-Backend: {self.ip}\r\n\r\n"
        ).encode()
        try:
            while True:
                request = await reader.readuntil(b"\r\n\r\n")
                if not request:
                    break
                self.requests += 1
                writer.write(head + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def loopback_backends(ips: Sequence[str]) -> AsyncIterator[tuple[int, list[LoopbackBackend]]]:
    """One backend on each of `ips`, all on the same free port: (port, backends)."""
    port = free_port()
    backends = [LoopbackBackend(ip, port) for ip in ips]
    for backend in backends:
        await backend.start()
    try:
        yield port, backends
    finally:
        for backend in backends:
            await backend.stop()
