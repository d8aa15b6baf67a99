"""Start and clean up test containers and networks on the real engine.

Every container and network carries `io.labelsync.test-id` (a hash of the test's node id) and
`io.labelsync.test-session` (this pytest run), never a `labelsync.*` label: that prefix is the
product's and belongs to each test's own labels. Teardown removes a test's objects; the
session-end sweep removes whatever this run left behind, and never touches another run's.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import random
import re
import socket
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import docker.types
from docker.models.containers import Container

from .images import TestImages
from .waiting import wait_until

TEST_ID_LABEL = "io.labelsync.test-id"
TEST_SESSION_LABEL = "io.labelsync.test-session"
TEST_NODE_LABEL = "io.labelsync.test-node"

SESSION_ID = uuid.uuid4().hex[:12]

DEFAULT_PORTS = {"backend": (8080,), "https": (8443,)}

_NANOSECONDS = 1_000_000_000


def test_id_for(node_id: str) -> str:
    """The value of `io.labelsync.test-id` for the test with this pytest node id."""
    return hashlib.sha256(node_id.encode()).hexdigest()[:16]


def slug(text: str, limit: int = 20) -> str:
    """Lower-case letters, digits and dashes only: safe in container and host names."""
    cleaned = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return cleaned[:limit].strip("-") or "t"


def short_uuid() -> str:
    return uuid.uuid4().hex[:6]


def health_check(
    *,
    interval: float = 0.5,
    timeout: float = 2.0,
    retries: int = 1,
    start_period: float = 0.0,
    test: list[str] | None = None,
) -> dict[str, Any]:
    """A Docker HEALTHCHECK for the backend image, in docker-py's `healthcheck=` form.

    By default the check passes while `/www/health` exists, so
    `ContainerHandle.set_healthy(False)` turns the container `unhealthy` after `retries` checks.
    """
    return {
        "test": test or ["CMD", "test", "-f", "/www/health"],
        "interval": int(interval * _NANOSECONDS),
        "timeout": int(timeout * _NANOSECONDS),
        "retries": retries,
        "start_period": int(start_period * _NANOSECONDS),
    }


@dataclass
class ContainerHandle:
    """A started test container: its id, unique name, and address on its network."""

    client: docker.DockerClient
    id: str
    name: str
    network: str  # the network `ip` is on
    ip: str
    ports: tuple[int, ...]
    networks: dict[str, str] = field(default_factory=dict)  # network -> IPv4

    @property
    def container(self) -> Container:
        """A fresh docker-py model (attrs read now) for kill/stop/pause/exec and the like."""
        return self.client.containers.get(self.id)

    def address(self, port: int | None = None) -> str:
        """`ip:port` on `network`; the first exposed port by default."""
        chosen = port if port is not None else (self.ports[0] if self.ports else 8080)
        return f"{self.ip}:{chosen}"

    def url(self, path: str = "/", port: int | None = None, scheme: str = "http") -> str:
        return f"{scheme}://{self.address(port)}{path}"

    def exec(self, *command: str) -> str:
        """Run a command in the container; fail the test when it exits non-zero."""
        result = self.container.exec_run(list(command))
        output = result.output.decode(errors="replace") if result.output else ""
        if result.exit_code != 0:
            raise AssertionError(f"{command} in {self.name} exited {result.exit_code}: {output}")
        return output

    def set_healthy(self, healthy: bool) -> None:
        """Make the backend's `/health` (and the default HEALTHCHECK) pass or fail."""
        self.exec("touch" if healthy else "rm", *(() if healthy else ("-f",)), "/www/health")

    def health(self) -> str | None:
        """Docker's health status now: starting, healthy, unhealthy, or None without a check."""
        state = self.container.attrs["State"]
        health = state.get("Health")
        return None if health is None else str(health["Status"])

    def wait_health(self, status: str, timeout: float = 30.0) -> None:
        wait_until(
            lambda: self.health() == status,
            timeout=timeout,
            interval=0.1,
            message=f"{self.name} to turn {status}",
        )

    def refresh_networks(self) -> dict[str, str]:
        """Re-read the addresses (after connect/disconnect), updating `networks` and `ip`."""
        self.networks = _addresses(self.container.attrs)
        if self.network in self.networks:
            self.ip = self.networks[self.network]
        return self.networks


def _accepts(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1.0):
            return True
    except OSError:
        return False


def _addresses(attrs: Mapping[str, Any]) -> dict[str, str]:
    networks = attrs.get("NetworkSettings", {}).get("Networks") or {}
    return {name: info["IPAddress"] for name, info in networks.items() if info.get("IPAddress")}


class ContainerFactory:
    """Starts containers for one test and removes them (forcefully) when it ends."""

    def __init__(
        self, client: docker.DockerClient, images: TestImages, node_id: str, test_name: str
    ) -> None:
        self.client = client
        self.images = images
        self.test_id = test_id_for(node_id)
        self.node_id = node_id
        self.name_prefix = f"lst-{slug(test_name, 16)}"
        self.started: list[str] = []
        self.networks: list[str] = []

    def base_labels(self) -> dict[str, str]:
        return {
            TEST_ID_LABEL: self.test_id,
            TEST_SESSION_LABEL: SESSION_ID,
            TEST_NODE_LABEL: self.node_id[-200:],
        }

    def unique_name(self, name: str | None) -> str:
        return f"{name or self.name_prefix}-{short_uuid()}"

    def start(
        self,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        network: str | Iterable[str] | None = None,
        image: str = "backend",
        healthcheck: dict[str, Any] | bool | None = None,
        ports: Iterable[int] | None = None,
        *,
        exact_name: bool = False,
        wait_running: bool = True,
        wait_listening: bool = True,
        **create_options: Any,
    ) -> ContainerHandle:
        """Create and start one container; see `start_backend` in conftest for the arguments."""
        container_name = name if (exact_name and name) else self.unique_name(name)
        exposed = tuple(ports) if ports is not None else DEFAULT_PORTS.get(image, (8080,))
        environment = {"NAME": container_name}
        if image == "backend":
            environment["PORT"] = ",".join(str(p) for p in exposed) or "8080"
        environment.update(env or {})
        if healthcheck is True:
            healthcheck = health_check()
        networks = [network] if isinstance(network, str) else list(network or [])
        primary = networks[0] if networks else "bridge"

        api = self.client.api
        host_config = api.create_host_config(network_mode=primary)
        networking_config = None
        if primary != "host":
            networking_config = api.create_networking_config(
                {primary: api.create_endpoint_config()}
            )
        created = api.create_container(
            self.images.by_kind(image),
            name=container_name,
            labels={**self.base_labels(), **(labels or {})},
            environment=environment,
            ports=list(exposed) or None,
            healthcheck=healthcheck or None,
            host_config=host_config,
            networking_config=networking_config,
            **create_options,
        )
        container_id = str(created["Id"])
        self.started.append(container_id)
        for extra in networks[1:]:
            api.connect_container_to_network(container_id, extra)
        api.start(container_id)

        handle = ContainerHandle(
            client=self.client,
            id=container_id,
            name=container_name,
            network=primary,
            ip="",
            ports=exposed,
        )
        if wait_running:
            wait_until(
                lambda: handle.container.attrs["State"]["Running"],
                timeout=30,
                message=f"{container_name} to run",
            )
        if primary == "host":
            handle.ip = "127.0.0.1"
        else:
            handle.refresh_networks()
            handle.ip = handle.networks.get(primary, "")
        if wait_running and wait_listening and handle.ip and image in DEFAULT_PORTS:
            for port in exposed:

                def accepts(port: int = port) -> bool:
                    return _accepts(handle.ip, port)

                wait_until(
                    accepts,
                    timeout=30,
                    interval=0.05,
                    message=f"{container_name} to listen on {port}",
                )
        return handle

    def create_network(self, name: str | None = None, **options: Any) -> str:
        """Create a bridge network for this test (removed at teardown); returns its name."""
        network_name = self.unique_name(name or f"{self.name_prefix}-net")
        self.client.networks.create(
            network_name, driver="bridge", labels=self.base_labels(), **options
        )
        self.networks.append(network_name)
        return network_name

    def create_small_network(self, prefix: int = 28) -> str:
        """A bridge network on a free random /`prefix` of 10.213.0.0/16 (a /28 holds 13
        containers): Docker hands a freed address to the next container at once."""
        for _ in range(20):
            base = ipaddress.ip_network(f"10.213.{random.randrange(256)}.0/24")
            subnet = random.choice(list(base.subnets(new_prefix=prefix)))
            pool = docker.types.IPAMPool(subnet=str(subnet))
            try:
                return self.create_network(ipam=docker.types.IPAMConfig(pool_configs=[pool]))
            except docker.errors.APIError as exc:
                if "overlap" not in str(exc).lower():
                    raise
        raise RuntimeError("no free subnet in 10.213.0.0/16 for a test network")

    def cleanup(self) -> None:
        for container_id in reversed(self.started):
            _remove_container(self.client, container_id)
        self.started.clear()
        for network_name in reversed(self.networks):
            _remove_network(self.client, network_name)
        self.networks.clear()


def _remove_container(client: docker.DockerClient, container_id: str) -> None:
    try:
        client.api.remove_container(container_id, force=True, v=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        # "removal already in progress" is fine; anything else the sweep retries.
        if "already in progress" not in str(exc):
            raise


def _remove_network(client: docker.DockerClient, network_name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        client.api.remove_network(network_name)


def sweep_session(client: docker.DockerClient, session_id: str = SESSION_ID) -> int:
    """Remove every container and network this pytest run left; returns how many."""
    selector = {"label": f"{TEST_SESSION_LABEL}={session_id}"}
    removed = 0
    for summary in client.api.containers(all=True, filters=selector):
        _remove_container(client, summary["Id"])
        removed += 1
    for network in client.api.networks(filters=selector):
        _remove_network(client, network["Name"])
        removed += 1
    return removed


def sweep_stale(client: docker.DockerClient, older_than: float = 3600.0) -> int:
    """Remove test containers that an interrupted run left, once they are old enough that no
    run still going can own them (a whole run takes well under an hour)."""
    cutoff = time.time() - older_than
    removed = 0
    for summary in client.api.containers(all=True, filters={"label": TEST_ID_LABEL}):
        if float(summary.get("Created") or 0) < cutoff:
            _remove_container(client, summary["Id"])
            removed += 1
    return removed
