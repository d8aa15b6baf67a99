"""Swarm services and their tasks, as `ContainerInfo` records.

In Swarm the labels live on the *service* (compose `deploy.labels`) and its replicas are
*tasks*, which may run on any node; the local engine's container list sees only this
node's tasks, and without the service's labels. So on a manager labelsync lists services
and tasks instead: every task of a service becomes one record carrying the service's
labels (over the task's container labels), and those records pool like the containers of
a compose `--scale`.

- A record's id is the task's container id once the task has one, so the local engine's
  `kill`/`die` events withdraw a local task at once, like any container; else the task id.
- Only a task whose state is `running` is a member. Tasks still starting, and services
  with no task to run (scaled to 0), are listed as not running: they keep their pool's
  shape, as a stopped container does, so scaling to 0 and back writes no Caddy config.
- Addresses come from the task's network attachments; the routing-mesh `ingress` network
  is left out (it serves published ports, not direct dials), so a service published on a
  port and attached to one network needs no `network` label.
- The service's target ports (`--publish`, compose `ports:`) are its exposed ports.
- The local engine's own task containers are dropped from the container list while Swarm
  is read: their tasks are the members, and counting both would double them.

The engine emits `service` events but no task events for other nodes, so `SwarmReader.poll`
compares a cheap fingerprint of tasks and services every `POLL_INTERVAL` and reports a
change only when it differs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import docker.errors
from loguru import logger

from labelsync.core.model import ContainerInfo
from labelsync.errors import DockerUnavailable

SwarmMode = Literal["auto", "on", "off"]

SERVICE_ID_LABEL = "com.docker.swarm.service.id"
STACK_NAMESPACE_LABEL = "com.docker.stack.namespace"
RUNNING_TASKS = {"desired-state": "running"}

POLL_INTERVAL = 2.0
# How long "is this node a manager" is believed before `docker info` is asked again, so
# joining or leaving a Swarm is noticed without a reconnect.
RECHECK_SECONDS = 60.0
NOT_A_MANAGER_STATUS = 503

Fingerprint = tuple[tuple[str, ...], ...]


# -- conversion (pure) -------------------------------------------------------------------------


def parse_timestamp(text: str | None) -> float:
    """Seconds since the epoch of a Swarm RFC 3339 time (nanoseconds are cut); 0 when absent."""
    if not text:
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def manager_state(info: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether `docker info` describes an active Swarm manager, and the node's state in words."""
    swarm = info.get("Swarm") or {}
    state = str(swarm.get("LocalNodeState") or "inactive")
    if state != "active":
        return False, f"its Swarm state is {state!r}"
    if not swarm.get("ControlAvailable"):
        return False, "it is a Swarm worker, not a manager"
    return True, "it is an active Swarm manager"


def service_target_ports(service: Mapping[str, Any]) -> tuple[int, ...]:
    """TCP target ports the service publishes (what the tasks listen on), sorted."""
    endpoint = service.get("Endpoint") or {}
    spec = service.get("Spec") or {}
    ports = (
        endpoint.get("Ports")
        or (endpoint.get("Spec") or {}).get("Ports")
        or (spec.get("EndpointSpec") or {}).get("Ports")
        or []
    )
    return tuple(
        sorted(
            {
                int(port["TargetPort"])
                for port in ports
                if port.get("Protocol", "tcp") == "tcp" and port.get("TargetPort")
            }
        )
    )


def task_networks(task: Mapping[str, Any]) -> dict[str, str]:
    """Network name -> IPv4 of a task, the routing mesh (`ingress`) left out."""
    addresses: dict[str, str] = {}
    for attachment in task.get("NetworksAttachments") or []:
        spec = (attachment.get("Network") or {}).get("Spec") or {}
        name = spec.get("Name")
        if not name or spec.get("Ingress"):
            continue
        ipv4 = [a.split("/", 1)[0] for a in attachment.get("Addresses") or [] if "." in a]
        if ipv4:
            addresses[str(name)] = ipv4[0]
    return addresses


def task_name(service_name: str, task: Mapping[str, Any]) -> str:
    """`<service>.<slot>` for replicated services, `<service>.<node id>` for global ones."""
    slot = task.get("Slot")
    if slot:
        return f"{service_name}.{slot}"
    return f"{service_name}.{task.get('NodeID') or str(task['ID'])[:12]}"


def task_state(task: Mapping[str, Any]) -> str:
    """The task's state; a running task that Swarm is stopping counts as leaving."""
    desired = str(task.get("DesiredState") or "running")
    state = str((task.get("Status") or {}).get("State") or "new")
    if desired != "running" and state == "running":
        return desired
    return state


def _stack(labels: Mapping[str, str], service_name: str) -> tuple[str | None, str | None]:
    namespace = labels.get(STACK_NAMESPACE_LABEL)
    if not namespace:
        return None, None
    return namespace, service_name.removeprefix(f"{namespace}_")


def _service_labels(service: Mapping[str, Any]) -> dict[str, str]:
    labels = (service.get("Spec") or {}).get("Labels") or {}
    return {str(key): str(value) for key, value in labels.items()}


def record_from_task(service: Mapping[str, Any], task: Mapping[str, Any]) -> ContainerInfo:
    """One task of `service` as a record: the service's labels over the container's own."""
    spec = service.get("Spec") or {}
    service_name = str(spec.get("Name") or service["ID"])
    container_spec = (task.get("Spec") or {}).get("ContainerSpec") or {}
    labels = {str(k): str(v) for k, v in (container_spec.get("Labels") or {}).items()}
    labels.update(_service_labels(service))
    container_status = (task.get("Status") or {}).get("ContainerStatus") or {}
    project, compose_service = _stack(labels, service_name)
    return ContainerInfo(
        id=str(container_status.get("ContainerID") or task["ID"]),
        name=task_name(service_name, task),
        created=parse_timestamp(task.get("CreatedAt")),
        labels=labels,
        state=task_state(task),
        health=None,  # a task reaches `running` only once its HEALTHCHECK passes
        networks=task_networks(task),
        exposed_ports=service_target_ports(service),
        compose_project=project,
        compose_service=compose_service,
    )


def record_for_idle_service(service: Mapping[str, Any]) -> ContainerInfo:
    """A service with no task to run: not running, so it shapes its pool and has no member."""
    spec = service.get("Spec") or {}
    service_name = str(spec.get("Name") or service["ID"])
    labels = _service_labels(service)
    project, compose_service = _stack(labels, service_name)
    return ContainerInfo(
        id=str(service["ID"]),
        name=service_name,
        created=parse_timestamp(service.get("CreatedAt")),
        labels=labels,
        state="shutdown",
        exposed_ports=service_target_ports(service),
        compose_project=project,
        compose_service=compose_service,
    )


def swarm_records(
    services: Sequence[Mapping[str, Any]], tasks: Iterable[Mapping[str, Any]]
) -> list[ContainerInfo]:
    """Records of every task meant to run (`desired-state=running`), and one per idle service."""
    by_id = {str(service["ID"]): service for service in services}
    records: list[ContainerInfo] = []
    busy: set[str] = set()
    for task in tasks:
        service = by_id.get(str(task.get("ServiceID")))
        if service is None:  # removed between the two calls
            continue
        busy.add(str(service["ID"]))
        records.append(record_from_task(service, task))
    records.extend(record_for_idle_service(s) for s in services if str(s["ID"]) not in busy)
    return records


def is_task_container(container: ContainerInfo) -> bool:
    """Whether a container of the local list is a Swarm task's container."""
    return SERVICE_ID_LABEL in container.labels


def merge_containers(
    containers: Iterable[ContainerInfo], records: Sequence[ContainerInfo]
) -> list[ContainerInfo]:
    """The local containers that are no Swarm task, then the Swarm records."""
    return [c for c in containers if not is_task_container(c)] + list(records)


def fingerprint(
    services: Iterable[Mapping[str, Any]], tasks: Iterable[Mapping[str, Any]]
) -> Fingerprint:
    """What a re-list would differ by: service versions, task states and addresses."""
    service_part = sorted(
        (str(s["ID"]), str((s.get("Version") or {}).get("Index") or "")) for s in services
    )
    task_part = sorted(
        (
            str(t["ID"]),
            task_state(t),
            str(((t.get("Status") or {}).get("ContainerStatus") or {}).get("ContainerID") or ""),
            ",".join(f"{name}={ip}" for name, ip in sorted(task_networks(t).items())),
        )
        for t in tasks
    )
    return (*service_part, *task_part)


# -- reading from the engine -------------------------------------------------------------------


class SwarmReader:
    """Decides whether to read Swarm (`auto`, `on`, `off`) and reads it with a given client.

    `auto` reads Swarm when `docker info` says this node is an active manager; the answer
    is kept until `forget()` (on reconnect) or for `RECHECK_SECONDS`. `on` insists: a node
    that is no manager is an error naming why, raised as `DockerUnavailable` so the loop
    changes nothing in Caddy meanwhile.
    """

    def __init__(self, mode: SwarmMode, endpoint: str) -> None:
        self.mode = mode
        self._endpoint = endpoint
        self._lock = threading.Lock()
        self._active: bool | None = None
        self._why = ""
        self._checked_at = 0.0

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def forget(self) -> None:
        """Ask `docker info` again next time (the engine may have changed)."""
        with self._lock:
            self._checked_at = float("-inf")

    def _not_a_manager(self, why: str) -> DockerUnavailable:
        return DockerUnavailable(
            f"LABELSYNC_SWARM=on, but the Docker engine at {self._endpoint} cannot list Swarm "
            f"services: {why}; run labelsync against a manager, or set LABELSYNC_SWARM=auto"
        )

    def _remember(self, active: bool, why: str) -> None:
        with self._lock:
            previous, self._active = self._active, active
            self._why = why
            self._checked_at = time.monotonic()
        if previous is None or previous == active:
            if previous is None and active:
                logger.info(f"Docker at {self._endpoint}: {why}; reading services and tasks")
            return
        logger.info(
            f"Docker at {self._endpoint}: {why}; "
            + ("reading services and tasks" if active else "reading containers only")
        )

    def is_active(self, client: Any) -> bool:
        """Whether to read Swarm through `client` now; raises in `on` mode when it cannot."""
        if self.mode == "off":
            return False
        with self._lock:
            active, why = self._active, self._why
            fresh = time.monotonic() - self._checked_at < RECHECK_SECONDS
        if active is None or not fresh:
            active, why = manager_state(client.info())
            self._remember(active, why)
        if not active and self.mode == "on":
            raise self._not_a_manager(why)
        return active

    def records(self, client: Any) -> list[ContainerInfo] | None:
        """Every service's task records, or None when Swarm is not read."""
        if not self.is_active(client):
            return None
        try:
            services = client.services()
            tasks = client.tasks(filters=RUNNING_TASKS)
        except docker.errors.APIError as exc:
            # Demoted or left the Swarm since the last check.
            if exc.status_code != NOT_A_MANAGER_STATUS:
                raise
            self._remember(False, "it is no longer a Swarm manager")
            if self.mode == "on":
                raise self._not_a_manager("it is no longer a Swarm manager") from exc
            return None
        return swarm_records(services, tasks)

    def poll(
        self,
        connect: Callable[[], Any],
        on_change: Callable[[], None],
        stop: threading.Event,
        interval: float = POLL_INTERVAL,
    ) -> None:
        """Worker thread: call `on_change` when tasks or services differ from the last look.

        The first successful look always counts as a change, so the consumer's re-list
        comes after it and misses nothing. Failures are left to the event stream to
        report; this just tries again next time.
        """
        client: Any = None
        last: Fingerprint | None = None
        while not stop.is_set():
            try:
                if client is None:
                    client = connect()
                if self.is_active(client):
                    current = fingerprint(client.services(), client.tasks(filters=RUNNING_TASKS))
                    if current != last:
                        last = current
                        on_change()
                else:
                    last = None
            except DockerUnavailable:  # `on` on a node that is no manager: the list says so
                last = None
            except Exception as exc:  # any failure: reconnect on the next tick
                logger.debug(f"Swarm poll at {self._endpoint} failed: {exc}")
                _close(client)
                client, last = None, None
            stop.wait(interval)
        _close(client)


def _close(client: Any) -> None:
    if client is None:
        return
    try:
        client.close()
    except Exception as exc:  # a client whose socket the engine dropped: nothing to release
        logger.debug(f"closing a Docker client failed: {exc}")
