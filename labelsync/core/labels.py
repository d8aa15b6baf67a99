"""Labels of one container -> its routes, plus problems as data. Never raises.

`labelsync.<key>` is the container's default route; `labelsync.route.<name>.<key>` is a
named route that inherits every default key it does not set itself. A route exists when
it has a `host`. A bad value drops only the routes that use it; each bad label is reported
once, and a named route dropped only because of an inherited value says so once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from labelsync.core import defaults
from labelsync.core import label_values as v
from labelsync.core.engines import Reach
from labelsync.core.model import (
    DEFAULT_COOKIE_NAME,
    RETRIES_AUTO,
    ActiveHealth,
    ContainerInfo,
    PassiveHealth,
    PoolSettings,
    Problem,
    ProblemCause,
    Route,
    Severity,
    Track,
)

# Every key a route understands (relative to the prefix), and how its value is read.
KEYS: dict[str, Callable[[str], object]] = {
    "host": v.parse_hosts,
    "path": v.parse_path,
    "port": v.parse_port,
    "scheme": v.choice("scheme", v.SCHEMES),
    "tls.skip_verify": v.parse_bool,
    "tls.server_name": v.parse_server_name,
    "network": v.parse_text,
    "address": v.parse_address,
    "reach": v.choice("reach", v.REACHES),
    "enable": v.parse_bool,
    "weight": v.integer(0, 1_000_000),
    "order": v.integer(-(10**12), 10**12),
    "track": v.choice("track", v.TRACKS),
    "split": v.integer(0, 100),
    "lb.policy": v.choice("policy", v.POLICIES),
    "lb.key": v.parse_token,
    "lb.choose": v.integer(2, 1000),
    "lb.retries": v.parse_retries,
    "lb.try_duration": v.duration(positive=False),
    "lb.try_interval": v.duration(positive=False),
    "health.path": v.parse_health_path,
    "health.interval": v.duration(positive=True),
    "health.timeout": v.duration(positive=True),
    "health.status": v.parse_status,
    "health.port": v.parse_port,
    "health.body": v.parse_regex,
    "health.passes": v.integer(1, 1000),
    "health.fails": v.integer(1, 1000),
    "health.passive": v.parse_bool,
    "health.passive.fail_duration": v.duration(positive=True),
    "health.passive.max_fails": v.integer(1, 1_000_000),
    "health.passive.unhealthy_latency": v.parse_optional_duration,
    "health.passive.unhealthy_status": v.parse_status_list,
    "timeout.dial": v.duration(positive=True),
    "timeout.response_header": v.duration(positive=True),
}
HEADER_KEY = "health.headers."  # + header name; value sent with the active check
# Member keys belong to each container; every other key of KEYS is a pool key.
MEMBER_KEYS = frozenset(
    {"port", "network", "address", "reach", "weight", "order", "track", "enable"}
)
UNSET = "unset"  # how `pool_key_values` writes a key that has no value
ROUTE_KEY = "route."  # + name + "." + key
_ACTIVE_KEYS = tuple(k for k in KEYS if k.startswith("health.") and "passive" not in k)
_PASSIVE_KEYS = tuple(k for k in KEYS if k.startswith("health.passive."))
# Ports that are TLS by convention: the default scheme for them is https.
HTTPS_PORTS = frozenset({443, 8443, 9443, 10443})


def _parse_header_value(text: str) -> str:
    if any(ch in "\r\n\0" for ch in text):
        raise v.LabelValueError("header values cannot contain line breaks")
    return text


@dataclass(frozen=True)
class _Label:
    key: str  # relative to the prefix and route, e.g. "lb.policy"
    full_key: str  # as written on the container
    raw: str
    value: object  # parsed value, or the LabelValueError saying why not


def _read_label(key: str, full_key: str, raw: str) -> _Label:
    parse = KEYS.get(key)
    if parse is None:  # health.headers.<Name>
        name = key.removeprefix(HEADER_KEY)
        parse = _parse_header_value
        if not v.is_header_name(name):
            error = v.LabelValueError(f"{name!r} is not a valid header name")
            return _Label(key, full_key, raw, error)
    try:
        return _Label(key, full_key, raw, parse(raw))
    except v.LabelValueError as exc:
        return _Label(key, full_key, raw, exc)


def is_known_key(key: str) -> bool:
    """Whether a route understands `key` (relative to the prefix and route): one of
    `KEYS`, or `health.headers.<Name>`."""
    return key in KEYS or (key.startswith(HEADER_KEY) and len(key) > len(HEADER_KEY))


def _nearest_key(key: str) -> str | None:
    candidates = list(KEYS)
    if key.count(".") >= 2:  # health.header.X-Foo -> health.headers.X-Foo
        candidates.append(HEADER_KEY + key.split(".", 2)[2])
    nearest = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    return nearest[0] if nearest else None


class _Problems:
    """Problems of one container, each reported once, in the order found."""

    def __init__(self, container: str) -> None:
        self.container = container
        self.found: dict[Problem, None] = {}

    def add(
        self,
        severity: Severity,
        key: str,
        value: str | None,
        message: str,
        cause: ProblemCause | None = None,
    ) -> None:
        problem = Problem(severity, self.container, key, value, message, cause=cause)
        self.found.setdefault(problem)


def parse_container(
    container: ContainerInfo,
    *,
    prefix: str = defaults.LABEL_PREFIX,
    default_network: str | None = None,
    shape_only: bool = False,
) -> tuple[list[Route], list[Problem]]:
    """The routes a container's labels describe, and what is wrong with them.

    Never raises: bad values become ERROR problems and drop the routes using them;
    unknown keys and keys that have no effect become WARNINGs.

    `shape_only` is for stopped containers: they still shape their pools but are no
    members, and Docker reports neither an IP nor exposed ports for them, so no address
    is resolved (Route.address is "" unless `address` is set).
    """
    base = prefix + "."
    ours = {k[len(base) :]: val for k, val in container.labels.items() if k.startswith(base)}
    if not ours:
        return [], []
    problems = _Problems(container.name)
    default: dict[str, _Label] = {}
    named: dict[str, dict[str, _Label]] = {}
    for key in sorted(ours):
        full_key, raw = base + key, ours[key]
        route_name, rel = "", key
        if key.startswith(ROUTE_KEY):
            route_name, _, rel = key[len(ROUTE_KEY) :].partition(".")
        if (key.startswith(ROUTE_KEY) and not route_name) or not is_known_key(rel):
            nearest = _nearest_key(rel)
            where = f"{base}{ROUTE_KEY}{route_name}." if route_name else base
            hint = f"; did you mean {where + nearest!r}?" if nearest else ""
            problems.add(Severity.WARNING, full_key, raw, f"unknown key{hint}")
            continue
        label = _read_label(rel, full_key, raw)
        if route_name:
            named.setdefault(route_name, {})[rel] = label
        else:
            default[rel] = label

    routes: list[Route] = []
    candidates = [("", default, default)] + [(n, {**default, **named[n]}, named[n]) for n in named]
    for route_name, labels, own in candidates:
        if "host" not in labels:
            continue
        route = _RouteBuilder(
            container, prefix, route_name, labels, own, default_network, problems, shape_only
        ).build()
        if route is not None:
            routes.append(route)
    if not any("host" in labels for _, labels, _ in candidates):
        problems.add(
            Severity.WARNING, "", None, f"has {prefix} labels but no route: set {base}host"
        )
    return routes, list(problems.found)


class _RouteBuilder:
    """Turns the labels of one route (after inheritance) into a Route or problems."""

    def __init__(
        self,
        container: ContainerInfo,
        prefix: str,
        route_name: str,
        labels: dict[str, _Label],
        own: dict[str, _Label],
        default_network: str | None,
        problems: _Problems,
        shape_only: bool = False,
    ) -> None:
        self.shape_only = shape_only
        self.container = container
        self.prefix = prefix
        self.route_name = route_name
        self.labels = labels
        self.own = own
        self.default_network = default_network
        self.problems = problems
        self.failed = False

    # -- reading values ---------------------------------------------------------------

    def value(self, key: str) -> object:
        label = self.labels.get(key)
        if label is None or isinstance(label.value, v.LabelValueError):
            return None
        return label.value

    def text(self, key: str) -> str | None:
        value = self.value(key)
        return value if isinstance(value, str) else None

    def number(self, key: str, default: int) -> int:
        value = self.value(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    def flag(self, key: str, default: bool) -> bool:
        value = self.value(key)
        return value if isinstance(value, bool) else default

    def error(
        self, key: str, value: str | None, message: str, cause: ProblemCause | None = None
    ) -> None:
        self.failed = True
        self.problems.add(Severity.ERROR, key, value, message, cause)

    def missing(self, key: str, message: str, cause: ProblemCause | None = None) -> None:
        """An error about a key that is not set: name the default-route label to set."""
        self.error(f"{self.prefix}.{key}", None, message, cause)

    def no_effect(self, key: str, reason: str) -> None:
        label = self.labels[key]
        if isinstance(label.value, v.LabelValueError):
            return  # already an error of its own; "no effect" would only distract
        self.problems.add(Severity.WARNING, label.full_key, label.raw, f"has no effect {reason}")

    # -- the route --------------------------------------------------------------------

    def build(self) -> Route | None:
        if self.value("enable") is False:
            return None  # switched off: not an error, and nothing else to check
        self._report_bad_values()
        address = self._address()
        settings = self._settings(address)
        hosts = self.value("host")
        if self.failed or address is None or not isinstance(hosts, tuple):
            return None
        track = Track(self.text("track") or Track.STABLE)
        order = self.value("order")
        return Route(
            container_id=self.container.id,
            container_name=self.container.name,
            created=self.container.created,
            route_name=self.route_name,
            hosts=hosts,
            path=self.text("path"),
            settings=settings,
            address=address,
            weight=self.number("weight", 1),
            order=order if isinstance(order, int) else None,
            track=track,
            origin=self.container.origin,
        )

    def _report_bad_values(self) -> None:
        inherited: list[str] = []
        for key in sorted(self.labels):
            label = self.labels[key]
            if isinstance(label.value, v.LabelValueError):
                self.error(label.full_key, label.raw, str(label.value))
                if self.route_name and key not in self.own:
                    inherited.append(label.full_key)
        if inherited:
            route_key = f"{self.prefix}.{ROUTE_KEY}{self.route_name}"
            self.error(
                route_key, None, f"route dropped: it inherits the invalid {', '.join(inherited)}"
            )

    def _address(self) -> str | None:
        if self.shape_only and "address" not in self.labels:
            return ""
        address = self.text("address")
        if "address" in self.labels:
            for key in ("port", "network"):
                # A named route may set its own address and still inherit the default
                # route's port/network for the default route's sake: no warning then.
                if key in self.labels and (key in self.own or "address" not in self.own):
                    self.no_effect(key, f"when {self.prefix}.address is set")
            return address
        if self.container.host_network:
            self.missing(
                "address",
                f"container uses the host network; set "
                f"{self.prefix}.address (host:port) to reach it",
            )
            return None
        port = self._port()
        if port is not None and self._reach() is Reach.PUBLISHED:
            return self._published_address(port)
        ip = self._network_ip()
        if port is None or ip is None:
            return None
        return v.member_address(ip, port)

    def _reach(self) -> Reach:
        reach = self.text("reach")
        return Reach(reach) if reach is not None else self.container.reach

    def _published_address(self, port: int) -> str | None:
        """The host address and host port where the engine publishes `port`."""
        container = self.container
        engine = f"engine {container.engine!r}" if container.engine else "the engine"
        binding = next((p for p in container.published if p.port == port), None)
        if binding is None:
            self.missing(
                "port",
                f"port {port} is not published on {engine}, which Caddy reaches at published "
                f'ports; publish it (ports: ["{port}"], docker run -p {port}), or set '
                f"{self.prefix}.reach=container when Caddy reaches the container's network",
            )
            return None
        health_port = self.labels.get("health.port")
        if health_port is not None and self.value("health.port") != port:
            self.error(
                health_port.full_key,
                health_port.raw,
                f"cannot be checked on {engine}, which Caddy reaches at published ports "
                f"(each member has its own host port); check the served port "
                f"(remove {self.prefix}.health.port), or set {self.prefix}.reach=container",
            )
            return None
        host = container.host_address
        if not v.is_unspecified(binding.host_ip):
            if v.is_loopback(binding.host_ip) and host is not None and not v.is_loopback(host):
                self.missing(
                    "port",
                    f"port {port} is published only on {binding.host_ip} of {engine}, which "
                    f"Caddy reaches at {host}; publish it on an address Caddy reaches, or on "
                    f'all of them (ports: ["{port}"])',
                )
                return None
            host = binding.host_ip
        return v.join_address(host or "127.0.0.1", binding.host_port)

    def _known_port(self) -> int:
        """The member port when it is known without resolving an address, else 0."""
        port = self.value("port")
        if isinstance(port, int) and not isinstance(port, bool):
            return port
        exposed = {p for p in self.container.exposed_ports if 0 < p < 65536}
        return exposed.pop() if len(exposed) == 1 else 0

    def _port(self) -> int | None:
        if "port" in self.labels:
            port = self.value("port")
            return port if isinstance(port, int) else None
        exposed = sorted({p for p in self.container.exposed_ports if 0 < p < 65536})
        if len(exposed) == 1:
            return exposed[0]
        if not exposed:
            self.missing(
                "port",
                f"container exposes no port; set {self.prefix}.port",
                ProblemCause.NO_PORT,
            )
        else:
            ports = ", ".join(str(p) for p in exposed)
            self.missing(
                "port",
                f"container exposes several ports ({ports}); set {self.prefix}.port to one of them",
            )
        return None

    def _network_ip(self) -> str | None:
        networks = self.container.networks
        label = self.labels.get("network")
        if label is not None:
            name = self.text("network")
            if name is None:
                return None
            if name not in networks:
                hint = v.did_you_mean(name, sorted(networks)) if networks else " (it is on none)"
                self.error(label.full_key, label.raw, f"not one of the container's networks{hint}")
                return None
        elif self.default_network is not None and self.default_network in networks:
            name = self.default_network
        elif len(networks) == 1:
            name = next(iter(networks))
        elif not networks:
            self.missing(
                "address",
                f"container is on no network; set {self.prefix}.address (host:port) to reach it",
            )
            return None
        else:
            names = ", ".join(repr(n) for n in sorted(networks))
            self.missing(
                "network",
                f"container is on several networks ({names}); "
                f"set {self.prefix}.network to one of them",
            )
            return None
        ip = networks[name]
        if not v.is_ip(ip):
            key = label.full_key if label else f"{self.prefix}.network"
            self.error(
                key,
                label.raw if label else None,
                f"container has no IP address on network {name!r}",
            )
            return None
        return ip

    def _settings(self, address: str | None) -> PoolSettings:
        port = v.address_port(address) if address else self._known_port()
        scheme = self.text("scheme") or ("https" if port in HTTPS_PORTS else "http")
        tls_keys = [k for k in ("tls.skip_verify", "tls.server_name") if k in self.labels]
        if scheme != "https":
            for key in tls_keys:
                self.no_effect(key, f"with scheme {scheme!r}")
        policy = self.text("lb.policy") or PoolSettings.lb_policy
        return PoolSettings(
            scheme=scheme,
            tls_skip_verify=scheme == "https" and self.flag("tls.skip_verify", False),
            tls_server_name=self.text("tls.server_name") if scheme == "https" else None,
            split=self.number("split", PoolSettings.split),
            lb_policy=policy,
            lb_key=self._lb_key(policy),
            lb_choose=self._lb_choose(policy),
            lb_retries=self._retries(),
            lb_try_duration=self.text("lb.try_duration"),
            lb_try_interval=self.text("lb.try_interval"),
            active=self._active(),
            passive=self._passive(),
            timeout_dial=self.text("timeout.dial"),
            timeout_response_header=self.text("timeout.response_header"),
        )

    def _lb_key(self, policy: str) -> str | None:
        key = self.text("lb.key")
        if policy == "cookie":
            return key or DEFAULT_COOKIE_NAME
        if policy in ("header", "query"):
            if "lb.key" not in self.labels:
                what = "header" if policy == "header" else "query parameter"
                label = self.labels["lb.policy"]
                self.error(
                    label.full_key,
                    label.raw,
                    f"policy {policy!r} needs {self.prefix}.lb.key (the {what} name)",
                )
            return key
        if "lb.key" in self.labels:
            self.no_effect("lb.key", f"with lb.policy {policy!r}")
        return None

    def _lb_choose(self, policy: str) -> int:
        if "lb.choose" in self.labels and policy != "random_choose":
            self.no_effect("lb.choose", f"with lb.policy {policy!r}")
            return PoolSettings.lb_choose
        return self.number("lb.choose", PoolSettings.lb_choose)

    def _retries(self) -> int | str:
        retries = self.value("lb.retries")
        return retries if isinstance(retries, int | str) else RETRIES_AUTO

    def _active(self) -> ActiveHealth | None:
        header_keys = sorted(k for k in self.labels if k.startswith(HEADER_KEY))
        path = self.text("health.path")
        if "health.path" not in self.labels:
            for key in [*_ACTIVE_KEYS, *header_keys]:
                if key in self.labels and key != "health.path":
                    self.no_effect(key, f"without {self.prefix}.health.path")
            return None
        if path is None:
            return None
        status = self.value("health.status")
        port = self.value("health.port")
        return ActiveHealth(
            path=path,
            interval=self.text("health.interval") or ActiveHealth.interval,
            timeout=self.text("health.timeout") or ActiveHealth.timeout,
            expect_status=status if isinstance(status, int) else ActiveHealth.expect_status,
            port=port if isinstance(port, int) else None,
            body=self.text("health.body"),
            passes=self.number("health.passes", ActiveHealth.passes),
            fails=self.number("health.fails", ActiveHealth.fails),
            headers=tuple((k.removeprefix(HEADER_KEY), self.text(k) or "") for k in header_keys),
        )

    def _passive(self) -> PassiveHealth | None:
        detail_keys = [k for k in _PASSIVE_KEYS if k in self.labels]
        implied = "health.path" in self.labels or bool(detail_keys)
        if not self.flag("health.passive", implied):
            if "health.passive" in self.labels:
                for key in detail_keys:
                    self.no_effect(key, f"while {self.prefix}.health.passive is off")
            return None
        statuses = self.value("health.passive.unhealthy_status")
        return PassiveHealth(
            fail_duration=self.text("health.passive.fail_duration") or PassiveHealth.fail_duration,
            max_fails=self.number("health.passive.max_fails", PassiveHealth.max_fails),
            unhealthy_latency=self.text("health.passive.unhealthy_latency"),
            unhealthy_status=statuses if isinstance(statuses, tuple) else (),
        )


def pool_key_values(settings: PoolSettings) -> dict[str, str]:
    """A route's pool keys as label key -> value, written the way a user would: the way
    back from `PoolSettings` to `KEYS` (conflict warnings name keys and values)."""

    def text(value: object) -> str:
        if value is None:
            return UNSET
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    values = {
        "scheme": settings.scheme,
        "tls.skip_verify": text(settings.tls_skip_verify),
        "tls.server_name": text(settings.tls_server_name),
        "split": text(settings.split),
        "lb.policy": settings.lb_policy,
        "lb.key": text(settings.lb_key),
        "lb.choose": text(settings.lb_choose),
        "lb.retries": text(settings.lb_retries),
        "lb.try_duration": text(settings.lb_try_duration),
        "lb.try_interval": text(settings.lb_try_interval),
        "health.path": text(settings.active and settings.active.path),
        "health.passive": "on" if settings.passive else "off",
        "timeout.dial": text(settings.timeout_dial),
        "timeout.response_header": text(settings.timeout_response_header),
    }
    if (active := settings.active) is not None:
        status = active.expect_status
        values |= {
            "health.interval": active.interval,
            "health.timeout": active.timeout,
            "health.status": f"{status}xx" if status < 10 else str(status),
            "health.port": text(active.port),
            "health.body": text(active.body),
            "health.passes": str(active.passes),
            "health.fails": str(active.fails),
        }
        values |= {f"health.headers.{name}": value for name, value in active.headers}
    if (passive := settings.passive) is not None:
        values |= {
            "health.passive.fail_duration": passive.fail_duration,
            "health.passive.max_fails": str(passive.max_fails),
            "health.passive.unhealthy_latency": text(passive.unhealthy_latency),
            "health.passive.unhealthy_status": ",".join(
                f"{s}xx" if s < 10 else str(s) for s in passive.unhealthy_status
            )
            or UNSET,
        }
    return values
