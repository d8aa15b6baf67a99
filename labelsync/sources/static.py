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

One rule for every problem, the one that loses nothing: a file that cannot be read or
parsed keeps the last good version of the whole file, and a route with a bad value keeps
its own last good version (other routes take their new contents). Problems are reported
once per route, not once per upstream, in the file's own terms: the file, the route's
table, the key as written there (no label prefix) and its line when it can be found.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tomllib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loguru import logger

from labelsync.core.labels import parse_container
from labelsync.core.model import STATIC_PREFIX, ContainerInfo, Problem, Severity

STATIC_ID_PREFIX = STATIC_PREFIX


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
    document: Mapping[str, Any], *, file: str, prefix: str = "labelsync", text: str = ""
) -> tuple[list[ContainerInfo], list[Problem]]:
    """The synthetic containers a parsed static file describes, and its structural problems.

    `text` (the file's source) only helps to name the line of a problem.
    """
    containers: list[ContainerInfo] = []
    problems: list[Problem] = []
    routes = document.get("routes", {})
    if not isinstance(routes, Mapping):
        where = f"{STATIC_PREFIX}{file}"
        problems.append(Problem(Severity.ERROR, where, "routes", None, "must be a table"))
        return containers, problems
    for name, table in sorted(routes.items()):
        where = f"{STATIC_PREFIX}{file}[{name}]"
        line = _key_line(text, name, "")
        if not isinstance(table, Mapping):
            problems.append(
                Problem(Severity.ERROR, where, "", None, "must be a table of keys", line)
            )
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
                    _key_line(text, name, "upstreams") or line,
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


def route_of(container: ContainerInfo) -> str:
    """The route name of a synthetic container (`static:<file>:<route>:<index>`)."""
    return container.id.removeprefix(STATIC_ID_PREFIX).rsplit(":", 1)[0].split(":", 1)[1]


def route_problems(
    containers: list[ContainerInfo],
    *,
    file: str,
    prefix: str,
    text: str = "",
    raw: set[Problem] | None = None,
) -> dict[str, list[Problem]]:
    """The label problems of each route, once per route, in the file's own terms.

    `raw` collects the problems as the label parser states them (once per upstream),
    which `StaticFile.merge_problems` takes out of a build's problems.
    """
    found: dict[str, dict[Problem, None]] = {}
    base = prefix + "."
    for container in containers:
        name = route_of(container)
        _, problems = parse_container(container, prefix=prefix)
        if raw is not None:
            raw.update(problems)
        for problem in problems:
            key = problem.key.removeprefix(base)
            if key == "address":  # an upstream is the `address` label of its container
                key = "upstreams"
            message = problem.message.replace(f"'{base}", "'").replace(base, "")
            in_file = Problem(
                problem.severity,
                f"{STATIC_PREFIX}{file}[{name}]",
                key,
                problem.value,
                message,
                _key_line(text, name, key) or _key_line(text, name, ""),
            )
            found.setdefault(name, {}).setdefault(in_file)
    return {name: list(problems) for name, problems in found.items()}


def _route_named(problem: Problem) -> str:
    """The route a problem is about ("" for the whole file)."""
    return problem.container.partition("[")[2].removesuffix("]")


def _key_line(text: str, route: str, key: str) -> int | None:
    """The 1-based line of `key` in the table of `route` (`""`: the table's header)."""
    table = ""
    wanted = f"routes.{route}.{key}" if key else f"routes.{route}"
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if line.startswith("["):
            table = _dotted(line.strip("[] "))
            if not key and table == wanted:
                return number
            continue
        if "=" not in line:
            continue
        lhs = _dotted(line.split("=", 1)[0])
        full = f"{table}.{lhs}" if table else lhs
        if key and (full == wanted or full.startswith(wanted + ".")):
            return number
        if not key and full.startswith(wanted + "."):
            return number
    return None


def _dotted(text: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in text.split("."))


@dataclass
class StaticFile:
    """The last good contents of the static file; `reload()` re-reads it."""

    path: Path
    prefix: str = "labelsync"
    containers: tuple[ContainerInfo, ...] = ()
    problems: tuple[Problem, ...] = ()
    _label_problems: frozenset[Problem] = frozenset()

    def reload(self) -> bool:
        """Re-read the file; True when what it yields changed. Errors keep the last good:
        of the whole file for one that cannot be read or parsed, of a route for a route
        with a bad value (none, when it never had a good one)."""
        try:
            text = self.path.read_text()
            document = tomllib.loads(text)
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            logger.bind(file=str(self.path)).error(
                f"static file {self.path}: {exc}; keeping the last good version"
            )
            return False
        file = self.path.name
        containers, problems = static_containers(document, file=file, prefix=self.prefix, text=text)
        raw: set[Problem] = set()
        by_route = route_problems(containers, file=file, prefix=self.prefix, text=text, raw=raw)
        for problem in problems:  # structural: no upstreams, not a table
            by_route.setdefault(_route_named(problem), []).insert(0, problem)
        previous: dict[str, list[ContainerInfo]] = {}
        for container in self.containers:
            previous.setdefault(route_of(container), []).append(container)
        problems = []
        kept: list[ContainerInfo] = []
        if any(p.severity is Severity.ERROR for p in by_route.get("", [])):
            containers, kept = [], list(self.containers)  # `routes` itself is unusable
        for name, found in sorted(by_route.items()):
            if name and any(p.severity is Severity.ERROR for p in found):
                fallback = previous.get(name, [])
                why = (
                    "; keeping the last good version of this route"
                    if fallback
                    else "; the route is not served until this is fixed"
                )
                found = [
                    dataclasses.replace(p, message=p.message + why)
                    if p.severity is Severity.ERROR
                    else p
                    for p in found
                ]
                containers = [c for c in containers if route_of(c) != name]
                kept.extend(fallback)
            problems.extend(found)
        fresh = (tuple(sorted([*containers, *kept], key=lambda c: c.id)), tuple(problems))
        changed = fresh != (self.containers, self.problems)
        self.containers, self.problems = fresh
        self._label_problems = frozenset(raw)
        return changed

    def merge_problems(self, problems: tuple[Problem, ...]) -> tuple[Problem, ...]:
        """The file's problems (once per route, in its terms), then a build's others.

        The build parses the route's containers again; what it says about their labels
        is already among the file's problems.
        """
        others = tuple(p for p in problems if p not in self._label_problems)
        return self.problems + others

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
