"""A tiny HTTP backend on loopback, for routes to non-container backends (the static file).

    with LoopbackBackend("static-one") as one:
        one.address        # "127.0.0.1:41234"
        # every GET answers 200 "static-one\n" with `X-Backend: static-one`

It runs in a thread of the test process; `close()` (or leaving the block) stops it.
Pass an `ssl.SSLContext` to serve https.
"""

from __future__ import annotations

import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes
    server: _NamedServer

    def do_GET(self) -> None:
        body = f"{self.server.backend_name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.backend_name)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output readable


class _NamedServer(ThreadingHTTPServer):
    daemon_threads = True
    backend_name = ""


class LoopbackBackend:
    """An HTTP server on `127.0.0.1:<free port>` answering its name on every path."""

    def __init__(
        self, name: str, host: str = "127.0.0.1", context: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self._server = _NamedServer((host, 0), _Handler)
        self._server.backend_name = name
        if context is not None:
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"loopback-{name}", daemon=True
        )
        self._thread.start()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> LoopbackBackend:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
