"""Backends and steady load over many hosts, in a process of their own ("busy pools").

    python -m bench.spread_load IPS PORT

Starts one tiny HTTP backend on each of the comma-separated IPS (all on PORT), prints
`{"event": "ready"}`, then reads commands on stdin, one JSON object per line:

- `{"load": {"port": P, "hosts": [...], "clients": C, "seconds": S}}`: C keep-alive
  clients through Caddy on 127.0.0.1:P, each going round the hosts (from its own
  offset) one request after the other, for S seconds (or until the next line on stdin);
  prints one JSON object with counts, latencies, failures and stale keep-alive retries;
- `{"quit": true}`: stop.

Backends and clients live here, not in the bench process, so that the CPU the bench
process uses is labelsync's own (its loop and its resolver thread).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

from .backends import LoopbackBackend
from .rawhttp import HttpConnection, StaleConnection
from .stats import summary


async def _load(port: int, hosts: list[str], clients: int, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    failures: Counter[str] = Counter()
    stale = 0
    deadline = time.monotonic() + seconds

    async def client(offset: int) -> None:
        nonlocal stale
        connection = HttpConnection("127.0.0.1", port, timeout=10.0)
        index = offset
        try:
            while time.monotonic() < deadline:
                host = hosts[index % len(hosts)]
                index += 1
                started = time.perf_counter()
                try:
                    try:
                        response = await connection.get(host)
                    except StaleConnection:
                        stale += 1
                        response = await connection.get(host)
                except (ConnectionError, TimeoutError, ValueError) as exc:
                    failures[type(exc).__name__] += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)
                if response.status != 200 or response.backend is None:
                    failures[f"status {response.status}"] += 1
        finally:
            await connection.close()

    started = time.monotonic()
    await asyncio.gather(*(client(i * len(hosts) // clients) for i in range(clients)))
    wall = time.monotonic() - started
    stats = {k: v for k, v in summary(latencies).items() if k != "values"}
    answered = len(latencies)
    return {
        "event": "done",
        "seconds": round(wall, 3),
        "requests": answered + sum(n for k, n in failures.items() if not k.startswith("status")),
        "answered": answered,
        "failed": sum(failures.values()),
        "failures": dict(failures),
        "stale_connection_retries": stale,
        "requests_per_second": round(answered / wall, 1) if wall else 0.0,
        "latency_ms": stats,
    }


async def main(argv: list[str]) -> None:
    ips, port = argv[0].split(","), int(argv[1])
    backends = [LoopbackBackend(ip, port) for ip in ips]
    for backend in backends:
        await backend.start()
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"event": "ready"}), flush=True)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            if command.get("quit"):
                break
            load = command["load"]
            result = await _load(load["port"], load["hosts"], load["clients"], load["seconds"])
            print(json.dumps(result), flush=True)
    finally:
        for backend in backends:
            await backend.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
