"""The one table `make bench` prints (a Markdown table), and the tables of docs/performance.md.

Each row is one measure; the columns are labelsync's two upstream modes and the
whole-config baseline. Where a target applies to a cell, the cell ends in ✓ or ✗.

docs/performance.md holds one table per scenario between `<!-- bench:NAME begin -->` and
`<!-- bench:NAME end -->`, generated from the newest `bench/results/*.json` that holds that
scenario (`python -m bench --docs`; `--docs --check` says whether the page is up to date).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

COLUMNS = ("dynamic", "static", "whole-config")
OK, MISS = "✓", "✗"


@dataclass
class Row:
    scenario: str
    measure: str
    cells: dict[str, str] = field(default_factory=dict)
    target: str = ""


def _mark(text: str, met: bool | None) -> str:
    if met is None:
        return text
    return f"{text} {OK if met else MISS}"


def _ms(value: Any) -> str:
    if value is None or value != value:  # NaN
        return "n/a"
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _bytes(value: float) -> str:
    if value >= 1024 * 1024:
        return f"{value / 1024 / 1024:.1f} MB"
    if value >= 1024:
        return f"{value / 1024:.0f} KB"
    return f"{value:.0f} B"


def _pcts(stats: dict[str, Any]) -> str:
    return f"{_ms(stats.get('p50'))} / {_ms(stats.get('p95'))} / {_ms(stats.get('p99'))}"


def _reaction_rows(r: dict[str, Any]) -> list[Row]:
    n = r["containers"]
    scenario = f"1 reaction ({n} containers)"
    rows = []
    for change, what in (("join", "start event → routed"), ("leave", "kill event → not routed")):
        total = Row(scenario, f"{change}: {what}, p50/p95/p99 ms", target="p50 ≤ 100, p99 ≤ 300")
        inside = Row(scenario, f"{change}: inside labelsync (event → published/answered)")
        for column in ("dynamic", "static"):
            stats = r[column][change]["total_ms"]
            met = stats["p50"] <= 100 and stats["p99"] <= 300
            total.cells[column] = _mark(_pcts(stats), met)
            inside.cells[column] = _pcts(r[column][change]["inside_ms"])
        rows += [total, inside]
    fast = r.get("dynamic-refresh-100ms")
    if fast:
        row = Row(scenario, "join · leave with resolver refresh 100ms, p50/p95/p99 ms")
        row.target = "p50 ≤ 100, p99 ≤ 300"
        marks = all(
            fast[c]["total_ms"]["p50"] <= 100 and fast[c]["total_ms"]["p99"] <= 300
            for c in ("join", "leave")
        )
        row.cells["dynamic"] = _mark(
            f"{_pcts(fast['join']['total_ms'])} · {_pcts(fast['leave']['total_ms'])}", marks
        )
        rows.append(row)
    return rows


def _cost_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    largest = max(r["sizes"])
    explained = 1000 if 1000 in r["sizes"] else largest  # the size the targets name
    for pools in r["sizes"]:
        data = r[str(pools)]
        scenario = f"2 one change at {pools} pools"
        for kind, label in (("add_member", "+1 member"), ("add_pool", "+1 pool")):
            counts = Row(scenario, f"{label}: admin writes+reads, bytes sent")
            times = Row(scenario, f"{label}: labelsync CPU / Caddy answer / routed, p50 ms")
            target_member = kind == "add_member" and pools == 1000
            if target_member:
                counts.target = "dynamic 0 requests; static 1 request ≤ 2 KB"
                times.target = "static CPU ≤ 5 ms"
            for column in COLUMNS:
                m = data[column][kind]
                writes, reads = m["writes"]["p50"], m["reads"]["p50"]
                if column == "whole-config":
                    text = f"{writes:.0f} load, {_bytes(m['bytes']['p50'])}"
                else:
                    text = f"{writes:.0f}+{reads:.0f}, {_bytes(m['bytes']['p50'])}"
                met: bool | None = None
                if target_member and column == "dynamic":
                    met = writes + reads == 0
                elif target_member and column == "static":
                    met = writes + reads == 1 and m["bytes"]["p50"] <= 2048
                counts.cells[column] = _mark(text, met)
                caddy = _ms(m["caddy_ms"]["p50"]) if writes else "—"
                timing = f"{_ms(m['cpu_ms']['p50'])} / {caddy} / {_ms(m['routed_ms']['p50'])}"
                cpu_met = m["cpu_ms"]["p50"] <= 5 if target_member and column == "static" else None
                times.cells[column] = _mark(timing, cpu_met)
            rows += [counts, times]
        if pools == explained:
            breakdown = Row(scenario, "CPU of the pure core per sync: build / render / diff, ms")
            parse = Row(scenario, "CPU to parse the server read before each diff, ms")
            for column in ("dynamic", "static"):
                parts = data[column]["cpu_breakdown_ms"]
                breakdown.cells[column] = (
                    f"{_ms(parts['build'])} / {_ms(parts['render'])} / {_ms(parts['diff'])}"
                )
                parse.cells[column] = _ms(parts["read_parse"])
            rows += [breakdown, parse]
        if pools == largest:
            ratio = Row(scenario, "whole-config ÷ labelsync, +1 member: bytes · Caddy time")
            for column in ("dynamic", "static"):
                bytes_ratio = data["ratios"].get(f"add_member.bytes.whole-config/{column}")
                caddy_ratio = data["ratios"].get(f"add_member.caddy_ms.whole-config/{column}")
                ratio.cells[column] = f"{_ratio(bytes_ratio)} · {_ratio(caddy_ratio)}"
            rows.append(ratio)
    return rows


def _ratio(value: float | None) -> str:
    return "∞ (0 sent)" if value is None else f"{value:g}x"


def _burst_rows(r: dict[str, Any]) -> list[Row]:
    scenario = f"3 burst ({r['containers']} containers, {r['pools']} pools, {r['reps']} runs)"
    writes = Row(scenario, "admin writes, median", target="≤ 5")
    routable = Row(scenario, "last start → all routable, median (max) ms", target="≤ 1000")
    spread = Row(scenario, "first → last start event (Docker), median ms")
    for column in COLUMNS:
        m = r[column]
        count = m["admin_writes"]["p50"]
        writes.cells[column] = _mark(f"{count:.0f}", count <= 5)
        stats = m["routable_after_last_start_ms"]
        routable.cells[column] = _mark(
            f"{_ms(stats['p50'])} ({_ms(stats['max'])})", stats["p50"] <= 1000
        )
        spread.cells[column] = _ms(m["start_spread_ms"]["p50"])
    return [writes, routable, spread]


def _cold_rows(r: dict[str, Any]) -> list[Row]:
    scenario = f"4 cold start ({r['containers']} containers, {r['pools']} pools)"
    ready = Row(scenario, "process start → Caddy holds all routes, median (max) s", target="≤ 2 s")
    rss = Row(scenario, "peak RSS, max MB", target="≤ 80 MB")
    for column in ("dynamic", "static"):
        m = r[column]
        stats = m["spawn_to_written_s"]
        ready.cells[column] = _mark(f"{stats['p50']:.2f} ({stats['max']:.2f})", stats["p50"] <= 2)
        peak = m["peak_rss_mb"]["max"]
        rss.cells[column] = _mark(f"{peak:.0f}", peak <= 80)
    return [ready, rss]


def _zero_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    phases = (
        ("rolling", f"(a) {r['rolls']} rolls x {r['replicas']}"),
        ("abrupt", f"(a') {r['rolls']} abrupt rolls x {r['replicas']}, slow starters"),
        ("settings", f"(b) {r['setting_changes']} policy/health changes"),
    )
    scenario = f"5 zero drop ({r['clients']} clients, ≥ {r['seconds']:g} s)"
    for phase, label in phases:
        if phase not in r[COLUMNS[0]]:
            continue  # a result from before the phase existed
        failed = Row(scenario, f"{label}: failed / requests", target="0 failed")
        latency = Row(scenario, f"{label}: p99 ms (stale keep-alive retries, or - for none)")
        stream = Row(scenario, f"{label}: long stream (changes it spanned)", target="intact")
        writes = Row(scenario, f"{label}: admin writes")
        for column in COLUMNS:
            m = r[column][phase]
            failed.cells[column] = _mark(f"{m['failed']} / {m['requests']}", m["failed"] == 0)
            retries = m["stale_connection_retries"] if m.get("retry_stale", True) else "-"
            latency.cells[column] = f"{_ms(m['latency_ms'].get('p99'))} ({retries})"
            stream.cells[column] = _mark(
                f"{'intact' if m['stream_ok'] else 'broken'} ({m['stream_spanned_changes']}"
                f"/{m['changes']})",
                bool(m["stream_ok"]),
            )
            writes.cells[column] = str(m["admin_writes"])
        rows += [failed, latency, stream, writes]
    return rows


def _resolver_rows(r: dict[str, Any]) -> list[Row]:
    scenario = f"6 resolver ({r['pools']} pools of {r['members']}, sequential UDP)"
    warm = Row(scenario, "SRV round trip, repeat question, p50 / p95 / p99 µs")
    warm.target = "p50 ≤ 100, p99 ≤ 250"
    stats = r["warm_us"]
    warm.cells["dynamic"] = _mark(_pcts(stats), stats["p50"] <= 100 and stats["p99"] <= 250)
    cold = Row(scenario, "SRV round trip, first question per name, p50 / p95 / p99 µs")
    cold.cells["dynamic"] = _pcts(r["cold_us"])
    rate = Row(scenario, "answers per second, one client")
    rate.cells["dynamic"] = str(r["answers_per_second"])
    return [warm, cold, rate]


def _busy_rows(r: dict[str, Any]) -> list[Row]:
    rows = []
    for pools in r["sizes"]:
        data = r[str(pools)]
        scenario = f"7 busy pools ({pools}, {r['clients']} clients, {r['seconds']:g} s)"
        big = pools >= 500
        static_rate = data["static"]["requests_per_second"]
        static_p99 = data["static"]["latency_ms"].get("p99") or 0
        rate = Row(scenario, "requests/s (all-dynamic: every pool via DNS)")
        latency = Row(scenario, "latency p50 / p99 ms")
        dns = Row(scenario, "DNS questions per request (SRV only)")
        cpu = Row(scenario, "CPU % of a core: labelsync · Caddy")
        if big:
            rate.target = "dynamic ≥ 0.9x static"
            latency.target = "dynamic p99 ≤ 1.2x static"
            dns.target = "≤ 0.05"
            cpu.target = "labelsync ≤ 10 %"
        for column in COLUMNS:
            m = data[column]
            per_second = m["requests_per_second"]
            text = f"{per_second:.0f}"
            if column == "dynamic":
                text += f" ({data['all-dynamic']['requests_per_second']:.0f})"
            rate.cells[column] = _mark(
                text, per_second >= 0.9 * static_rate if big and column == "dynamic" else None
            )
            p99 = m["latency_ms"].get("p99")
            latency.cells[column] = _mark(
                f"{_ms(m['latency_ms'].get('p50'))} / {_ms(p99)}",
                (p99 or 0) <= 1.2 * static_p99 if big and column == "dynamic" else None,
            )
            if column == "dynamic":
                every = data["all-dynamic"]
                dns.cells[column] = _mark(
                    f"{m['dns_per_request']:.3f} ({m['srv_per_request']:.3f}); all-dynamic "
                    f"{every['dns_per_request']:.2f}",
                    m["dns_per_request"] <= 0.05 if big else None,
                )
            else:
                dns.cells[column] = "0"
            cpu.cells[column] = _mark(
                f"{m['labelsync_cpu_percent']:.0f} · {m['caddy_cpu_percent']:.0f}",
                m["labelsync_cpu_percent"] <= 10 if big and column == "dynamic" else None,
            )
        rows += [rate, latency, dns, cpu]
        metrics = r.get("metrics", {}).get(str(pools))
        if metrics:
            rows += _metrics_rows(scenario, r["metrics"]["rounds"], metrics)
    roll = r.get("roll")
    if roll:
        scenario = f"7 rolling 1 pool of {roll['pools']} busy pools"
        failed = Row(scenario, "failed / requests", target="0 failed")
        writes = Row(scenario, "admin writes (stale keep-alive retries)", target="dynamic ≤ 2")
        for column in COLUMNS:
            m = roll[column]
            failed.cells[column] = _mark(f"{m['failed']} / {m['requests']}", m["failed"] == 0)
            writes.cells[column] = _mark(
                f"{m['admin_writes']} ({m['stale_connection_retries']})",
                m["admin_writes"] <= 2 if column == "dynamic" else None,
            )
        rows += [failed, writes]
    return rows


METRICS_COST_LIMIT = 5.0  # % of throughput or p99 (issue 18): above it, metrics are opt-in


def _metrics_rows(scenario: str, rounds: int, m: dict[str, Any]) -> list[Row]:
    """busy_pools (c): Caddy's metrics off vs on, and what one read of /metrics costs."""
    off, on, cost = m["off"], m["on"], m["cost_percent"]
    target = f"cost ≤ {METRICS_COST_LIMIT:g} %"
    rate = Row(scenario, f"Caddy metrics off · on, {rounds} rounds: requests/s (cost)")
    rate.target = target
    rate.cells["dynamic"] = _mark(
        f"{off['requests_per_second']:.0f} · {on['requests_per_second']:.0f} "
        f"({cost['requests_per_second']:+.1f} %)",
        cost["requests_per_second"] <= METRICS_COST_LIMIT,
    )
    latency = Row(scenario, "Caddy metrics off · on: p99 ms (cost)", target=target)
    latency.cells["dynamic"] = _mark(
        f"{_ms(off['latency_ms'].get('p99'))} · {_ms(on['latency_ms'].get('p99'))} "
        f"({cost['p99']:+.1f} %)",
        cost["p99"] <= METRICS_COST_LIMIT,
    )
    cpu = Row(scenario, "Caddy metrics off · on: Caddy CPU µs per request (cost)")
    cpu.cells["dynamic"] = (
        f"{off['caddy_cpu_us_per_request']:.0f} · {on['caddy_cpu_us_per_request']:.0f} "
        f"({cost['caddy_cpu_per_request']:+.1f} %)"
    )
    read = m["read"]
    scrape = Row(scenario, "one GET /metrics (on): size · Caddy answer ms · parse CPU ms")
    scrape.cells["dynamic"] = (
        f"{_bytes(read['bytes'])} · {_ms(read['answer_ms'])} · {_ms(read['parse_cpu_ms'])}"
    )
    return [rate, latency, cpu, scrape]


def _deploy_rows(r: dict[str, Any]) -> list[Row]:
    runs = r["runs"]
    scenario = f"8 deploy (examples/compose.yaml, {runs} runs, {r['clients']} clients)"
    stall_ms = r["stall_target_s"] * 1000
    restore_s = r["restore_target_s"]
    recreate, restart, empty = r["recreate"], r["restart"], r["restart_empty"]
    stall = Row(scenario, "labelsync recreated: longest request, median (max) ms")
    stall.target = f"every run ≤ {stall_ms:.0f}"
    slowest = recreate["slowest_ms"]
    stall.cells["dynamic"] = _mark(
        f"{_ms(slowest['p50'])} ({_ms(slowest['max'])})", slowest["max"] <= stall_ms
    )
    recreate_failed = Row(scenario, "labelsync recreated: failed / requests (over 1 s)")
    recreate_failed.target = "0 failed"
    recreate_failed.cells["dynamic"] = _mark(
        f"{recreate['failed']} / {recreate['requests']} ({recreate['over_1s']})",
        recreate["failed"] == 0,
    )
    back = Row(scenario, "Caddy restarted: `restart` returned → served again, median (max) s")
    back.target = f"every run ≤ {restore_s:g} s"
    served = restart["served_again_s"]
    back.cells["dynamic"] = _mark(
        f"{served['p50']:.2f} ({served['max']:.2f})", served["max"] <= restore_s
    )
    restart_failed = Row(
        scenario,
        f"Caddy restarted: failed / requests while away · in the {r['after_seconds']:g} s after",
    )
    restart_failed.target = "0 failed after"
    restart_failed.cells["dynamic"] = _mark(
        f"{restart['during_failed']} / {restart['during_requests']} · "
        f"{restart['after_failed']} / {restart['after_requests']}",
        restart["after_failed"] == 0,
    )
    scenario_b = f"8 deploy (+ recipes/two-caddies.yaml, {runs} runs)"
    back_b = Row(scenario_b, "caddy-b restarted empty → served again, median (max) s")
    back_b.target = f"every run ≤ {restore_s:g} s"
    served_b = empty["served_again_s"]
    back_b.cells["dynamic"] = _mark(
        f"{served_b['p50']:.2f} ({served_b['max']:.2f})", served_b["max"] <= restore_s
    )
    other = Row(scenario_b, "caddy meanwhile: failed / requests", target="0 failed")
    other.cells["dynamic"] = _mark(
        f"{empty['other_failed']} / {empty['other_requests']}", empty["other_failed"] == 0
    )
    return [stall, recreate_failed, back, restart_failed, back_b, other]


BUILDERS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "resolver": _resolver_rows,
    "busy_pools": _busy_rows,
    "reaction": _reaction_rows,
    "change_cost": _cost_rows,
    "burst": _burst_rows,
    "cold_start": _cold_rows,
    "zero_drop": _zero_rows,
    "deploy": _deploy_rows,
}


def rows_for(results: dict[str, Any]) -> list[Row]:
    """Every scenario's rows: BUILDERS' order first, then any other scenario (generic_rows)."""
    rows: list[Row] = []
    others = [name for name in results if name not in BUILDERS]
    for name in [*BUILDERS, *others]:
        result = results.get(name)
        if result is None:
            continue
        if "error" in result:
            rows.append(Row(name, f"FAILED: {result['error'][:120]}"))
            continue
        builder = BUILDERS.get(name)
        rows += builder(result) if builder else generic_rows(name, result)
    return rows


def _figure(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return str(value) if isinstance(value, int) else _ms(value)


def generic_rows(name: str, result: dict[str, Any]) -> list[Row]:
    """The figures of a scenario that has no builder in BUILDERS, as they are in its result.

    A summary (a dict with `p50`) is one cell, "median (max)"; the other numbers and
    words are shown as they are; lists (raw samples) are left out. Figures under a key
    named after a column (`dynamic`, `static`, `whole-config`) go to that column, the
    rest into the measure's text. Add a builder for a table of its own.
    """
    about = ", ".join(
        f"{key} {_figure(value)}"
        for key, value in result.items()
        if not isinstance(value, dict | list) and key != "scenario_seconds"
    )
    scenario = f"{name} ({about})" if about else name
    rows: dict[str, Row] = {}

    def walk(value: Any, path: tuple[str, ...], column: str | None) -> None:
        if isinstance(value, dict) and "p50" not in value:
            for key, inner in value.items():
                inside = column if column is not None or key not in COLUMNS else key
                walk(inner, path if inside != column else (*path, key), inside)
            return
        if isinstance(value, list):
            return  # raw samples
        if column is None and len(path) == 1 and not isinstance(value, dict):
            return  # in the scenario's name
        measure, text = ".".join(path), _figure(value)
        if isinstance(value, dict):
            measure += ", median (max)"
            text = f"{_ms(value.get('p50'))} ({_ms(value.get('max'))})"
        if column is None:
            rows[f"{measure}: {text}"] = Row(scenario, f"{measure}: {text}")
        else:
            rows.setdefault(measure, Row(scenario, measure)).cells[column] = text

    walk(result, (), None)
    return list(rows.values())


# docs/performance.md: one generated block per scenario.

# Markers stand on lines of their own (the page's prose may quote them inline).
BLOCK = re.compile(
    r"^<!-- bench:(?P<name>[\w-]+) begin -->\n.*?^<!-- bench:(?P=name) end -->$",
    re.DOTALL | re.MULTILINE,
)
BLOCK_BEGIN = re.compile(r"^<!-- bench:(?P<name>[\w-]+) begin -->$", re.MULTILINE)


@dataclass(frozen=True)
class SavedRun:
    """One file of bench/results: where it is, and what `python -m bench` wrote there."""

    path: Path
    document: dict[str, Any]

    @property
    def started(self) -> datetime:
        return datetime.fromisoformat(self.document.get("started", "1970-01-01T00:00:00+00:00"))


def saved_runs(results: Path) -> list[SavedRun]:
    runs = []
    for path in sorted(results.glob("*.json")):
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a bench result: {exc}") from exc
        runs.append(SavedRun(path, document))
    return runs


def newest_runs(runs: list[SavedRun]) -> dict[str, SavedRun]:
    """Per scenario, the newest run holding its figures (a scenario that failed holds none).

    Newest by the run's start time, then by file name; quick and full sizes alike.
    """
    newest: dict[str, SavedRun] = {}
    for run in sorted(runs, key=lambda r: (r.started, r.path.name)):
        for name, result in run.document.get("results", {}).items():
            if isinstance(result, dict) and "error" not in result:
                newest[name] = run
    return newest


def _shown(path: Path) -> str:
    repo = Path(__file__).resolve().parent.parent
    return str(path.relative_to(repo)) if path.is_relative_to(repo) else path.name


def provenance(run: SavedRun) -> str:
    """Where a table's figures come from: command, commit, date, sizes, machine, file."""
    document = run.document
    about = document.get("machine", {})
    commit = str(about.get("commit", "?")) + (" (modified)" if about.get("dirty") else "")
    sizes = document.get("sizes", {}).get("name", "?")
    return (
        f"`{document.get('command', 'python -m bench')}` at {commit}, "
        f"{run.started:%Y-%m-%d}, {sizes} sizes · {about.get('cpu_model', '?')}, "
        f"{about.get('cores', '?')} cores, {about.get('memory_mb', '?')} MB · "
        f"Python {about.get('python', '?')} · Caddy {about.get('caddy', '?')} · "
        f"Docker {about.get('docker', '?')} · every figure: `{_shown(run.path)}`"
    )


def scenario_block(name: str, run: SavedRun | None) -> str:
    """The text between a scenario's markers: its table and where it comes from."""
    if run is None:
        body = (
            f"_No saved result holds `{name}` yet: `python -m bench --only {name}` writes "
            f"one, then `python -m bench --docs` puts its table here._"
        )
    else:
        result = run.document["results"][name]
        builder = BUILDERS.get(name)
        try:
            rows = builder(result) if builder else generic_rows(name, result)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{run.path}: {name}: cannot build its table: {exc!r}") from exc
        body = f"{provenance(run)}\n\n{render_table(rows)}"
    return f"<!-- bench:{name} begin -->\n\n{body}\n\n<!-- bench:{name} end -->"


@dataclass
class PageUpdate:
    """What `update_page` made of the page."""

    text: str
    changed: list[str] = field(default_factory=list)  # blocks rewritten (or added)
    kept: list[str] = field(default_factory=list)  # blocks with a table but no saved result here


def update_page(page: str, newest: Mapping[str, SavedRun]) -> PageUpdate:
    """The page with every block regenerated from `newest`.

    A scenario with results but no block in the page gets one, appended at the end. A
    block whose scenario no saved result holds says so when it is empty, and is kept as
    it is when it holds a table (bench/results of a fresh clone may lack its file).
    """
    begun = [match["name"] for match in BLOCK_BEGIN.finditer(page)]
    blocks = [match["name"] for match in BLOCK.finditer(page)]
    if begun != blocks:
        raise ValueError(
            f"bench blocks begun: {', '.join(begun)}; closed by their own end marker: "
            f"{', '.join(blocks) or 'none'}"
        )
    update = PageUpdate(page)

    def regenerate(match: re.Match[str]) -> str:
        name = match["name"]
        run = newest.get(name)
        if run is None and "\n|" in match[0]:
            update.kept.append(name)
            return match[0]
        fresh = scenario_block(name, run)
        if fresh != match[0] and name not in update.changed:
            update.changed.append(name)
        return fresh

    text = BLOCK.sub(regenerate, page)
    for name in sorted(set(newest) - set(blocks)):
        text = text.rstrip("\n") + f"\n\n## `{name}`\n\n{scenario_block(name, newest[name])}\n"
        update.changed.append(f"{name} (new block)")
    update.text = text
    return update


def render_table(rows: list[Row]) -> str:
    """A Markdown table with padded columns, readable as plain text too."""
    header = ["scenario", "measure", *COLUMNS, "target"]
    lines = []
    previous = None
    for row in rows:
        # The scenario is named once, on the first of its rows.
        scenario = row.scenario if row.scenario != previous else ""
        previous = row.scenario
        lines.append([scenario, row.measure, *(row.cells.get(c, "—") for c in COLUMNS), row.target])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *lines, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(cells) for cells in lines)])
