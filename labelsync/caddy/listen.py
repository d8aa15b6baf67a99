"""Where Caddy listens, and which port speaks plain HTTP and which HTTPS.

Caddy's automatic HTTPS decides per listener: a listener on `apps.http.http_port`
(default 80) speaks plain HTTP; every other listener of a server with host matchers
speaks TLS, and the HTTP→HTTPS redirects go to a server Caddy adds on `http_port` (or
after the routes of a server already listening there, where they catch only the hosts
no route matches). So `LABELSYNC_LISTEN=:8080,:8443` alone would serve TLS on both ports
and bind :80 for the redirects. The plan below makes the two coherent:

- `LABELSYNC_HTTP_PORT` / `LABELSYNC_HTTPS_PORT` when set; otherwise derived from
  `LABELSYNC_LISTEN`: the HTTPS port is 443 when listed, else the second listed port;
  the HTTP port is 80 when listed, else the first listed port that is not the HTTPS
  port (`:80,:443` → 80/443, `:8080,:8443` → 8080/8443, `:8080` → 8080 alone).
- Automatic HTTPS on, both ports listed: labelsync's server listens on the HTTPS
  address(es) only and Caddy's redirect server takes the HTTP port, so every plain
  request is redirected (`https://host:8443/...`; no port in the Location for 443).
- A listen without its HTTPS port (`:8080` alone), or `LABELSYNC_AUTO_HTTPS=off`: plain
  HTTP, automatic HTTPS off for the server.
- `disable_redirects`, or a listen without its HTTP port (`:443` alone): TLS on the
  HTTPS port, no redirects, so nothing binds a port that was not asked for; a listed
  HTTP port then serves the routes in plain HTTP.
- The bundled Caddy gets `apps.http.http_port` (labelsync owns that whole config). Its
  `https_port` stays Caddy's default on purpose: Caddy leaves the port out of a redirect
  to its `https_port`, taking it for a port forwarded from 443. An external Caddy's own
  ports are never changed: when they disagree (`port_mismatch`), the server keeps every
  listen address with TLS and no redirects (`for_caddy_http_port`), so nothing binds
  Caddy's own `http_port` behind the operator's back, and a WARNING says what to set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from labelsync.caddy.render import render_server
from labelsync.core.model import JSON
from labelsync.settings import Settings

DEFAULT_HTTP_PORT = 80
DEFAULT_HTTPS_PORT = 443


def tcp_listener(address: str) -> tuple[str, int] | None:
    """The host (empty for every interface) and (first) TCP port of a Caddy listen
    address (`network/host:port-range`); None for unix, UDP or no port."""
    network, sep, rest = address.partition("/")
    if not sep:
        network, rest = "tcp", address
    if not network.startswith("tcp"):
        return None
    host, sep, ports = rest.rpartition(":")
    port = ports.split("-", 1)[0]
    return (host, int(port)) if sep and port.isdigit() else None


def listen_port(address: str) -> int | None:
    """The (first) TCP port of a Caddy listen address; None for unix, UDP or no port."""
    listener = tcp_listener(address)
    return listener[1] if listener is not None else None


@dataclass(frozen=True)
class ListenPlan:
    """The server's listeners and what each one speaks."""

    listen: tuple[str, ...]
    auto_https: str  # the setting: on, off, disable_redirects
    http_port: int
    https_port: int

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(p for p in (listen_port(a) for a in self.listen) if p is not None)

    @property
    def tls(self) -> bool:
        """Does the HTTPS port get TLS (automatic HTTPS on and the port listened)?"""
        return self.auto_https != "off" and self.https_port in self.ports

    @property
    def redirects(self) -> bool:
        """Does the HTTP port redirect to the HTTPS port?"""
        return self.tls and self.auto_https == "on" and self.http_port in self.ports

    @property
    def server_auto_https(self) -> str:
        """The effective `automatic_https` mode of the server labelsync creates."""
        if not self.tls:
            return "off"
        return "on" if self.redirects else "disable_redirects"

    @property
    def server_listen(self) -> tuple[str, ...]:
        """The server's own listeners: without the HTTP port when Caddy redirects there."""
        if not self.redirects:
            return self.listen
        return tuple(a for a in self.listen if listen_port(a) != self.http_port)

    def server(self, routes: list[JSON]) -> JSON:
        """The server object labelsync creates (bundled or external Caddy)."""
        return render_server(self.server_listen, self.server_auto_https, routes)

    def http_app_ports(self) -> JSON:
        """`apps.http` keys that make Caddy's plain-HTTP port and redirects follow the plan."""
        return {"http_port": self.http_port}

    def speaks(self, port: int) -> str:
        """`HTTPS`, `HTTP` or `HTTP (redirects to HTTPS on :8443)` for a listened port."""
        if self.tls and port != self.http_port:
            return "HTTPS"
        if self.redirects:
            return f"HTTP: Caddy redirects every request to HTTPS on :{self.https_port}"
        return "plain HTTP"

    def describe(self) -> str:
        """One phrase for the logs: each listener and what it speaks."""
        parts = []
        for address in self.listen:
            port = listen_port(address)
            parts.append(address if port is None else f"{address} ({self.speaks(port)})")
        text = ", ".join(parts) or "no listener"
        if self.tls:
            text += (
                "; certificates: Caddy's local CA for .localhost names and IP addresses"
                " (not trusted by this host unless LABELSYNC_INSTALL_TRUST=true), a public CA"
                " (ACME) for other names"
            )
        return text

    def try_url(self, host: str) -> str:
        """The URL a curl for `host` should use (docs/operations.md shows the same)."""
        if self.tls:
            suffix = "" if self.https_port == DEFAULT_HTTPS_PORT else f":{self.https_port}"
            return f"https://{host}{suffix}/"
        port = next(iter(self.ports), DEFAULT_HTTP_PORT)
        suffix = "" if port == DEFAULT_HTTP_PORT else f":{port}"
        return f"http://{host}{suffix}/"


def plan_listen(
    listen: Sequence[str],
    auto_https: str = "on",
    *,
    http_port: int | None = None,
    https_port: int | None = None,
) -> ListenPlan:
    """The plan for listen addresses, the auto-HTTPS setting and the optional ports."""
    ports = [p for p in (listen_port(a) for a in listen) if p is not None]
    if https_port is None:
        if DEFAULT_HTTPS_PORT in ports:
            https_port = DEFAULT_HTTPS_PORT
        elif len(ports) >= 2 and ports[1] != http_port:
            https_port = ports[1]
        else:
            https_port = DEFAULT_HTTPS_PORT
    if http_port is None:
        if DEFAULT_HTTP_PORT in ports:
            http_port = DEFAULT_HTTP_PORT
        else:
            http_port = next((p for p in ports if p != https_port), DEFAULT_HTTP_PORT)
    if auto_https not in ("on", "off", "disable_redirects"):
        raise ValueError(f"auto_https must be on, off or disable_redirects, not {auto_https!r}")
    return ListenPlan(tuple(listen), auto_https, http_port, https_port)


def listen_plan(settings: Settings) -> ListenPlan:
    """The plan of the settings `listen`, `auto_https`, `http_port`, `https_port`."""
    return plan_listen(
        settings.listen_addresses,
        settings.auto_https,
        http_port=settings.http_port,
        https_port=settings.https_port,
    )


def whole_config(
    plan: ListenPlan, server_name: str, routes: list[JSON], *, install_trust: bool = False
) -> JSON:
    """A whole Caddy config holding labelsync's server: the bundled Caddy, `render`.

    `install_trust` false keeps Caddy from adding its local root CA to the host's trust
    store (Caddy's default is to add it the first time it issues a certificate).
    """
    return {
        "apps": {
            "http": {**plan.http_app_ports(), "servers": {server_name: plan.server(routes)}},
            "pki": {"certificate_authorities": {"local": {"install_trust": install_trust}}},
        }
    }


def for_caddy_http_port(plan: ListenPlan, caddy_http_port: int | None) -> ListenPlan:
    """The plan as a Caddy whose `http_port` is `caddy_http_port` can serve it.

    When that port is not the plan's HTTP port, Caddy would speak TLS on the plan's HTTP
    port and bind its own `http_port` for the redirects (failing every write when that
    port is taken): the server then keeps every listen address, with TLS on all of them
    and no redirects, and `port_mismatch` says why.
    """
    theirs = caddy_http_port or DEFAULT_HTTP_PORT
    if port_mismatch(plan, caddy_http_port) is None:
        return plan
    return dataclasses.replace(plan, auto_https="disable_redirects", http_port=theirs)


def port_mismatch(plan: ListenPlan, caddy_http_port: int | None) -> str | None:
    """Why an external Caddy will not serve the plan as written; None when it will."""
    theirs = caddy_http_port or DEFAULT_HTTP_PORT
    if not plan.tls or plan.http_port not in plan.ports or theirs == plan.http_port:
        return None
    effect = f":{plan.http_port} speaks TLS, not plain HTTP, and nothing redirects to HTTPS"
    return (
        f"Caddy's apps.http.http_port is {theirs}, labelsync's HTTP port {plan.http_port} "
        f"(LABELSYNC_LISTEN={','.join(plan.listen)}): {effect}. labelsync does not change a "
        f'Caddy config it does not own: set "http_port": {plan.http_port} in Caddy\'s http '
        "app, or LABELSYNC_AUTO_HTTPS=off for plain HTTP"
    )
