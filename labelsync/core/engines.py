"""The Docker engines labelsync reads, as `LABELSYNC_DOCKER_HOST` lists them. Pure.

One engine, as it always was, or several separated by commas; each one a Docker URL as the
Docker CLI writes it, with labelsync's options for that engine after a `?`:

    unix:///var/run/docker.sock,
    tcp://10.0.0.2:2376?name=b&tls=/etc/labelsync/docker-b,
    ssh://deploy@10.0.0.3?name=c

- `name`: what status, explain, the dashboard and `/metrics` call the engine; by default
  `local` for the default socket, else the socket path, or the URL's host.
- `reach`: `container` has Caddy dial each container's own address (the same host, an
  overlay or a routed network); `published` the engine's host address and the port's
  *published* host port. By default `container` with one engine or a unix socket, and
  `published` for `tcp://` and `ssh://` engines among several (or with `host_address`).
- `host_address`: where the engine's published ports are reached; by default the URL's
  host, and for a socket the port's own host address (127.0.0.1 when bound to all).
- `tls` (`tcp://` only): a directory with `ca.pem`, `cert.pem` and `key.pem`, as
  `DOCKER_CERT_PATH` holds them: the engine's certificate is checked against `ca.pem` and
  labelsync shows its client certificate. Without it, `tcp://` is plain TCP.

Each container's record carries its engine's name, reach and host address
(`ContainerInfo`); `core/labels.py` picks the address, a label `reach` can
say otherwise for one container.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl, urlsplit

from labelsync.core.defaults import DOCKER_SOCKET
from labelsync.core.endpoints import unix_endpoint, unix_socket_path

SCHEMES = ("unix", "tcp", "ssh")
OPTIONS = ("name", "reach", "host_address", "tls")
LOCAL_NAME = "local"  # the engine of the default socket
_LOCAL_SOCKETS = frozenset({DOCKER_SOCKET, "/run/docker.sock"})
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]*")


class Reach(StrEnum):
    """How Caddy reaches the containers of an engine (or of one container: label `reach`)."""

    CONTAINER = "container"  # the container's own address on its network
    PUBLISHED = "published"  # the engine's host address and the published host port


@dataclass(frozen=True)
class EngineSpec:
    """One engine of `LABELSYNC_DOCKER_HOST`."""

    url: str | None  # None: DOCKER_HOST (with its TLS variables), else the default socket
    name: str
    reach: Reach = Reach.CONTAINER
    host_address: str | None = None  # None: the published port's own host address
    tls: str | None = None  # directory with ca.pem, cert.pem, key.pem
    several: bool = False  # one of several engines: its containers carry its name

    @property
    def endpoint(self) -> str:
        """The URL without labelsync's options, for messages."""
        return self.url or unix_endpoint(DOCKER_SOCKET)


@dataclass(frozen=True)
class EngineState:
    """One engine as the daemon last saw it, for status, the dashboard and `/metrics`."""

    name: str
    endpoint: str
    up: bool
    reason: str | None = None  # why it is out
    since: float | None = None  # wall-clock seconds of the last change between up and out
    containers: int = 0  # in its last listing (kept while it is out)


def parse_engines(text: str | None) -> tuple[EngineSpec, ...]:
    """The engines of a `LABELSYNC_DOCKER_HOST` value; ValueError naming the bad part."""
    entries = [part.strip() for part in (text or "").split(",") if part.strip()]
    if not entries:
        return (EngineSpec(url=None, name=LOCAL_NAME),)
    several = len(entries) > 1
    engines = tuple(_parse_entry(entry, several=several) for entry in entries)
    seen: dict[str, str] = {}
    for engine in engines:
        if engine.name in seen:
            raise ValueError(
                f"{seen[engine.name]!r} and {engine.endpoint!r} are both named "
                f"{engine.name!r}; give one another name: {engine.endpoint}?name=..."
            )
        seen[engine.name] = engine.endpoint
    return engines


def _parse_entry(entry: str, *, several: bool) -> EngineSpec:
    url, _, query = entry.partition("?")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise ValueError(
            f"{entry!r}: not a Docker URL; use unix:///path/docker.sock, tcp://host:port "
            "or ssh://[user@]host"
        )
    options = _options(entry, query)
    host = _url_host(url)
    if scheme == "unix":
        path = unix_socket_path(url) or ""
        if not path.startswith("/"):
            raise ValueError(f"{entry!r}: a unix socket needs an absolute path")
        default_name = LOCAL_NAME if path in _LOCAL_SOCKETS else path
    elif not host:
        raise ValueError(f"{entry!r}: no host in the URL")
    else:
        default_name = host
    if "tls" in options and scheme != "tcp":
        raise ValueError(f"{entry!r}: tls= is for tcp:// engines only")
    name = options.get("name", default_name)
    if "name" in options and not _NAME.fullmatch(name):
        raise ValueError(
            f"{entry!r}: name {name!r}: use letters, digits and . _ - : / (first a letter or digit)"
        )
    remote = scheme != "unix" and several
    reach_text = options.get("reach")
    if reach_text is None:
        reach = Reach.PUBLISHED if remote or "host_address" in options else Reach.CONTAINER
    elif reach_text in tuple(Reach):
        reach = Reach(reach_text)
    else:
        raise ValueError(f"{entry!r}: reach={reach_text!r}: use reach=container or reach=published")
    host_address = options.get("host_address") or (host if scheme != "unix" else None)
    return EngineSpec(
        url=url,
        name=name,
        reach=reach,
        host_address=host_address,
        tls=options.get("tls"),
        several=several,
    )


def _options(entry: str, query: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            raise ValueError(
                f"{entry!r}: unknown option {key!r}; the options are {', '.join(OPTIONS)}"
            )
        if not value:
            raise ValueError(f"{entry!r}: {key}= needs a value")
        options[key] = value
    return options


def _url_host(url: str) -> str:
    """The host of a tcp:// or ssh:// URL, without user, port or IPv6 brackets."""
    try:
        return urlsplit(url).hostname or ""
    except ValueError:
        return ""
