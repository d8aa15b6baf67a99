"""Routes for backends that are not containers, from a TOML file that is watched.

    [routes.ollama]
    host = "ollama.example.com"
    upstreams = ["192.168.1.5:11434", "192.168.1.6:11434"]
    lb.policy = "first"
    health.path = "/api/tags"

Every key is a label key without the prefix (TOML dotted keys and sub-tables both
work). Each upstream becomes one synthetic container whose `address` label is that
upstream, so static routes go through exactly the same parser and pool builder as
labels, and mix with containers serving the same host. Upstreams are ordered as
listed (that is the `first` order unless `order` says otherwise).

A file that cannot be read or parsed keeps the last good version in service.
"""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from labelsync.core.model import ContainerInfo, Problem, Severity

STATIC_ID_PREFIX = "static:"


def _flatten(table: Mapping[str, Any], parent: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{parent}.{key}" if parent else key
        if isinstance(value, Mapping):
            flat.update(_flatten(value, full))
        else:
            flat[full] = value
    return flat


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def static_containers(
    document: Mapping[str, Any], *, file: str, prefix: str = "labelsync"
) -> tuple[list[ContainerInfo], list[Problem]]:
    """The synthetic containers a parsed static file describes, and its structural problems."""
    containers: list[ContainerInfo] = []
    problems: list[Problem] = []
    routes = document.get("routes", {})
    if not isinstance(routes, Mapping):
        where = f"static:{file}"
        problems.append(Problem(Severity.ERROR, where, "routes", None, "must be a table"))
        return containers, problems
    for name, table in sorted(routes.items()):
        where = f"static:{file}[{name}]"
        if not isinstance(table, Mapping):
            problems.append(Problem(Severity.ERROR, where, "", None, "must be a table of keys"))
            continue
        flat = _flatten(table)
        upstreams = flat.pop("upstreams", None)
        if isinstance(upstreams, str):
            upstreams = [upstreams]
        if not isinstance(upstreams, list) or not upstreams:
            problems.append(
                Problem(
                    Severity.ERROR,
                    where,
                    "upstreams",
                    None,
                    'needs a list of "host:port" addresses',
                )
            )
            continue
        labels = {f"{prefix}.{key}": _label_value(value) for key, value in flat.items()}
        for index, upstream in enumerate(upstreams):
            containers.append(
                ContainerInfo(
                    id=f"{STATIC_ID_PREFIX}{file}:{name}:{index}",
                    name=f"{where}/{upstream}",
                    created=float(index),
                    labels={**labels, f"{prefix}.address": str(upstream)},
                )
            )
    return containers, problems


@dataclass
class StaticFile:
    """The last good contents of the static file; `reload()` re-reads it."""

    path: Path
    prefix: str = "labelsync"
    containers: tuple[ContainerInfo, ...] = ()
    problems: tuple[Problem, ...] = ()

    def reload(self) -> bool:
        """Re-read the file; True when what it yields changed. Errors keep the last good."""
        try:
            document = tomllib.loads(self.path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            logger.bind(file=str(self.path)).error(
                f"static file {self.path}: {exc}; keeping the last good version"
            )
            return False
        containers, problems = static_containers(document, file=self.path.name, prefix=self.prefix)
        changed = (tuple(containers), tuple(problems)) != (self.containers, self.problems)
        self.containers, self.problems = tuple(containers), tuple(problems)
        return changed

    async def changes(self) -> AsyncIterator[None]:
        """Yield after each change on disk that altered what the file yields.

        Both the file's own directory and its symlink target's are watched, and the
        target is resolved again after every change: a Kubernetes ConfigMap volume
        switches a `..data` symlink next to the file and deletes the old target's
        directory, so watching only where the file first resolved to misses every
        update after the first.
        """
        from watchfiles import awatch

        link = self.path.absolute()
        while True:
            target = self.path.resolve()
            directories = {link.parent, target.parent}
            try:
                # Not recursive: a file in /etc must not watch all of /etc, and a target
                # directory inside the file's own would be watched twice (events got lost).
                async for batch in awatch(*directories, debounce=50, step=20, recursive=False):
                    now = self.path.resolve()
                    touched = {Path(p) for _, p in batch}
                    relevant = now != target or link in touched or target in touched
                    if relevant and self.reload():
                        yield None
                    if now != target:
                        break  # the file resolves elsewhere now: watch there
            except FileNotFoundError:
                await asyncio.sleep(1.0)
