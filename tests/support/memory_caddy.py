"""An in-memory Caddy admin API for tests of the loop's own logic (no process, no sockets).

    caddy = MemoryCaddy()
    admin = caddy.admin()                  # a CaddyAdmin whose transport is this Caddy
    ...
    assert caddy.writes == 1               # config changes, each a reload in a real Caddy

It holds one config JSON and serves the admin endpoints CaddyAdmin uses, with the
semantics of Caddy's own `unsyncedConfigAccess` and `changeConfig` (admin.go, caddy.go),
so that CaddyAdmin's requests are interpreted, not trusted:

- GET /config/<path>: the value and an Etag `"<path> <hash>"`; a missing last key
  answers `null`, a path through a missing key 400 "invalid traversal path".
- POST appends to an array (`.../...` extends it with a list) or sets a key; PUT
  creates missing parent objects, inserts into an array at an index (== len appends),
  409 on an existing key; PATCH replaces (404 on a missing key); DELETE removes.
- /id/<id>[/rest] goes to the object with that `@id` (404 when unknown).
- If-Match: the path inside the tag is hashed again; a mismatch is 412, nothing written.
- A write that leaves the config as it was changes nothing (no reload, not counted);
  a duplicate @id is 400; a config `refuse` objects to is 500 (400 through /load) and
  the old config stays.
- `down()` makes every request fail to connect; `restart(config)` comes back holding only
  `config` (None: empty, as a Caddy started without one).
- GET /metrics: the request counters of Caddy's per-host metrics for the requests
  `serve()` counted, when `apps.http.metrics` turns them on (`caddy_counters.py`); every
  accepted write restarts them, and moves the config's load time, as in Caddy.

Real-Caddy tests stay for what only Caddy shows: that it loads what we render, reloads,
serves traffic, and answers exactly so.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import httpx

from labelsync.caddy.admin import CaddyAdmin

from .caddy_counters import Served, metrics_text

ENDPOINT = "http://memory-caddy.invalid:2019"

# Given a whole config Caddy is asked to load: why it refuses it, or None to accept.
Refusal = Callable[[Any], str | None]


@dataclass(frozen=True)
class Request:
    """One request as the in-memory Caddy saw it."""

    method: str
    path: str
    status: int  # 0 when it could not connect


class _AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class MemoryCaddy:
    """One Caddy admin API in memory; `handle` is an `httpx.MockTransport` handler."""

    def __init__(self, config: Any = None) -> None:
        self.config: Any = copy.deepcopy(config)
        self.requests: list[Request] = []
        self.writes = 0  # accepted config changes (each one a reload in a real Caddy)
        self.refuse: Refusal | None = None
        self.is_down = False
        self.restarts = 0
        # Runs once, just before the next write is handled: someone else's edit between
        # our read and our write.
        self.before_next_write: Callable[[MemoryCaddy], object] | None = None
        self.served: list[Served] = []  # requests counted since the config last loaded
        self.loaded_at = 1_700_000_000.0  # caddy_config_last_reload_success_timestamp_seconds

    # -- what tests do to it -------------------------------------------------------------------
    def admin(self, *, timeout: float = 10.0) -> CaddyAdmin:
        """A CaddyAdmin talking to this Caddy."""
        return CaddyAdmin(ENDPOINT, timeout=timeout, transport=self.transport())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def down(self) -> None:
        """Stop answering: every request fails to connect, as to a dead socket."""
        self.is_down = True

    def restart(self, config: Any = None) -> None:
        """Come back (up) holding only `config`: what a restarted Caddy loads itself."""
        self.config = copy.deepcopy(config)
        self.is_down = False
        self.restarts += 1
        self.served = []
        self.loaded_at += 1.0

    def serve(self, host: str, status: int = 200, *, seconds: float = 0.002, **more: Any) -> None:
        """Count one request to `Host: host` as Caddy's metrics do (`Served` for `more`)."""
        self.served.append(Served(host, status, seconds, **more))

    def get(self, path: str) -> Any:
        """The value at `/config/<path>` (None when missing), for assertions."""
        try:
            return copy.deepcopy(_read(self.config, _parts(f"/config/{path.lstrip('/')}")))
        except _AdminError:
            return None

    def routes(self, server: str) -> list[Any]:
        return list(self.get(f"apps/http/servers/{server}/routes") or [])

    def edit(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """Someone else's admin request (counted neither in `requests` nor `writes`)."""
        content = None if body is None else json.dumps(body).encode()
        request = httpx.Request(method, f"{ENDPOINT}{path}", content=content)
        requests, writes = list(self.requests), self.writes
        try:
            return self.handle(request)
        finally:
            self.requests, self.writes = requests, writes

    @property
    def write_requests(self) -> list[Request]:
        """Requests that tried to change the config, accepted or not."""
        return [r for r in self.requests if r.method != "GET"]

    # -- the admin API -------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        method, path = request.method, unquote(request.url.path)
        if self.is_down:
            self.requests.append(Request(method, path, 0))
            raise httpx.ConnectError("connection refused (memory Caddy is down)", request=request)
        if method != "GET" and self.before_next_write is not None:
            interfere, self.before_next_write = self.before_next_write, None
            interfere(self)
        try:
            response = self._route(method, path, request)
        except _AdminError as exc:
            response = httpx.Response(exc.status, json={"error": str(exc)})
        self.requests.append(Request(method, path, response.status_code))
        return response

    def _route(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if path == "/reverse_proxy/upstreams" and method == "GET":
            return httpx.Response(200, json=[])
        if path == "/metrics" and method == "GET":
            return httpx.Response(200, text=metrics_text(self.config, self.served, self.loaded_at))
        if path == "/load" and method == "POST":
            return self._load(request.content)
        if path.startswith("/id/"):
            path = self._expand_id(path)
        if path != "/config" and not path.startswith("/config/"):
            raise _AdminError(404, f"{method} {path}: not found")
        if method == "GET":
            try:
                value = _read(self.config, _parts(path))
            except ValueError as exc:
                raise _AdminError(400, str(exc)) from exc
            return httpx.Response(200, content=_encode(value), headers={"Etag": _etag(path, value)})
        return self._change(method, path, request)

    def _expand_id(self, path: str) -> str:
        _, _, rest = path.partition("/id/")
        object_id, _, tail = rest.partition("/")
        index = _index_ids(self.config)
        if object_id not in index:
            raise _AdminError(404, f"unknown object ID '{object_id}'")
        return index[object_id] + (f"/{tail}" if tail else "")

    def _change(self, method: str, path: str, request: httpx.Request) -> httpx.Response:
        if_match = request.headers.get("If-Match")
        if if_match:
            tag_path, _, tag_hash = if_match.strip('"').partition(" ")
            current = _read(self.config, _parts(tag_path))
            if _hash(current) != tag_hash:
                raise _AdminError(412, "If-Match header did not match current config hash")
        value = json.loads(request.content) if request.content else None
        root = {"config": copy.deepcopy(self.config)}
        try:
            _write(root, _parts(path), method, value, path)
        except _AdminError:
            raise
        except ValueError as exc:  # Caddy answers 500 to any other error of a write
            raise _AdminError(500, str(exc)) from exc
        return self._commit(root["config"], refused_status=500)

    def _load(self, content: bytes) -> httpx.Response:
        return self._commit(json.loads(content) if content else None, refused_status=400)

    def _commit(self, config: Any, *, refused_status: int) -> httpx.Response:
        if _encode(config) == _encode(self.config):
            return httpx.Response(200)  # "config is unchanged": no reload
        try:
            _index_ids(config)
        except ValueError as exc:
            raise _AdminError(400, f"indexing config: {exc}") from exc
        reason = self.refuse(config) if self.refuse is not None else None
        if reason is not None:
            raise _AdminError(refused_status, f"loading new config: {reason}")
        self.config = config
        self.writes += 1
        self.served = []  # a new metrics registry with every load
        self.loaded_at += 1.0
        return httpx.Response(200)


# -- JSON paths, as Caddy walks them -----------------------------------------------------------


def _parts(path: str) -> list[str]:
    clean = path.strip("/")
    if not clean:
        raise _AdminError(400, "no traversable path")
    return clean.split("/")


def _read(config: Any, parts: list[str]) -> Any:
    """The value at `parts` (starting with "config"); None for a missing last key."""
    node: Any = {"config": config}
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list):
            index = _index(part, parts[: i + 1])
            if not 0 <= index < len(node):
                raise _AdminError(400, f"[/{'/'.join(parts[: i + 1])}] array index out of bounds")
            node = node[index]
        else:
            raise _AdminError(400, f"invalid traversal path at: {'/'.join(parts[: i + 1])}")
    return node


def _write(root: dict[str, Any], parts: list[str], method: str, value: Any, path: str) -> None:
    """Caddy's unsyncedConfigAccess for POST/PUT/PATCH/DELETE, in place on `root`."""
    ellipses = parts[-1] == "..."
    if ellipses:
        parts = parts[:-1]
    node: Any = root
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if isinstance(node.get(part), list) and i == len(parts) - 2:
                _write_array(node, part, parts[-1], method, value, ellipses, path)
                return
            if last:
                _write_key(node, part, method, value, ellipses, path)
                return
            if node.get(part) is None and method == "PUT":
                node[part] = {}
            node = node.get(part)
        elif isinstance(node, list):
            index = _index(part, parts[: i + 1])
            if not 0 <= index < len(node):
                raise ValueError(f"[/{'/'.join(parts[: i + 1])}] array index out of bounds")
            node = node[index]
        else:
            raise ValueError(f"invalid traversal path at: {'/'.join(parts[: i + 1])}")


def _write_array(
    parent: dict[str, Any], key: str, last: str, method: str, value: Any, ellipses: bool, path: str
) -> None:
    array: list[Any] = parent[key]
    if method == "POST":
        if ellipses:
            if not isinstance(value, list):
                raise ValueError("final element is not an array")
            array.extend(value)
        else:
            array.append(value)
        return
    index = _index(last, [path])
    if index < 0 or (method != "PUT" and index >= len(array)) or index > len(array):
        raise ValueError(f"[{path}] array index out of bounds: {last}")
    if method == "PUT":
        array.insert(index, value)
    elif method == "PATCH":
        array[index] = value
    elif method == "DELETE":
        del array[index]
    else:
        raise ValueError(f"unrecognized method {method}")


def _write_key(
    node: dict[str, Any], key: str, method: str, value: Any, ellipses: bool, path: str
) -> None:
    if method == "POST":
        existing = node.get(key)
        if isinstance(existing, list):
            if ellipses and not isinstance(value, list):
                raise ValueError("final element is not an array")
            if ellipses:
                existing.extend(value)
            else:
                existing.append(value)
        else:
            node[key] = value
    elif method == "PUT":
        if key in node:
            raise _AdminError(409, f"[{path}] key already exists: {key}")
        node[key] = value
    elif method == "PATCH":
        if key not in node:
            raise _AdminError(404, f"[{path}] key does not exist: {key}")
        node[key] = value
    elif method == "DELETE":
        if key not in node:
            raise _AdminError(404, f"[{path}] key does not exist: {key}")
        del node[key]
    else:
        raise ValueError(f"unrecognized method {method}")


def _index(part: str, where: list[str]) -> int:
    if not part.isdigit() or str(int(part)) != part:
        raise ValueError(f"[/{'/'.join(where)}] invalid array index '{part}'")
    return int(part)


def _index_ids(config: Any) -> dict[str, str]:
    """Every `@id` and the /config path of its object; ValueError on a duplicate."""
    found: dict[str, str] = {}

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            object_id = node.get("@id")
            if isinstance(object_id, str):
                if object_id in found:
                    raise ValueError(
                        f"duplicate ID '{object_id}' found at {found[object_id]} and {path}"
                    )
                found[object_id] = path
            for key, child in node.items():
                walk(child, f"{path}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}/{i}")

    walk(config, "/config")
    return found


def _encode(value: Any) -> bytes:
    # Go's encoder sorts object keys and ends with a newline; equal content, equal bytes.
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _hash(value: Any) -> str:
    return hashlib.blake2b(_encode(value), digest_size=8).hexdigest()


def _etag(path: str, value: Any) -> str:
    return f'"{path} {_hash(value)}"'
