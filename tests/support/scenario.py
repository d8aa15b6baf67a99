"""Small pieces the `labelsync run` scenarios share: labels, isolated daemons, answers.

scenario = Scenario(start_daemon, "dynamic")
web = backend(labels=scenario.labels({"host": host, "lb.policy": "round_robin"}))
wait_routed(scenario.daemon, host, {web.name})
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .containers import short_uuid
from .daemon import Daemon


def prefixed(labels: dict[str, str], prefix: str = "labelsync") -> dict[str, str]:
    """`{"host": h}` -> `{"labelsync.host": h}`: keeps the scenarios readable."""
    return {f"{prefix}.{key}": value for key, value in labels.items()}


class Scenario:
    """A daemon that reads only this test's labels, and the labels to give its containers.

    The Docker engine may be shared (other test runs, other projects): with the default
    prefix the daemon would also route their containers, and each of their changes would
    reload Caddy in the middle of a measurement. A label prefix of the test's own avoids it.
    """

    def __init__(self, start_daemon: Callable[..., Daemon], mode: str, **env: str) -> None:
        self.prefix = f"ls{short_uuid()}"
        self.daemon = start_daemon(
            upstreams=mode, env={"LABELSYNC_LABEL_PREFIX": self.prefix, **env}
        )

    def labels(self, keys: dict[str, str]) -> dict[str, str]:
        """`{"host": h}` -> `{"<prefix>.host": h}`."""
        return prefixed(keys, self.prefix)


def answers(client: httpx.Client, host: str, count: int, path: str = "/") -> list[str | None]:
    """The backend that answered each of `count` sequential requests (None: not a 200)."""
    seen: list[str | None] = []
    for _ in range(count):
        response = client.get(path, headers={"Host": host})
        seen.append(response.headers.get("X-Backend") if response.status_code == 200 else None)
    return seen


def unrouted(daemon: Daemon, host: str) -> bool:
    """No backend answers for `host` (no route: Caddy's empty 200; no member: a 5xx)."""
    return daemon.body(host) in (None, "")


def routes_for(daemon: Daemon, hosts: set[str]) -> list[dict[str, Any]]:
    """The routes of `daemon`'s server that match any of `hosts`."""
    return [
        route
        for route in daemon.routes()
        if any(set(matcher.get("host", [])) & hosts for matcher in route.get("match", []))
    ]
