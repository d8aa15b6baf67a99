"""Compose files -> container records, so `labelsync check compose.yaml` sees what Docker would.

Only what the label parser needs is read: labels (service and `deploy`), exposed and
published container ports, networks, host network mode. Addresses are placeholders
from the documentation range: they are validated, never contacted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import yaml

from labelsync.core.model import ContainerInfo
from labelsync.errors import ConfigError

PLACEHOLDER_IP = "192.0.2.1"


def _labels(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): "" if v is None else str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        pairs = (str(item).split("=", 1) for item in raw)
        return {p[0]: p[1] if len(p) > 1 else "" for p in pairs}
    return {}


def _container_port(entry: Any) -> int | None:
    if isinstance(entry, Mapping):
        target = entry.get("target")
        return int(target) if target is not None else None
    text = str(entry).split("/", 1)[0]
    last = text.rsplit(":", 1)[-1]
    first = last.split("-", 1)[0]
    return int(first) if first.isdigit() else None


def _ports(service: Mapping[str, Any]) -> tuple[int, ...]:
    found = {_container_port(e) for e in [*service.get("expose", []), *service.get("ports", [])]}
    return tuple(sorted(p for p in found if p is not None))


def _networks(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("networks") or ["default"]
    names = list(raw) if isinstance(raw, Mapping | list) else ["default"]
    return {str(name): PLACEHOLDER_IP for name in names}


ImagePorts = Callable[[str], "tuple[int, ...] | None"]


def compose_containers(
    path: Path, *, image_ports: ImagePorts | None = None, uninspected: dict[str, str] | None = None
) -> list[ContainerInfo]:
    """One record per service of a compose file (ConfigError when it is not one).

    A service whose file names no port gets its image's EXPOSE ports from `image_ports`
    (the local Docker engine, for `check`); one whose image could not be looked up is
    recorded in `uninspected` (name -> image), so that "exposes no port" can say so.
    """
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    services = document.get("services") if isinstance(document, Mapping) else None
    if not isinstance(services, Mapping):
        raise ConfigError(f"{path}: no `services:` mapping; is this a compose file?")
    containers = []
    for index, (service_name, service) in enumerate(services.items()):
        service = service if isinstance(service, Mapping) else {}
        deploy = service.get("deploy")
        deploy = deploy if isinstance(deploy, Mapping) else {}
        host = service.get("network_mode") == "host"
        ports = _ports(service)
        name = str(service.get("container_name") or service_name)
        image = service.get("image")
        if not ports and isinstance(image, str) and image:
            found = image_ports(image) if image_ports is not None else None
            if found is None and uninspected is not None:
                uninspected[name] = image
            ports = found or ()
        containers.append(
            ContainerInfo(
                id=f"compose:{path}:{service_name}",
                name=name,
                created=float(index),
                labels={**_labels(deploy.get("labels")), **_labels(service.get("labels"))},
                networks={} if host else _networks(service),
                exposed_ports=ports,
                compose_service=str(service_name),
                host_network=host,
            )
        )
    return containers
