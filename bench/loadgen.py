"""Bounded HTTP load through Caddy, in a process of its own (scenario 5).

    python -m bench.loadgen PORT HOST CLIENTS MAX_SECONDS PAUSE_MS STREAM_HOST STREAM_SECONDS \
        RETRY_STALE

`CLIENTS` keep-alive clients each send GETs one after another (PAUSE_MS apart) to
127.0.0.1:PORT with `Host: HOST`, and one more connection holds a long request
(`/slow?STREAM_SECONDS` on STREAM_HOST) open. Runs until a line arrives on stdin or
MAX_SECONDS pass, then prints one JSON object with counts, latencies and the stream's
fate.

A request that fails on a reused keep-alive connection before any byte of the answer (a
stale connection: Caddy closes idle connections on every config reload) is, with
RETRY_STALE=1, retried once on a new one, as Go's client and browsers do; such retries
are counted separately (`stale_connection_retries`), and only a failed retry counts as a
failed request. With RETRY_STALE=0 (where no Caddy reload may happen, so a reset is a
real failure) it is not sent again: it counts as a failed request of its own kind
(`"stale connection reset"` in `failures`, also `stale_connection_failures`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import Counter
from typing import Any

from .rawhttp import HttpConnection, StaleConnection
from .stats import summary

MAX_REQUESTS_PER_CLIENT = 200_000
STALE_FAILURE = "stale connection reset"  # the failure kind of a stale connection not retried


class Load:
    def __init__(self, port: int, host: str, *, retry_stale: bool) -> None:
        self.port = port
        self.host = host
        self.retry_stale = retry_stale
        self.latencies_ms: list[float] = []
        self.failures: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.backends: Counter[str] = Counter()
        self.stale_retries = 0
        self.failed_at: list[float] = []
        self.stop = asyncio.Event()

    async def client(self, pause: float) -> None:
        connection = HttpConnection("127.0.0.1", self.port, timeout=10.0)
        try:
            for _ in range(MAX_REQUESTS_PER_CLIENT):
                if self.stop.is_set():
                    return
                await self._one(connection)
                if pause:
                    await asyncio.sleep(pause)
        finally:
            await connection.close()

    async def _one(self, connection: HttpConnection) -> None:
        started = time.perf_counter()
        try:
            try:
                response = await connection.get(self.host)
            except StaleConnection:
                if not self.retry_stale:
                    self.failures[STALE_FAILURE] += 1
                    self.failed_at.append(time.time())
                    return
                self.stale_retries += 1
                response = await connection.get(self.host)
        except (ConnectionError, TimeoutError, ValueError) as exc:
            self.failures[type(exc).__name__] += 1
            self.failed_at.append(time.time())
            return
        self.latencies_ms.append((time.perf_counter() - started) * 1000)
        self.statuses[response.status] += 1
        if response.status != 200 or response.backend is None:
            self.failures[f"status {response.status}"] += 1
            self.failed_at.append(time.time())
        else:
            self.backends[response.backend] += 1


async def _stream(port: int, host: str, seconds: float) -> dict[str, Any]:
    connection = HttpConnection("127.0.0.1", port, timeout=seconds + 30)
    started = time.time()
    try:
        response = await connection.get(host, f"/slow?{seconds:g}")
    except (ConnectionError, TimeoutError, ValueError) as exc:
        return {
            "ok": False,
            "error": f"{type(exc).__name__}: {exc}",
            "started": started,
            "ended": time.time(),
        }
    finally:
        await connection.close()
    return {
        "ok": response.status == 200 and response.backend is not None and bool(response.body),
        "status": response.status,
        "backend": response.backend,
        "started": started,
        "ended": time.time(),
    }


async def main(argv: list[str]) -> None:
    if len(argv) != 8 or argv[7] not in ("0", "1"):
        raise SystemExit(
            "usage: python -m bench.loadgen PORT HOST CLIENTS MAX_SECONDS PAUSE_MS "
            "STREAM_HOST STREAM_SECONDS RETRY_STALE (RETRY_STALE: 1 or 0)"
        )
    port, host, clients = int(argv[0]), argv[1], int(argv[2])
    max_seconds, pause = float(argv[3]), float(argv[4]) / 1000
    stream_host, stream_seconds = argv[5], float(argv[6])
    load = Load(port, host, retry_stale=argv[7] == "1")
    stream = asyncio.create_task(_stream(port, stream_host, stream_seconds))
    started = time.time()
    tasks = [asyncio.create_task(load.client(pause)) for _ in range(clients)]
    print(json.dumps({"event": "started", "time": started}), flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.readline(), max_seconds)
    load.stop.set()
    ended = time.time()
    await asyncio.gather(*tasks)
    stream_result = await stream
    total = len(load.latencies_ms) + sum(
        n for kind, n in load.failures.items() if not kind.startswith("status")
    )
    print(
        json.dumps(
            {
                "event": "done",
                "seconds": ended - started,
                "requests": total,
                "failed": sum(load.failures.values()),
                "failures": dict(load.failures),
                "failed_at": load.failed_at[:50],
                "retry_stale": load.retry_stale,
                "stale_connection_retries": load.stale_retries,
                "stale_connection_failures": load.failures[STALE_FAILURE],
                "statuses": {str(k): v for k, v in load.statuses.items()},
                "backends": len(load.backends),
                "latency_ms": {
                    k: v for k, v in summary(load.latencies_ms).items() if k != "values"
                },
                "stream": stream_result,
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
