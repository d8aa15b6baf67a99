"""Names and ids: the one place each naming rule of labelsync lives.

- Caddy route ids: every route labelsync owns has an `@id` starting with `OWNED_PREFIX`;
  routes without it are the user's and are never touched.
- DNS names under `ZONE` that labelsync's resolver answers: one SRV name per pool
  (`pool_dns_name`) and one target name per member (`member_target`), which spells the
  member's IP and its container's short id, so that the resolver can answer it without
  any state and no two containers share a name.
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
def member_target(address: str, instance: str = "") -> tuple[str, int]:
    """The SRV target name and port for a member address `ip:port`, `[ip6]:port` or
    `host:port`; ValueError when the address has no valid port.

    `instance` (a container id) gives each container a name of its own: Caddy keeps a
    dynamic upstream's passive-health record (its failure count) per dial address, that
    is per target name, for as long as the name is in use and an hour after. Docker hands
    a freed IP to the next container at once, so a name that spelled the IP alone would
    pass a dead container's failures on to the new one.

    >>> member_target("10.0.0.5:8080")
    ('10-0-0-5.ip4.labelsync.internal.', 8080)
    >>> member_target("10.0.0.5:8080", "3f2a9b1c0d4e5f60718293a4b5c6d7e8")
    ('10-0-0-5.3f2a9b1c0d4e.ip4.labelsync.internal.', 8080)
    """
    host, port = split_address(address)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return f"{host.rstrip('.').lower()}.", port
    tag = f"{instance_label(instance)}." if instance else ""
    if isinstance(ip, ipaddress.IPv4Address):
        return f"{str(ip).replace('.', '-')}.{tag}{IPV4_ZONE}.", port
    # The full 32 hex digits: `::` compressions would put dashes at label edges.
    return f"{ip.exploded.replace(':', '')}.{tag}{IPV6_ZONE}.", port


_INSTANCE_LENGTH = 12
_HEX = frozenset("0123456789abcdef")


def instance_label(instance: str) -> str:
    """The DNS label naming one member instance: a container's short id (its first 12
    hex digits, as `docker ps` shows it), or 12 hex digits of a hash of any other id."""
    short = instance.lower()[:_INSTANCE_LENGTH]
    if _is_instance_label(short):
        return short
    return hashlib.sha256(instance.encode("utf-8")).hexdigest()[:_INSTANCE_LENGTH]


def _is_instance_label(label: str) -> bool:
    return len(label) == _INSTANCE_LENGTH and _HEX.issuperset(label)


def has_instance(name: str) -> bool:
    """True for a member target name that carries an instance label (a container's)."""
    labels = name.rstrip(".").lower().split(".")
    return len(labels) > 2 and _is_instance_label(labels[1]) and target_ip(name) is not None


@functools.lru_cache(maxsize=65536)
def target_ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP a member target name spells (`member_target`'s inverse), or None when
    `name` is not such a name. Case and a trailing dot do not matter; the instance
    label, when there is one, does not change the IP."""
    labels = name.rstrip(".").lower().split(".")
    if len(labels) < 2:
        return None
    head = labels[0]
    rest = labels[1:]
    if len(rest) > 1 and _is_instance_label(rest[0]):
        rest = rest[1:]
    zone = ".".join(rest)
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
