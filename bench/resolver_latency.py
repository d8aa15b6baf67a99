"""Scenario "resolver": one SRV question's round trip, sequential, on loopback.

The resolver runs in a child process (`python -m bench.resolver_latency serve POOLS`),
as in the daemon: its own thread and event loop, serving POOLS pools of 3 members. A
raw UDP client here sends Go's question (SRV, RD, EDNS 1232) for one pool name after
the other and times each answer. `cold` is the first question for each name (the
answer is built and packed), `warm` every repeat (packed bytes, ID patched), which is
what Caddy sends every `refresh`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import subprocess
import sys
import time
from typing import Any

from .stats import summary

MEMBERS = 3
EDNS_OPT = b"\x00" + struct.pack("!HHIH", 41, 1232, 0, 0)  # root, OPT, 1232 bytes, no flags


def pool_name(index: int) -> str:
    return f"{index:016x}.pool.labelsync.internal."


def question(name: str, query_id: int) -> bytes:
    """The SRV question Go's resolver sends: RD set, one question, EDNS0 1232."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 1)
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.rstrip(".").split("."))
    return header + labels + b"\x00" + struct.pack("!HH", 33, 1) + EDNS_OPT


def _serve(pools: int) -> None:
    from labelsync.core.names import member_target
    from labelsync.membership.resolver import Resolver
    from labelsync.membership.srv_records import SrvAnswer

    async def main() -> None:
        resolver = Resolver("127.0.0.1:0")
        await resolver.start()
        answers = {}
        for index in range(pools):
            records = []
            for member in range(MEMBERS):
                target, port = member_target(f"172.18.{index // 200}.{10 + member}:8080")
                records.append(SrvAnswer(priority=0, weight=0, port=port, target=target))
            answers[pool_name(index)] = records
        resolver.update(answers)
        print(resolver.bound_address, flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await resolver.stop()

    asyncio.run(main())


def _ask(sock: socket.socket, name: str, query_id: int) -> float:
    started = time.perf_counter_ns()
    sock.send(question(name, query_id))
    answer = sock.recv(4096)
    elapsed = (time.perf_counter_ns() - started) / 1000
    if answer[:2] != struct.pack("!H", query_id) or struct.unpack("!H", answer[6:8])[0] != MEMBERS:
        raise RuntimeError(f"unexpected answer for {name}: {answer!r}")
    return elapsed


def measure(pools: int = 100, rounds: int = 20) -> dict[str, Any]:
    """Round trips in µs: cold (first question per name) and warm (repeats)."""
    child = subprocess.Popen(
        [sys.executable, "-m", "bench.resolver_latency", "serve", str(pools)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        host, _, port = child.stdout.readline().strip().rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2.0)
            sock.connect((host, int(port)))
            cold = [_ask(sock, pool_name(i), i + 1) for i in range(pools)]
            warm = [
                _ask(sock, pool_name(i), (r * pools + i) % 65535 + 1)
                for r in range(rounds)
                for i in range(pools)
            ]
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    warm_stats = summary(warm)
    return {
        "pools": pools,
        "members": MEMBERS,
        "cold_us": {k: v for k, v in summary(cold).items() if k != "values"},
        "warm_us": {k: v for k, v in warm_stats.items() if k != "values"},
        "answers_per_second": round(len(warm) / (sum(warm) / 1e6)),
    }


async def run(log: Any) -> dict[str, Any]:
    log("resolver: sequential SRV round trips on loopback")
    return await asyncio.to_thread(measure)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        _serve(int(sys.argv[2]))
    else:
        import json

        print(json.dumps(measure(), indent=2))
