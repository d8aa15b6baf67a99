"""Endpoints as labelsync's settings spell them: `unix:///path`, or `host:port`.

Caddy's admin API, labelsync's resolver (where it listens and what Caddy is told) and
the Docker engine are each given as one string: a unix socket (`unix://` then the
path, `unix:///run/labelsync/admin.sock`) or a TCP/UDP address (`host:port`, with an
IPv6 host in brackets, `[::1]:2019`; the admin API also as an `http://` URL). This module
reads and writes those spellings; what a caller accepts (an absolute socket path, a
port in range) and what it says when it refuses stays with the caller, whose setting
it is. Pure: no sockets are opened here.

    unix_socket_path("unix:///run/dns.sock")  # "/run/dns.sock"
    unix_socket_path("127.0.0.1:8053")        # None
    split_host_port("[::1]:53")               # HostPort(host="::1", port="53")
    join_host_port("::1", 53)                 # "[::1]:53"
"""

from __future__ import annotations

from typing import Final, NamedTuple

UNIX_SCHEME: Final = "unix://"
"""What starts a unix socket endpoint; the path follows (`unix:///run/x.sock`). Matched
as written: `UNIX://...` and `unix:/...` are not unix endpoints."""

CADDY_UNIX_NETWORK: Final = "unix/"
"""What starts a unix socket in Caddy's network addresses (`unix//run/x.sock`): its
`admin.listen` and its resolver `addresses`."""

DEFAULT_URL_SCHEME: Final = "http://"
"""The scheme of an admin endpoint written as a bare `host:port`."""


class HostPort(NamedTuple):
    """A `host:port` split at its last colon, both parts as written but the brackets."""

    host: str
    """Without the brackets of an IPv6 address (`::1`); may be empty (`:8053`)."""
    port: str
    """The text after the last colon; the caller checks it is a port."""


def unix_socket_path(endpoint: str) -> str | None:
    """The socket path of a `unix://` endpoint, as written (`/run/x.sock`; relative or
    empty when written so: `has_relative_path` finds those); None for any other endpoint."""
    if not endpoint.startswith(UNIX_SCHEME):
        return None
    return endpoint.removeprefix(UNIX_SCHEME)


def is_unix(endpoint: str) -> bool:
    """True for a `unix://` endpoint."""
    return endpoint.startswith(UNIX_SCHEME)


def has_relative_path(endpoint: str) -> bool:
    """True for a `unix://` endpoint whose socket path is not absolute (`unix://x.sock`,
    `unix://`): the endpoints labelsync refuses."""
    path = unix_socket_path(endpoint)
    return path is not None and not path.startswith("/")


def unix_endpoint(socket_path: str) -> str:
    """The endpoint of a unix socket: `unix:///run/x.sock` for `/run/x.sock`."""
    return f"{UNIX_SCHEME}{socket_path}"


def caddy_unix_address(socket_path: str) -> str:
    """A unix socket as Caddy's network addresses spell it: `unix//run/x.sock`."""
    return f"{CADDY_UNIX_NETWORK}{socket_path}"


def split_host_port(address: str) -> HostPort:
    """`host:port` or `[v6]:port` -> (host, port text), split at the last colon. Never
    raises: no colon gives an empty host and the whole text as the port, and an
    unbracketed IPv6 address splits at its last colon too (`::1` -> `:`, `1`)."""
    host, _, port = address.rpartition(":")
    return HostPort(host.strip("[]"), port)


def bracketed(host: str) -> str:
    """A host as it is written before `:port` or in a URL: an IPv6 address in brackets
    (`[::1]`); names, IPv4 addresses and hosts already in brackets as they are."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]"
    return host


def join_host_port(host: str, port: int | str) -> str:
    """`host:port`, with an IPv6 host in brackets: `[::1]:53`."""
    return f"{bracketed(host)}:{port}"


def with_url_scheme(endpoint: str) -> str:
    """An admin endpoint as a URL: `http://` before a bare `host:port`, any endpoint
    that names its scheme (`https://...`, `unix://...`) as it is."""
    return endpoint if "://" in endpoint else f"{DEFAULT_URL_SCHEME}{endpoint}"
