"""The Docker edge: running containers as `ContainerInfo`, and the engine's event stream.

Docker's types are converted once, here, into plain records; nothing past this module sees a
docker-py object. Listing is one API call (`/containers/json`), so a snapshot is cheap
enough to take on every change. Events only say *that* something changed: the consumer
re-lists, which keeps missed or reordered events harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import docker
import docker.errors
import docker.tls
import requests
from docker.utils import kwargs_from_env
from loguru import logger

from labelsync.core.defaults import DOCKER_SOCKET
from labelsync.core.endpoints import unix_endpoint, unix_socket_path
from labelsync.core.events import STREAM_DOWN, STREAM_UP, SWARM_CHANGE, DockerEvent, EventKind
from labelsync.core.model import ContainerInfo, PublishedPort
from labelsync.errors import ConfigError, DockerUnavailable
from labelsync.sources.swarm import SwarmMode, SwarmReader, merge_containers

DEFAULT_ENDPOINT = unix_endpoint(DOCKER_SOCKET)
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"

# Container actions that can change membership. Others (exec_*, attach, top, ...) are noise:
# a health-check exec alone emits three of them per interval.
CONTAINER_ACTIONS = frozenset(
    {"start", "unpause", "kill", "stop", "die", "pause", "destroy", "rename"}
)
HEALTH_ACTION_PREFIX = "health_status"
NETWORK_ACTIONS = frozenset({"connect", "disconnect"})
SERVICE_ACTIONS = frozenset({"create", "update", "remove"})

# Any version works for the unversioned /version request that finds the engine's own.
PROBE_API_VERSION = "1.24"

RECONNECT_FIRST_DELAY = 0.1
RECONNECT_MAX_DELAY = 5.0


# -- conversion (pure) -------------------------------------------------------------------------


def _container_name(names: list[str] | None, container_id: str) -> str:
    # Legacy links add aliases like "/web/db"; the container's own name has one slash.
    candidates = [name.lstrip("/") for name in names or []]
    own = [name for name in candidates if "/" not in name]
    if own:
        return own[0]
    return candidates[0] if candidates else container_id[:12]


def _health_from_status(status: str) -> str | None:
    if "(health: starting)" in status:
        return "starting"
    if "(unhealthy)" in status:
        return "unhealthy"
    if "(healthy)" in status:
        return "healthy"
    return None


def _exposed_tcp_ports(ports: list[Mapping[str, Any]] | None) -> tuple[int, ...]:
    # A published port appears once per host address (IPv4 and IPv6): dedupe.
    return tuple(
        sorted(
            {
                int(port["PrivatePort"])
                for port in ports or []
                if port.get("Type", "tcp") == "tcp" and port.get("PrivatePort")
            }
        )
    )


def _published_ports(ports: list[Mapping[str, Any]] | None) -> tuple[PublishedPort, ...]:
    """The TCP ports published on the host, IPv4 bindings before IPv6 ones."""
    published = {
        PublishedPort(int(port["PrivatePort"]), str(port.get("IP") or ""), int(port["PublicPort"]))
        for port in ports or []
        if port.get("Type", "tcp") == "tcp" and port.get("PrivatePort") and port.get("PublicPort")
    }
    return tuple(
        sorted(published, key=lambda p: (p.port, ":" in p.host_ip, p.host_ip, p.host_port))
    )


def _network_addresses(summary: Mapping[str, Any]) -> dict[str, str]:
    networks = (summary.get("NetworkSettings") or {}).get("Networks") or {}
    return {
        name: str(endpoint["IPAddress"])
        for name, endpoint in networks.items()
        if endpoint and endpoint.get("IPAddress")
    }


def container_from_summary(summary: Mapping[str, Any]) -> ContainerInfo:
    """Convert one entry of Docker's `/containers/json` list into a `ContainerInfo`."""
    container_id = str(summary["Id"])
    labels = {str(key): str(value) for key, value in (summary.get("Labels") or {}).items()}
    host_config = summary.get("HostConfig") or {}
    return ContainerInfo(
        id=container_id,
        name=_container_name(summary.get("Names"), container_id),
        created=float(summary.get("Created") or 0),
        labels=labels,
        state=str(summary.get("State") or "running"),
        health=_health_from_status(str(summary.get("Status") or "")),
        networks=_network_addresses(summary),
        exposed_ports=_exposed_tcp_ports(summary.get("Ports")),
        published=_published_ports(summary.get("Ports")),
        compose_project=labels.get(COMPOSE_PROJECT_LABEL),
        compose_service=labels.get(COMPOSE_SERVICE_LABEL),
        host_network=host_config.get("NetworkMode") == "host",
    )


def event_from_message(message: Mapping[str, Any]) -> DockerEvent | None:
    """Convert one decoded `/events` message; None for actions that change no membership."""
    kind = message.get("Type")
    action = str(message.get("Action") or message.get("status") or "")
    actor = message.get("Actor") or {}
    time_ns = int(message.get("timeNano") or 0)
    if kind == "container":
        if action in CONTAINER_ACTIONS or action.startswith(HEALTH_ACTION_PREFIX):
            return DockerEvent(
                EventKind.CONTAINER, action, str(actor.get("ID") or message["id"]), time_ns
            )
        return None
    if kind == "network" and action in NETWORK_ACTIONS:
        container_id = (actor.get("Attributes") or {}).get("container")
        return DockerEvent(
            EventKind.NETWORK, action, str(container_id) if container_id else None, time_ns
        )
    if kind == "service" and action in SERVICE_ACTIONS:
        return DockerEvent(EventKind.SERVICE, action, None, time_ns)
    return None


def describe_failure(exc: BaseException) -> str:
    """A short reason for a failed engine call, from the innermost OS-level cause."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, FileNotFoundError):
            return "no such socket"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, PermissionError):
            return "permission denied"
        if isinstance(current, TimeoutError | requests.exceptions.Timeout):
            return "timed out"
        nested = [arg for arg in current.args if isinstance(arg, BaseException)]
        current = current.__cause__ or current.__context__ or (nested[0] if nested else None)
    return str(exc).strip() or type(exc).__name__


def client_tls(directory: str) -> docker.tls.TLSConfig:
    """TLS for a `tcp://` engine from a `DOCKER_CERT_PATH`-style directory: the engine's
    certificate checked against `ca.pem`, `cert.pem` and `key.pem` shown as the client's.
    ConfigError naming a missing file."""
    files = {name: os.path.join(directory, name) for name in ("ca.pem", "cert.pem", "key.pem")}
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        raise ConfigError(
            f"TLS directory {directory}: no {', '.join(missing)} (it needs ca.pem, cert.pem "
            "and key.pem, as DOCKER_CERT_PATH does)"
        )
    return docker.tls.TLSConfig(
        client_cert=(files["cert.pem"], files["key.pem"]), ca_cert=files["ca.pem"], verify=True
    )


# -- the source --------------------------------------------------------------------------------


class _OpenStream:
    """The events response currently being read, so another thread can close it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: Any = None
        self._closed = False

    def attach(self, stream: Any) -> bool:
        """Remember `stream`; False (and the stream closed) when already told to close."""
        with self._lock:
            if self._closed:
                _close_quietly(stream)
                return False
            self._stream = stream
            return True

    def detach(self) -> None:
        with self._lock:
            self._stream = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            stream, self._stream = self._stream, None
        if stream is not None:
            _close_quietly(stream)


def _close_quietly(closable: Any) -> None:
    # Closing a stream whose socket the engine already dropped raises from docker-py's
    # internals; there is nothing left to release then.
    with contextlib.suppress(Exception):
        closable.close()


class DockerSource:
    """Reads running containers and change events from one Docker engine."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 10.0,
        swarm: SwarmMode = "auto",
        tls: str | None = None,
    ) -> None:
        """`base_url`: `unix:///path`, `tcp://host:port`, `ssh://[user@]host` (through the
        `ssh` command, as the Docker CLI does); None reads `DOCKER_HOST` (and its TLS
        variables), else the default socket. `tls`: a directory with `ca.pem`, `cert.pem`
        and `key.pem` for a `tcp://` engine. Nothing is contacted until first use.
        `swarm`: read Swarm services and tasks too (`auto`: when this node is a manager)."""
        if base_url is None:
            self._client_options: dict[str, Any] = dict(kwargs_from_env())
        else:
            self._client_options = {"base_url": base_url}
            if base_url.startswith("ssh://"):
                self._client_options["use_ssh_client"] = True
            if tls is not None:
                self._client_options["tls"] = client_tls(tls)
        self._endpoint = str(self._client_options.get("base_url") or DEFAULT_ENDPOINT)
        self._client_options["base_url"] = self._endpoint
        self._timeout = timeout
        self._list_client: Any = None
        self._list_lock = threading.Lock()
        self._event_pumps: list[tuple[threading.Thread, threading.Event, _OpenStream]] = []
        self._swarm = SwarmReader(swarm, self._endpoint)

    @property
    def endpoint(self) -> str:
        """The engine address this source uses, for messages."""
        return self._endpoint

    def _check_unix_socket(self, timeout: float) -> None:
        """Fail early, and without leaking, when the engine's unix socket cannot be opened.

        docker-py's unix transport never closes a socket whose connect() failed; the leak
        shows up as a ResourceWarning on every retry while the engine is down.
        """
        path = unix_socket_path(self._endpoint)
        if path is None:
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(timeout)
            probe.connect(path)

    def _connect(self, timeout: float) -> Any:
        """A client speaking the engine's own API version, so old engines work too.

        docker-py's version="auto" asks inside the constructor and leaks the half-built
        client's socket when the engine is down; asking with a probe we close avoids that.
        """
        self._check_unix_socket(timeout)
        probe = self._client(PROBE_API_VERSION, timeout)
        try:
            api_version = str(probe.version(api_version=False)["ApiVersion"])
        finally:
            probe.close()
        return self._client(api_version, timeout)

    def _client(self, version: str, timeout: float) -> Any:
        client = docker.APIClient(version=version, timeout=timeout, **self._client_options)
        if "tls" in self._client_options:
            # The engine's certificate is checked against the `tls=` directory's ca.pem
            # only: with the environment trusted, requests would take REQUESTS_CA_BUNDLE
            # (or CURL_CA_BUNDLE) over it and refuse the engine.
            client.trust_env = False
        return client

    def _unavailable(self, exc: BaseException) -> DockerUnavailable:
        return DockerUnavailable(
            f"cannot reach the Docker engine at {self._endpoint}: {describe_failure(exc)}"
        )

    def image_exposed_ports(self, image: str) -> tuple[int, ...] | None:
        """The TCP ports an image's EXPOSE names; None when this engine does not have the
        image or does not answer (`check compose.yaml` then says it was not inspected)."""
        try:
            client = self._connect(min(self._timeout, 3.0))
        except Exception:
            return None
        try:
            config = client.inspect_image(image).get("Config") or {}
        except Exception:  # not pulled or built here, or the engine went away
            return None
        finally:
            client.close()
        ports = set()
        for spec in config.get("ExposedPorts") or {}:
            number, _, protocol = str(spec).partition("/")
            if number.isdigit() and protocol in ("", "tcp"):
                ports.add(int(number))
        return tuple(sorted(ports))

    def list_containers(self) -> list[ContainerInfo]:
        """Every container, stopped ones included, in one API call.

        Stopped containers keep shaping their pools (a crash must not write Caddy
        config); only serving ones become members. When Swarm is read, its tasks come as
        records too and the local task containers are left out (see `sources.swarm`).

        Raises `DockerUnavailable` naming the endpoint when the engine does not answer.
        """
        with self._list_lock:
            try:
                if self._list_client is None:
                    self._list_client = self._connect(self._timeout)
                    self._swarm.forget()
                summaries = self._list_client.containers(all=True)
                swarm_records = self._swarm.records(self._list_client)
            except (
                docker.errors.DockerException,
                requests.exceptions.RequestException,
                OSError,
            ) as exc:
                # Start afresh next time: the engine may come back on a new socket.
                if self._list_client is not None:
                    _close_quietly(self._list_client)
                    self._list_client = None
                raise self._unavailable(exc) from exc
        containers = [container_from_summary(summary) for summary in summaries]
        if swarm_records is None:
            return containers
        return merge_containers(containers, swarm_records)

    async def snapshot(self) -> list[ContainerInfo]:
        """`list_containers` without blocking the event loop."""
        return await asyncio.to_thread(self.list_containers)

    async def events(self) -> AsyncIterator[DockerEvent]:
        """Change events, forever: `stream-up` once connected (re-list then), container and
        network events, `stream-down` when the stream breaks, `stream-up` again after a
        reconnect (backoff 0.1 s doubling to 5 s). Closing or cancelling the iterator stops
        the reader thread and closes its connection. While Swarm is read, also `service`
        events and `swarm` when a poll saw tasks change anywhere in the cluster."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[DockerEvent] = asyncio.Queue()
        stop = threading.Event()
        open_stream = _OpenStream()

        def emit(event: DockerEvent) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        thread = threading.Thread(
            target=self._pump_events,
            args=(emit, stop, open_stream),
            name="docker-events",
            daemon=True,
        )
        pump = (thread, stop, open_stream)
        self._event_pumps.append(pump)
        thread.start()
        pumps = [pump]
        if self._swarm.enabled:
            poller = threading.Thread(
                target=self._swarm.poll,
                args=(lambda: self._connect(self._timeout), lambda: emit(SWARM_CHANGE), stop),
                name="docker-swarm-poll",
                daemon=True,
            )
            pumps.append((poller, stop, _OpenStream()))
            self._event_pumps.append(pumps[-1])
            poller.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            open_stream.close()
            for started in pumps:
                with contextlib.suppress(ValueError):
                    self._event_pumps.remove(started)

    def _pump_events(
        self, emit: Callable[[DockerEvent], None], stop: threading.Event, open_stream: _OpenStream
    ) -> None:
        """Worker thread: read the event stream, reconnecting until `stop` is set."""
        delay = RECONNECT_FIRST_DELAY
        connected = False
        while not stop.is_set():
            client: Any = None
            try:
                # docker-py reads the stream itself without a timeout: it is quiet for as
                # long as nothing happens.
                client = self._connect(self._timeout)
                kinds = ["container", "network", *(["service"] if self._swarm.enabled else [])]
                stream = client.events(decode=True, filters={"type": kinds})
                if not open_stream.attach(stream):
                    break
                # The request is answered once the engine has subscribed us, so events from
                # here on are delivered: a re-list triggered by stream-up misses nothing.
                connected = True
                delay = RECONNECT_FIRST_DELAY
                self._swarm.forget()  # the engine may have joined or left a Swarm meanwhile
                logger.info("Docker event stream connected at {}", self._endpoint)
                emit(STREAM_UP)
                for message in stream:
                    if stop.is_set():
                        break
                    event = event_from_message(message)
                    if event is not None:
                        emit(event)
                reason = "the engine closed the stream"
            except Exception as exc:  # any failure means: reconnect
                reason = describe_failure(exc)
            finally:
                open_stream.detach()
                if client is not None:
                    _close_quietly(client)
            if stop.is_set():
                break
            if connected:
                connected = False
                logger.warning(
                    "Docker event stream at {} lost ({}); reconnecting", self._endpoint, reason
                )
                emit(STREAM_DOWN)
            else:
                logger.debug("Docker at {} unreachable ({}); retrying", self._endpoint, reason)
            stop.wait(delay)
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def close(self) -> None:
        """Stop event readers and release connections."""
        for thread, stop, open_stream in list(self._event_pumps):
            stop.set()
            open_stream.close()
            thread.join(timeout=2.0)
        self._event_pumps.clear()
        with self._list_lock:
            if self._list_client is not None:
                _close_quietly(self._list_client)
                self._list_client = None


def list_once(docker_host: str | None, *, swarm: SwarmMode) -> list[ContainerInfo]:
    """One listing with a client of its own, closed after (the CLI's one-off reads)."""
    source = DockerSource(docker_host, swarm=swarm)
    try:
        return source.list_containers()
    finally:
        source.close()
