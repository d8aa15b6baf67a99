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

Keeping the last good version is not hiding the failure: a file that cannot be read or
parsed is one ERROR problem about the whole file (`static:<path>`, no route), naming the
path, the reason (tomllib's line and column), that the last good routes are still served
and since when (UTC, the first failed read). It travels with the other problems to the
log, `check`, `status`, the dashboard and `/healthz` (`report.snapshot.stale_sources`
tells it apart), and goes away with the first good read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import re
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from labelsync.core import defaults
from labelsync.core.labels import parse_container
from labelsync.core.model import STATIC_PREFIX, ContainerInfo, Problem, Severity


@dataclass(frozen=True)
class StaticUpstream:
    """One upstream of a route of the file, as the synthetic container builds see."""

    route: str  # the name of its `[routes.<name>]` table
    container: ContainerInfo  # id `static:<file>:<route>:<index>`, `address` its upstream


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
    document: Mapping[str, Any], *, file: str, prefix: str = defaults.LABEL_PREFIX, text: str = ""
) -> tuple[list[ContainerInfo], list[Problem]]:
    """The synthetic containers a parsed static file describes, and its structural problems.

    `text` (the file's source) only helps to name the line of a problem.
    """
    upstreams, problems = static_upstreams(document, file=file, prefix=prefix, text=text)
    return [u.container for u in upstreams], [p for found in problems.values() for p in found]


def static_upstreams(
    document: Mapping[str, Any], *, file: str, prefix: str = defaults.LABEL_PREFIX, text: str = ""
) -> tuple[list[StaticUpstream], dict[str, list[Problem]]]:
    """`static_containers`, with each container's route, and the structural problems by
    the route they are about ("" for the whole file)."""
    upstreams: list[StaticUpstream] = []
    problems: dict[str, list[Problem]] = {}
    routes = document.get("routes", {})
    if not isinstance(routes, Mapping):
        where = f"{STATIC_PREFIX}{file}"
        problems[""] = [Problem(Severity.ERROR, where, "routes", None, "must be a table")]
        return upstreams, problems
    for name, table in sorted(routes.items()):
        where = f"{STATIC_PREFIX}{file}[{name}]"
        line = _key_line(text, name, "")
        if not isinstance(table, Mapping):
            problems[name] = [
                Problem(Severity.ERROR, where, "", None, "must be a table of keys", line)
            ]
            continue
        flat = _flatten(table)
        addresses = flat.pop("upstreams", None)
        if isinstance(addresses, str):
            addresses = [addresses]
        if not isinstance(addresses, list) or not addresses:
            problems[name] = [
                Problem(
                    Severity.ERROR,
                    where,
                    "upstreams",
                    None,
                    'needs a list of "host:port" addresses',
                    _key_line(text, name, "upstreams") or line,
                )
            ]
            continue
        labels = {f"{prefix}.{key}": _label_value(value) for key, value in flat.items()}
        for index, address in enumerate(addresses):
            container = ContainerInfo(
                id=f"{STATIC_PREFIX}{file}:{name}:{index}",
                name=f"{where}/{address}",
                created=float(index),
                labels={**labels, f"{prefix}.address": str(address)},
            )
            upstreams.append(StaticUpstream(name, container))
    return upstreams, problems


def route_problems(
    upstreams: Sequence[StaticUpstream],
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
    for upstream in upstreams:
        name = upstream.route
        _, problems = parse_container(upstream.container, prefix=prefix)
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


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _read_error(exc: Exception) -> tuple[str, int | None]:
    """Why the file could not be used, in a few words, and the line tomllib names."""
    if isinstance(exc, tomllib.TOMLDecodeError):
        found = re.search(r"at line (\d+)", str(exc))
        return f"not valid TOML: {exc}", int(found.group(1)) if found else None
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text: {exc}", None
    if isinstance(exc, OSError):
        return f"cannot be read: {exc.strerror or exc}", None
    return str(exc), None


@dataclass
class StaticFile:
    """The last good contents of the static file; `reload()` re-reads it.

    `one_shot`: read once by the CLI (`check`, `render`), which has no last good version
    of its own: a file it cannot use is said to be kept by a running daemon instead.
    """

    path: Path
    prefix: str = defaults.LABEL_PREFIX
    containers: tuple[ContainerInfo, ...] = ()
    problems: tuple[Problem, ...] = ()
    one_shot: bool = False
    clock: Callable[[], datetime.datetime] = _utc_now
    _upstreams: tuple[StaticUpstream, ...] = ()  # `containers`, each with its route
    _label_problems: frozenset[Problem] = frozenset()
    _route_problems: tuple[Problem, ...] = ()  # those of the version in use
    _good: bool = False  # a version was read and is in use
    _failing_since: datetime.datetime | None = None  # the first failed read, while failing

    def reload(self) -> bool:
        """Re-read the file; True when what it yields changed. Errors keep the last good:
        of the whole file for one that cannot be read or parsed, of a route for a route
        with a bad value (none, when it never had a good one)."""
        try:
            text = self.path.read_text()
            document = tomllib.loads(text)
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            return self._unusable(*_read_error(exc))
        file = self.path.name
        upstreams, structural = static_upstreams(document, file=file, prefix=self.prefix, text=text)
        raw: set[Problem] = set()
        by_route = route_problems(upstreams, file=file, prefix=self.prefix, text=text, raw=raw)
        for name, found in structural.items():  # no upstreams, not a table
            for problem in found:
                by_route.setdefault(name, []).insert(0, problem)
        whole = [p for p in by_route.get("", []) if p.severity is Severity.ERROR]
        if whole:  # `routes` itself is unusable
            reason = "; ".join(f"{p.key}: {p.message}" if p.key else p.message for p in whole)
            return self._unusable(reason, whole[0].line)
        previous: dict[str, list[StaticUpstream]] = {}
        for upstream in self._upstreams:
            previous.setdefault(upstream.route, []).append(upstream)
        problems = []
        kept: list[StaticUpstream] = []
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
                upstreams = [u for u in upstreams if u.route != name]
                kept.extend(fallback)
            problems.extend(found)
        self._upstreams = tuple(sorted([*upstreams, *kept], key=lambda u: u.container.id))
        fresh = (tuple(u.container for u in self._upstreams), tuple(problems))
        changed = fresh != (self.containers, self.problems)
        self.containers, self.problems = fresh
        self._route_problems = self.problems
        self._label_problems = frozenset(raw)
        self._good, self._failing_since = True, None
        return changed

    @property
    def route_names(self) -> frozenset[str]:
        """The routes whose upstreams are in use (last good versions included)."""
        return frozenset(upstream.route for upstream in self._upstreams)

    def _unusable(self, reason: str, line: int | None = None) -> bool:
        """The file cannot be used: keep what it yielded, and say so (one ERROR about the
        whole file, first); True when that changed what it yields."""
        if self._failing_since is None:
            self._failing_since = self.clock()
        since = self._failing_since.strftime("%Y-%m-%dT%H:%M:%SZ")
        if self.one_shot:
            kept = "not applied: a running labelsync keeps serving the last good version it read"
        elif self._good:
            kept = f"stale since {since}: keeping the last good version (its routes still serve)"
        else:
            kept = f"not applied since {since}: none of its routes serve until it is fixed"
        problem = Problem(
            Severity.ERROR, f"{STATIC_PREFIX}{self.path}", "", None, f"{reason}; {kept}", line
        )
        fresh = (problem, *self._route_problems)
        changed = fresh != self.problems
        self.problems = fresh
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
