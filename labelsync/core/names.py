"""Names and ids: the one place each naming rule of labelsync lives.

- Caddy route ids: every route labelsync owns has an `@id` starting with `OWNED_PREFIX`;
  routes without it are the user's and are never touched.
- DNS names under `ZONE` that labelsync's resolver answers: one SRV name per pool
  (`pool_dns_name`) and one target name per member address (`member_target`), which
  spells the member's IP so that the resolver can answer it without any state.
- Which pools are weighted (their members carry weights Caddy or the resolver honours).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable

from labelsync.core.model import PoolSettings

OWNED_PREFIX = "labelsync-"

ZONE = "labelsync.internal"
IPV4_ZONE = f"ip4.{ZONE}"
IPV6_ZONE = f"ip6.{ZONE}"
POOL_ZONE = f"pool.{ZONE}"

WEIGHTED_POLICY = "weighted_round_robin"

_SLUG_MAX = 40


def pool_id(hosts: Iterable[str], path: str | None) -> str:
    """Stable, readable Caddy @id: `labelsync-<host>[-<path>]-<8 hex of sha256>`."""
    host_list = sorted({h.lower() for h in hosts})
    digest = hashlib.sha256(("\n".join(host_list) + "\0" + (path or "")).encode()).hexdigest()
    parts = [OWNED_PREFIX.rstrip("-"), _slug(host_list[0] if host_list else "") or "pool"]
    if path_slug := _slug(path or ""):
        parts.append(path_slug)
    return "-".join([*parts, digest[:8]])


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:_SLUG_MAX].strip("-")


def is_owned(route_id: object) -> bool:
    """True for the @id of a route labelsync owns (anything else is the user's)."""
    return isinstance(route_id, str) and route_id.startswith(OWNED_PREFIX)


def is_weighted(settings: PoolSettings) -> bool:
    """True when a pool's members carry weights: `weighted_round_robin`, or a canary split."""
    return settings.lb_policy == WEIGHTED_POLICY or settings.split > 0


def pool_dns_name(identifier: str) -> str:
    """The SRV name under which the resolver serves the members of pool `identifier`.

    A hash keeps the name a valid, fixed-length DNS label whatever the hosts and
    path of the pool are.
    """
    digest = hashlib.sha256(identifier.encode("utf-8")).hexdigest()[:16]
    return f"{digest}.{POOL_ZONE}."


def in_zone(name: str) -> bool:
    """True for a name (lower case, no trailing dot) inside labelsync's zone."""
    return name == ZONE or name.endswith("." + ZONE)


# Pure and called for every member on every publish: remember recent answers.
@functools.lru_cache(maxsize=65536)
def member_target(address: str) -> tuple[str, int]:
    """The SRV target name and port for a member address `ip:port`, `[ip6]:port` or
    `host:port`; ValueError when the address has no valid port.

    >>> member_target("10.0.0.5:8080")
    ('10-0-0-5.ip4.labelsync.internal.', 8080)
    """
    host, port = split_address(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host.rstrip('.').lower()}.", port
    if isinstance(ip, ipaddress.IPv4Address):
        return f"{str(ip).replace('.', '-')}.{IPV4_ZONE}.", port
    # The full 32 hex digits: `::` compressions would put dashes at label edges.
    return f"{ip.exploded.replace(':', '')}.{IPV6_ZONE}.", port


@functools.lru_cache(maxsize=65536)
def target_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a member target name spells (`member_target`'s inverse), or None when
    `name` is not such a name. Case and a trailing dot do not matter."""
    labels = name.rstrip(".").lower().split(".")
    if len(labels) < 2:
        return None
    head, zone = labels[0], ".".join(labels[1:])
    try:
        if zone == IPV4_ZONE and head.count("-") == 3:
            return ipaddress.IPv4Address(head.replace("-", "."))
        if zone == IPV6_ZONE and len(head) == 32:
            groups = [head[i : i + 4] for i in range(0, 32, 4)]
            return ipaddress.IPv6Address(":".join(groups))
    except ValueError:
        return None
    return None


def member_address_of(target: str, port: int) -> str:
    """The member address an upstream `target:port` from Caddy stands for: the IP for
    labelsync's own target names, the host name otherwise (for `labelsync status`)."""
    ip = target_ip(target)
    if ip is None:
        return f"{target.rstrip('.')}:{port}"
    if isinstance(ip, ipaddress.IPv6Address):
        return f"[{ip}]:{port}"
    return f"{ip}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError for anything else."""
    host, sep, port_text = address.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 address without brackets: {address!r}")
    return host, port


def parse_listen(address: str) -> tuple[str | None, int]:
    """A listen address `host:port`, `[v6]:port` or `:port` -> (host, port), host None
    for `:port` (every interface, as in Go and Caddy); ValueError for anything else."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"a listen address is host:port or :port, not {address!r}")
    host = host.strip("[]")
    return (host or None), int(port)
