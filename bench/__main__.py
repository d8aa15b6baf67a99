"""`python -m bench [--quick | --full] [--only SCENARIO ...]`: run, print one table, save.

`python -m bench --docs [--check]` runs nothing: it rewrites (or checks) the tables of
docs/performance.md from the newest saved result of each scenario.

Results go to `bench/results/<date>-<commit>.json` (`-quick` before `.json` for quick
runs, then the scenario names for `--only` runs): every figure, raw samples included,
and the machine it ran on. labelsync's own
log lines go to `.test-logs/bench-<date>.log`; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from . import (
    burst,
    busy_pools,
    change_cost,
    cold_start,
    deploy,
    reaction,
    resolver_latency,
    zero_drop,
)
from .machine import REPO, machine
from .report import newest_runs, render_table, rows_for, saved_runs, update_page
from .rig import clear_labelsync_environment, sweep_bench_containers
from .sizes import FULL, QUICK, Sizes

RESULTS = Path(__file__).resolve().parent / "results"
DOCS_PAGE = REPO / "docs" / "performance.md"
LOGS = REPO / ".test-logs"
SCENARIOS = (
    "resolver",
    "reaction",
    "change_cost",
    "burst",
    "cold_start",
    "zero_drop",
    "busy_pools",
    "deploy",
)
NEEDS_DOCKER = {"reaction", "burst", "zero_drop", "deploy"}

_started = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _started:7.1f}s] {message}", file=sys.stderr, flush=True)


def _scenario(name: str, sizes: Sizes) -> Callable[[], Awaitable[dict[str, Any]]]:
    if name == "resolver":
        return lambda: resolver_latency.run(log)
    if name == "busy_pools":
        return lambda: busy_pools.run(sizes.busy_pools, sizes.busy_seconds, log)
    if name == "reaction":
        return lambda: reaction.run(sizes.reaction_containers, log)
    if name == "change_cost":
        return lambda: change_cost.run(sizes.cost_pools, sizes.cost_reps, log)
    if name == "burst":
        return lambda: burst.run(sizes.burst_containers, sizes.burst_reps, log)
    if name == "cold_start":
        return lambda: cold_start.run(sizes.cold_containers, sizes.cold_pools, sizes.cold_reps, log)
    if name == "zero_drop":
        return lambda: zero_drop.run(
            sizes.load_clients, sizes.load_seconds, sizes.rolls, sizes.setting_changes, log
        )
    if name == "deploy":
        return lambda: deploy.run(deploy.RUNS[sizes.name], log)
    raise ValueError(name)


async def _run_one(name: str, sizes: Sizes) -> dict[str, Any]:
    started = time.monotonic()
    log(f"scenario {name} ({sizes.name})")
    try:
        result = await asyncio.wait_for(_scenario(name, sizes)(), sizes.scenario_timeout)
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            for task in asyncio.all_tasks():
                logger.error("still running at the timeout: {}", task)
        logger.opt(exception=exc).error(f"scenario {name} failed")
        log(f"scenario {name} FAILED: {type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
        result = {"error": f"{type(exc).__name__}: {exc}"}
    result["scenario_seconds"] = round(time.monotonic() - started, 1)
    log(f"scenario {name} done in {result['scenario_seconds']} s")
    return result


def _dump_tasks() -> None:
    """SIGUSR1: write every task's stack to stderr (to see where a run hangs)."""
    for task in asyncio.all_tasks():
        task.print_stack(limit=12, file=sys.stderr)


async def _main(sizes: Sizes, names: list[str]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
    # SIGTERM unwinds like Ctrl-C: containers removed, Caddy and children stopped.
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)
    results: dict[str, Any] = {}
    for name in names:
        results[name] = await _run_one(name, sizes)
        if name in NEEDS_DOCKER:
            await asyncio.to_thread(sweep_bench_containers)
    return results


def docs(page: Path, results: Path, *, check: bool) -> int:
    """`--docs [--check]`: the page's generated tables, rewritten (or checked) in place."""
    shown = page.relative_to(REPO) if page.is_relative_to(REPO) else page
    try:
        update = update_page(page.read_text(), newest_runs(saved_runs(results)))
    except (OSError, ValueError) as exc:
        print(f"{shown}: {exc}", file=sys.stderr)
        return 2
    if update.kept:
        print(
            f"{shown}: no saved result holds {', '.join(update.kept)}: "
            "kept as they are (not checked)",
            file=sys.stderr,
        )
    if not update.changed:
        print(f"{shown}: every table is up to date")
        return 0
    changed = ", ".join(update.changed)
    if check:
        print(f"{shown} is out of date ({changed}): run `python -m bench --docs`", file=sys.stderr)
        return 1
    page.write_text(update.text)
    print(f"{shown}: rewrote {changed}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="quick sizes (the default)")
    size.add_argument("--full", action="store_true", help="full sizes")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, help="run only these")
    parser.add_argument(
        "--table", type=Path, metavar="RESULT", help="print the table of a saved result only"
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="rewrite the tables of docs/performance.md from the newest saved result of each "
        "scenario (nothing is run)",
    )
    parser.add_argument(
        "--check", action="store_true", help="with --docs: exit 1 when the page is out of date"
    )
    args = parser.parse_args(argv)
    if args.check and not args.docs:
        parser.error("--check goes with --docs")
    if args.docs:
        return docs(DOCS_PAGE, RESULTS, check=args.check)
    if args.table is not None:
        print(render_table(rows_for(json.loads(args.table.read_text())["results"])))
        return 0
    sizes = FULL if args.full else QUICK
    names = list(args.only or SCENARIOS)

    clear_labelsync_environment()
    stamp = datetime.now(UTC)
    LOGS.mkdir(exist_ok=True)
    log_path = LOGS / f"bench-{stamp:%Y%m%d-%H%M%S}.log"
    logger.remove()
    logger.add(log_path, level="INFO")
    log(f"labelsync benchmarks, {sizes.name} sizes; labelsync's log: {log_path}")
    about = machine()
    if any(name in NEEDS_DOCKER for name in names):
        # Leftovers of an interrupted run would join the bench pools.
        removed = sweep_bench_containers()
        if removed:
            log(f"removed {removed} container(s) left by an earlier bench run")

    try:
        results = asyncio.run(_main(sizes, names))
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted: containers and processes cleaned up, no result written")
        return 130

    rows = rows_for(results)
    table = render_table(rows)
    suffix = "-quick" if sizes.name == "quick" else ""
    if args.only:  # a partial run never replaces a whole one
        suffix += "-" + "+".join(names)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{stamp:%Y-%m-%d}-{about['commit']}{suffix}.json"
    document = {
        "started": stamp.isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - _started, 1),
        "command": " ".join(["python -m bench", *(argv if argv is not None else sys.argv[1:])]),
        "sizes": sizes.as_json(),
        "machine": about,
        "results": results,
        "table": [
            {"scenario": r.scenario, "measure": r.measure, **r.cells, "target": r.target}
            for r in rows
        ],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(
        f"\nlabelsync {about['commit']}{' (modified)' if about['dirty'] else ''} · "
        f"{about['cpu_model']}, {about['cores']} cores, {about['memory_mb']} MB · "
        f"Python {about['python']} · Caddy {about['caddy']} · Docker {about['docker']} · "
        f"{sizes.name} sizes\n"
    )
    print(table)
    print(f"\nall figures: {path.relative_to(REPO)}")
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
