"""Compose files -> container records, so `labelsync check compose.yaml` sees what Docker would.

Only what the label parser needs is read: labels (service and `deploy`), exposed and
published container ports, networks, host network mode. Addresses are placeholders
from the documentation range: they are validated, never contacted.
"""

from __future__ import annotations

from collections.abc import Mapping
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


def compose_containers(path: Path) -> list[ContainerInfo]:
    """One record per service of a compose file (ConfigError when it is not one)."""
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    services = document.get("services") if isinstance(document, Mapping) else None
    if not isinstance(services, Mapping):
        raise ConfigError(f"{path}: no `services:` mapping; is this a compose file?")
    containers = []
    for index, (name, service) in enumerate(services.items()):
        service = service if isinstance(service, Mapping) else {}
        deploy = service.get("deploy")
        deploy = deploy if isinstance(deploy, Mapping) else {}
        host = service.get("network_mode") == "host"
        containers.append(
            ContainerInfo(
                id=f"compose:{path}:{name}",
                name=str(service.get("container_name") or name),
                created=float(index),
                labels={**_labels(deploy.get("labels")), **_labels(service.get("labels"))},
                networks={} if host else _networks(service),
                exposed_ports=_ports(service),
                compose_service=str(name),
                host_network=host,
            )
        )
    return containers
