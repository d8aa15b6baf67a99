"""Caddy's admin API over TCP or a unix socket: reads with ETags, writes with If-Match.

Facts this client is built on (measured against Caddy 2.11.7):

- An Etag reads `"<config path> <hash>"`: the hash of the value at that path only
  (GET /id/<x> answers with the resolved /config/... path). Caddy checks If-Match by
  re-hashing the path named *inside* the tag, whatever path is written. So the Etag of
  our server guards a write addressed by @id or by index, and only an edit to that same
  server makes it fail (412); edits to other servers or apps do not.
- A successful write answers 200 with an empty body and no Etag: to write again with
  If-Match, read again.
- Every write reloads Caddy's whole config, and a reload restarts the admin listener
  too, so idle keep-alive connections die with it; this client opens a connection per
  request (cheap on loopback or a unix socket) instead of tripping over dead ones.
- PUT creates missing parents (apps, http, servers) and answers 409 when the key exists;
  PUT .../routes/<i> inserts before i (i == len appends); POST .../routes/... appends a
  list, creating `routes` when the server has none, where PUT .../routes/0 would not.
- GET of a missing key answers 200 `null` (with an Etag), but a GET *through* a missing
  key answers 400 "invalid traversal path"; both read as "not there".
- Errors: unknown @id or PATCH of a missing key 404; stale If-Match 412; invalid config
  through PATCH/PUT/POST 500 (400 for a duplicate @id); invalid config through /load 400.
  The body is `{"error": "..."}` and the old config keeps serving.
- Over a unix socket Caddy accepts any Host header and refuses any Origin header; over
  TCP the Host must name the admin address (httpx sends it from the base URL).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from labelsync.caddy.operations import (
    AddRoute,
    DeleteRoute,
    Operation,
    ReplaceRoute,
    ReplaceUpstreams,
    apply_operations,
)
from labelsync.core.endpoints import (
    caddy_unix_address,
    has_relative_path,
    is_unix,
    join_host_port,
    unix_socket_path,
    with_url_scheme,
)
from labelsync.core.model import JSON
from labelsync.errors import (
    CaddyBusy,
    CaddyConflict,
    CaddyError,
    CaddyNotFound,
    CaddyRefused,
    CaddyTemporary,
    CaddyUnavailable,
    ConfigError,
)

# How much of a failed write's body goes into the DEBUG log line.
LOGGED_BODY_CHARS = 2000
CADDY_HEALTHY_METRIC = "caddy_reverse_proxy_upstreams_healthy"
HTTP_METRICS_PATH = "/config/apps/http/metrics"  # per-host request counters (core/caddy_metrics)


class CaddyAdmin:
    """An async client for one Caddy admin endpoint.

        admin = CaddyAdmin("unix:///run/labelsync/admin.sock")
        server, etag = await admin.server("labelsync")
        await admin.apply("labelsync", server["routes"], operations, etag)

    `endpoint` is `http://host:port` (or bare `host:port`) or `unix:///path/to/admin.sock`.
    `transport` replaces the connection the endpoint implies (tests pass an
    `httpx.MockTransport` serving an in-memory Caddy); the endpoint still names it.
    `requests_sent` and `bytes_sent` (request bodies) count everything sent, reads included.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.requests_sent = 0
        self.bytes_sent = 0
        self._client = httpx.AsyncClient(
            base_url=_base_url(endpoint),
            transport=transport or _transport(endpoint),
            timeout=timeout,
            trust_env=False,  # HTTP(S)_PROXY must never divert admin traffic
            # No keep-alive: every write restarts Caddy's admin listener (see module doc).
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def __repr__(self) -> str:
        return f"CaddyAdmin({self.endpoint!r})"

    # --- reads ------------------------------------------------------------------------
    async def get(self, path: str) -> tuple[Any, str | None]:
        """The JSON at `path` and its Etag; None for null, and (None, None) when missing."""
        response = await self._send("GET", path)
        if response.status_code == 404 or _is_missing_parent(response):
            return None, None
        _raise_for_status(response, "GET", path, write=False)
        return response.json(), response.headers.get("Etag")

    async def server(self, name: str) -> tuple[JSON | None, str | None]:
        """`apps.http.servers.<name>` and the Etag that guards writes into it."""
        server, etag = await self.get(_server_path(name))
        return (server if isinstance(server, dict) else None), etag

    async def upstreams(self) -> list[JSON]:
        """GET /reverse_proxy/upstreams: `[{"address", "num_requests", "fails"}, ...]`."""
        upstreams, _ = await self.get("/reverse_proxy/upstreams")
        return list(upstreams or [])

    async def has_id(self, object_id: str) -> bool:
        """True when Caddy holds an object with this `@id` (GET /id/<id>; 404 when not)."""
        value, _ = await self.get(_id_path(object_id))
        return value is not None

    async def active_health(self) -> dict[str, bool] | None:
        """Caddy's own active-check verdicts by upstream address (static mode), from the
        `caddy_reverse_proxy_upstreams_healthy` gauge of its `/metrics` (Caddy refreshes
        it about every 10 s); None when Caddy does not answer."""
        try:
            response = await self._send("GET", "/metrics")
        except CaddyUnavailable:
            return None
        if response.status_code != 200:
            return None
        verdicts = {}
        for family in text_string_to_metric_families(response.text):
            if family.name != CADDY_HEALTHY_METRIC:
                continue
            for sample in family.samples:
                if "upstream" in sample.labels:
                    verdicts[sample.labels["upstream"]] = sample.value >= 1
        return verdicts

    async def metrics_text(self) -> str:
        """GET /metrics: Caddy's Prometheus text (its request counters: core/caddy_metrics.py)."""
        response = await self._send("GET", "/metrics")
        _raise_for_status(response, "GET", "/metrics", write=False)
        return response.text

    async def http_metrics(self) -> Any:
        """`apps.http.metrics` as Caddy holds it; None when absent."""
        config, _ = await self.get(HTTP_METRICS_PATH)
        return config

    async def set_http_metrics(self, config: JSON, *, replace: bool) -> None:
        """Write `apps.http.metrics` (one config load): over what is there (`replace`),
        else created, with any missing parent (CaddyConflict when it appeared meanwhile)."""
        await self._write("PATCH" if replace else "PUT", HTTP_METRICS_PATH, config)

    async def ping(self) -> bool:
        """True when the admin endpoint answers a read.

        `GET /config/`, not a key under it: a Caddy started without a config answers
        200 `null` there, and 400 "invalid traversal path" for any key below.
        """
        try:
            response = await self._send("GET", "/config/")
        except CaddyUnavailable:
            return False
        return response.status_code == 200

    # --- writes -----------------------------------------------------------------------
    async def ensure_server(self, name: str, server: JSON) -> bool:
        """Create `apps.http.servers.<name>` when missing; True when this call created it.

        A read, then one PUT when the server is missing: Caddy's PUT creates missing
        `apps`/`http`/`servers` parents and leaves every other key alone. A server that
        appears in between (409) counts as existing. `routes: []` is added when absent.
        """
        current, _ = await self.server(name)
        if current is not None:
            return False
        body = {"routes": [], **server}  # POST .../routes/... and PATCH need a list there
        try:
            await self._write("PUT", _server_path(name), body)
        except CaddyConflict:
            return False
        return True

    async def apply(
        self,
        server_name: str,
        current_routes: list[JSON],
        operations: list[Operation],
        etag: str | None,
    ) -> None:
        """Send `operations` against the server's `current_routes` as one admin request.

        Each write reloads the whole config, so a single operation goes to its own path
        (addressed by @id where it has one) and several go as one PATCH of the routes list
        computed by `apply_operations`. With `etag` (from `server()`), a concurrent edit of
        the server by anyone else raises CaddyConflict and nothing is written; the etag is
        spent afterwards, read the server again before the next call.
        """
        if not operations:
            return
        routes_path = f"{_server_path(server_name)}/routes"
        if not current_routes:
            # The server may lack `routes` altogether; only POST .../routes/... creates it
            # as a list, and against an empty list nothing but inserts can apply.
            routes = apply_operations([], operations)
            await self._write("POST", f"{routes_path}/...", routes, etag=etag)
        elif len(operations) == 1:
            method, path, body = _single_request(routes_path, operations[0])
            await self._write(method, path, body, etag=etag)
        else:
            routes = apply_operations(current_routes, operations)
            await self._write("PATCH", routes_path, routes, etag=etag)

    async def load(self, config: JSON) -> None:
        """POST /load: replace the whole config.

        Only for the first boot of an embedded Caddy and for benchmark baselines. A config
        without `admin.listen` would move the admin endpoint to localhost:2019 (even when
        the load fails), so this endpoint's address is filled in when it is missing.
        """
        admin = dict(config.get("admin") or {})
        admin.setdefault("listen", _caddy_listen_address(self.endpoint))
        await self._write("POST", "/load", {**config, "admin": admin})

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- transport --------------------------------------------------------------------
    async def _write(self, method: str, path: str, body: Any, *, etag: str | None = None) -> None:
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        response = await self._send(method, path, content=content, etag=etag)
        if response.is_error:
            # The caller logs the refusal once; the body is for whoever digs deeper.
            logger.debug(
                "Caddy answered {} {} with {}: {}; request body: {}",
                method,
                path,
                response.status_code,
                _error_text(response),
                (content or b"").decode()[:LOGGED_BODY_CHARS],
            )
        _raise_for_status(response, method, path, write=True)

    async def _send(
        self, method: str, path: str, *, content: bytes | None = None, etag: str | None = None
    ) -> httpx.Response:
        headers = {}
        if content is not None:
            headers["Content-Type"] = "application/json"
        if etag:
            headers["If-Match"] = etag
        self.requests_sent += 1
        self.bytes_sent += len(content or b"")
        try:
            return await self._client.request(method, path, content=content, headers=headers)
        except httpx.TransportError as exc:
            raise CaddyUnavailable(
                f"Caddy admin at {self.endpoint} did not answer {method} {path}: "
                f"{type(exc).__name__}: {exc}",
                method=method,
                path=path,
            ) from exc


def _single_request(routes_path: str, operation: Operation) -> tuple[str, str, Any]:
    """Method, path and body of the one request that performs `operation`."""
    match operation:
        case AddRoute(index=index, route=route):
            return "PUT", f"{routes_path}/{index}", route
        case ReplaceRoute(route_id=route_id, route=route):
            return "PATCH", _id_path(route_id), route
        case ReplaceUpstreams(route_id=route_id, upstreams=upstreams):
            return "PATCH", f"{_id_path(route_id)}/handle/0/upstreams", upstreams
        case DeleteRoute(route_id=route_id):
            return "DELETE", _id_path(route_id), None
    raise TypeError(f"not an admin operation: {operation!r}")


def _server_path(name: str) -> str:
    return f"/config/apps/http/servers/{quote(name, safe='')}"


def _id_path(route_id: str) -> str:
    return f"/id/{quote(route_id, safe='')}"


def _base_url(endpoint: str) -> str:
    """The URL requests are addressed to; ConfigError for an endpoint we cannot use."""
    if has_relative_path(endpoint):
        raise ConfigError(f"unix admin endpoint needs an absolute path: {endpoint!r}")
    if is_unix(endpoint):
        # Caddy accepts any Host over a unix socket; the name only has to be valid.
        return "http://localhost"
    url = with_url_scheme(endpoint)
    parsed = httpx.URL(url)
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ConfigError(f"admin endpoint must be http://host:port or unix:///path: {endpoint!r}")
    return url.rstrip("/")


def _transport(endpoint: str) -> httpx.AsyncHTTPTransport:
    """The connection an endpoint string implies: a unix socket, or TCP (no socket path)."""
    return httpx.AsyncHTTPTransport(uds=unix_socket_path(endpoint))


def _caddy_listen_address(endpoint: str) -> str:
    """Our endpoint in the form Caddy's `admin.listen` takes."""
    socket_path = unix_socket_path(endpoint)
    if socket_path is not None:
        return caddy_unix_address(socket_path)
    url = httpx.URL(with_url_scheme(endpoint))
    return join_host_port(url.host, url.port or 80)


def _is_missing_parent(response: httpx.Response) -> bool:
    """A GET through a key that does not exist (e.g. `apps/http/...` with no `http`)."""
    # Caddy answers null for a missing last key but 400 for a missing intermediate one.
    return response.status_code == 400 and _error_text(response).startswith(
        "invalid traversal path"
    )


def _error_text(response: httpx.Response) -> str:
    """Caddy's `{"error": ...}` message, or the raw body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text.strip()


def _raise_for_status(response: httpx.Response, method: str, path: str, *, write: bool) -> None:
    try:
        response.raise_for_status()
    except httpx.HTTPStatusError as exc:
        raise _status_error(response, method, path, write=write) from exc


def _status_error(response: httpx.Response, method: str, path: str, *, write: bool) -> CaddyError:
    """The error for an unsuccessful answer, by what to do about it (see labelsync.errors)."""
    status = response.status_code
    error = _error_text(response)
    message = f"Caddy answered {status} to {method} {path}: {error}"
    kind: type[CaddyError]
    if status == 404:
        kind = CaddyNotFound
    elif status in (409, 412):
        # 412: If-Match failed; 409: PUT of a key that exists. Both mean "re-read, write".
        kind = CaddyConflict
    elif write and (status == 500 or 400 <= status < 500):
        # Caddy validates a config write by loading it: 500 (400 on /load or for a
        # duplicate @id) is about the content, and the same content gets the same answer.
        kind = CaddyRefused
    elif status >= 500:
        kind = CaddyBusy  # a read failing, or a proxy in front answering 502/503/504
    else:
        kind = CaddyTemporary
    return kind(message, method=method, path=path, status=status, body=error)


async def answers(endpoint: str, *, timeout: float = 1.0) -> bool:
    """True when a Caddy admin API answers at `endpoint` (a one-off client, closed after)."""
    admin = CaddyAdmin(endpoint, timeout=timeout)
    try:
        return await admin.ping()
    finally:
        await admin.aclose()
