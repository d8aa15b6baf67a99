"""The in-memory Caddy answers the admin requests labelsync sends as a real Caddy does.

The same requests go to both, one by one: the statuses, the bodies of reads, and the
path inside each Etag must agree (the hash differs: Caddy uses xxhash). This keeps the
fake honest for the loop tests that rely on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.caddy import CaddyProcess, free_port
from tests.support.containers import short_uuid
from tests.support.memory_caddy import MemoryCaddy


def route(route_id: str, host: str) -> dict[str, Any]:
    return {
        "@id": route_id,
        "match": [{"host": [host]}],
        "handle": [{"handler": "static_response", "body": route_id}],
    }


class Both:
    """Sends each request to the real and the in-memory Caddy and compares the answers."""

    def __init__(self, caddy: CaddyProcess, memory: MemoryCaddy) -> None:
        self.real = httpx.Client(base_url=caddy.admin_url, trust_env=False, timeout=10.0)
        self.memory = httpx.Client(base_url="http://memory", transport=memory.transport())
        self.etags: dict[str, tuple[str, str]] = {}

    def send(self, method: str, path: str, body: Any = None, *, if_match: str = "") -> int:
        """The status both answered (asserted equal); `if_match` names a saved Etag."""
        answers = []
        for side, client in (("real", self.real), ("memory", self.memory)):
            headers = {"Content-Type": "application/json"}
            if if_match:
                headers["If-Match"] = self.etags[if_match][0 if side == "real" else 1]
            content = None if body is None else json.dumps(body)
            answers.append(client.request(method, path, content=content, headers=headers))
        real, memory = answers
        assert (method, path, real.status_code) == (method, path, memory.status_code), (
            real.text,
            memory.text,
        )
        if method == "GET" and real.status_code == 200:
            assert real.json() == memory.json()
            real_tag, memory_tag = real.headers["Etag"], memory.headers["Etag"]
            assert real_tag.rsplit(" ", 1)[0] == memory_tag.rsplit(" ", 1)[0]
            self.etags[path] = (real_tag, memory_tag)
        return real.status_code

    def close(self) -> None:
        self.real.close()
        self.memory.close()


@pytest.fixture
def both(caddy: CaddyProcess) -> Iterator[tuple[Both, str]]:
    memory = MemoryCaddy(caddy.get_config())
    pair = Both(caddy, memory)
    name = f"memory-{short_uuid()}"
    try:
        yield pair, f"/config/apps/http/servers/{name}"
    finally:
        pair.close()
        caddy.admin("DELETE", f"/config/apps/http/servers/{name}")


def test_the_requests_labelsync_sends_are_answered_alike(both: tuple[Both, str]) -> None:
    pair, server = both
    listen = [f"127.0.0.1:{free_port()}"]
    one, two, three = (f"labelsync-{short_uuid()}" for _ in range(3))
    # Reads of what is missing: null for the last key, 400 through a missing one.
    assert pair.send("GET", server) == 200
    assert pair.send("GET", f"{server}/routes/0") == 400
    # ensure_server: PUT a new server; a second PUT of it conflicts.
    new_server = {"listen": listen, "automatic_https": {"disable": True}}
    assert pair.send("PUT", server, new_server) == 200
    assert pair.send("PUT", server, new_server) == 409
    # The first routes: POST .../routes/... creates the list.
    assert pair.send("GET", server) == 200
    assert (
        pair.send("POST", f"{server}/routes/...", [route(one, "one.test")], if_match=server) == 200
    )
    # Insert at an index and at the end.
    assert pair.send("PUT", f"{server}/routes/0", route(two, "two.test")) == 200
    assert pair.send("PUT", f"{server}/routes/2", route(three, "three.test")) == 200
    assert pair.send("PUT", f"{server}/routes/9", route("x", "x.test")) == 500
    assert pair.send("GET", server) == 200
    # By @id: replace, a sub-path, delete; read through an @id.
    assert pair.send("PATCH", f"/id/{one}", route(one, "uno.test"), if_match=server) == 200
    assert pair.send("PATCH", f"/id/{one}/match/0/host", ["one.test"]) == 200
    assert pair.send("GET", f"/id/{one}") == 200
    assert pair.send("DELETE", f"/id/{three}") == 200
    # A stale Etag: 412 and nothing written, but an unknown @id is 404 even so.
    assert pair.send("PATCH", f"/id/{one}", route(one, "stale.test"), if_match=server) == 412
    assert pair.send("DELETE", f"/id/{three}", if_match=server) == 404
    assert pair.send("DELETE", f"/id/{three}") == 404
    # A duplicate @id is refused; a PATCH of the whole list replaces it.
    assert pair.send("PUT", f"{server}/routes/0", route(one, "dup.test")) == 400
    assert pair.send("GET", server) == 200
    routes = [route(two, "two.test"), route(three, "three.test")]
    assert pair.send("PATCH", f"{server}/routes", routes, if_match=server) == 200
    assert pair.send("PATCH", f"{server}/nope", []) == 404
    # The same content again is not a change (no reload), and succeeds.
    assert pair.send("PATCH", f"{server}/routes", routes) == 200
    assert pair.send("GET", server) == 200
