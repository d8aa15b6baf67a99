"""A unix socket relaying to the real Docker engine, which a test can cut and restore.

Pointing labelsync at the relay (`LABELSYNC_DOCKER_HOST=unix://<relay.path>`) and cutting
it looks to labelsync exactly like dockerd going away (socket gone, event stream broken),
without disturbing the engine every other test uses.

    relay = DockerRelay(tmp_path / "docker.sock").start()
    relay.cut()       # every open connection dropped, the socket file removed
    relay.restore()   # listening again
    relay.close()

The relay runs its own event loop on a thread, so synchronous tests can drive it.

With `allow`, it is a read-only socket proxy in the manner of docker-socket-proxy: each
request's method and path go to `allow(method, path)`; a refused one gets 403 and never
reaches the engine. Every request seen is in `requests` as (method, path, allowed). Each
relayed request is sent with `Connection: close`, so that every request on a keep-alive
client comes through here to be checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
ENGINE_SOCKET = "/var/run/docker.sock"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    writer.close()


class DockerRelay:
    """Relays connections on `path` to the engine's socket until cut."""

    def __init__(
        self,
        path: Path,
        target: str = ENGINE_SOCKET,
        *,
        allow: Callable[[str, str], bool] | None = None,
    ) -> None:
        self.path = path
        self.target = target
        self.allow = allow
        self.requests: list[tuple[str, str, bool]] = []
        self.connections = 0  # accepted so far, to see that a client really uses the relay
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="docker-relay", daemon=True
        )
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    def start(self) -> DockerRelay:
        self._thread.start()
        self.restore()
        return self

    def restore(self) -> None:
        """Listen (again) on `path`."""
        self._run(self._listen())

    def cut(self) -> None:
        """Stop listening, drop every relayed connection and remove the socket file."""
        self._run(self._cut())

    def close(self) -> None:
        if self._thread.is_alive():
            self.cut()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
        self._loop.close()

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_unix_server(self._relay, path=str(self.path))

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.path.unlink(missing_ok=True)

    async def _relay(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        engine_writer: asyncio.StreamWriter | None = None
        try:
            head = b""
            if self.allow is not None:
                head = await client_reader.readuntil(b"\r\n\r\n")
                method, _, rest = head.decode("latin-1").partition(" ")
                path = rest.partition(" ")[0]
                allowed = self.allow(method, path)
                self.requests.append((method, path, allowed))
                if not allowed:
                    body = b'{"message":"refused by the test socket proxy"}'
                    client_writer.write(
                        b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                        + body
                    )
                    await client_writer.drain()
                    return
                lines = [
                    line
                    for line in head.split(b"\r\n")
                    if not line.lower().startswith(b"connection:")
                ]
                head = b"\r\n".join([*lines[:-2], b"Connection: close", b"", b""])
            engine_reader, engine_writer = await asyncio.open_unix_connection(self.target)
            engine_writer.write(head)
            await asyncio.gather(
                _pipe(client_reader, engine_writer), _pipe(engine_reader, client_writer)
            )
        except (OSError, asyncio.CancelledError, asyncio.IncompleteReadError):
            pass  # cut: the point of the relay
        finally:
            client_writer.close()
            if engine_writer is not None:
                engine_writer.close()
            self._tasks.discard(task)
