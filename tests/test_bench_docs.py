"""docs/performance.md's tables are generated from bench/results (`python -m bench --docs`):
the page in the repository matches the newest saved result of each scenario, and the
generator picks the newest run, adds a block for a new scenario and keeps what it cannot
check. No Docker, no Caddy: it reads JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import DOCS_PAGE, RESULTS, docs, main
from bench.report import generic_rows, newest_runs, render_table, saved_runs, update_page


def test_the_performance_page_matches_the_newest_results(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--docs", "--check"])
    assert code == 0, capsys.readouterr().err
    assert DOCS_PAGE.read_text().count("<!-- bench:") >= 2 * 8  # scenarios 1 to 8


def _cold(seconds: float) -> dict[str, Any]:
    mode = {"spawn_to_written_s": {"p50": seconds, "max": seconds}, "peak_rss_mb": {"max": 60}}
    return {"containers": 20, "pools": 10, "dynamic": mode, "static": mode}


def _save(results: Path, name: str, started: str, scenarios: dict[str, Any]) -> None:
    document = {
        "started": started,
        "command": "python -m bench --only " + " ".join(scenarios),
        "sizes": {"name": "quick"},
        "machine": {"commit": name, "dirty": False, "cpu_model": "test", "cores": 2},
        "results": scenarios,
    }
    (results / f"{name}.json").write_text(json.dumps(document))


PAGE = """# Performance

Prose that quotes a marker inline: `<!-- bench:NAME begin -->`.

<!-- bench:cold_start begin -->
<!-- bench:cold_start end -->

Between the blocks, hand-written.

<!-- bench:deploy begin -->
<!-- bench:deploy end -->
"""


def test_each_block_is_the_newest_run_holding_its_scenario(tmp_path: Path) -> None:
    _save(tmp_path, "old", "2026-01-01T10:00:00+00:00", {"cold_start": _cold(0.5)})
    _save(tmp_path, "new", "2026-01-02T10:00:00+00:00", {"cold_start": _cold(0.7)})
    # Newer still, but the scenario failed there: no figures.
    _save(tmp_path, "failed", "2026-01-03T10:00:00+00:00", {"cold_start": {"error": "boom"}})
    newest = newest_runs(saved_runs(tmp_path))
    assert newest["cold_start"].path.name == "new.json"

    update = update_page(PAGE, newest)
    assert update.changed == ["cold_start", "deploy"]
    block = update.text.split("<!-- bench:cold_start begin -->")[1].split("end -->")[0]
    assert "0.70 (0.70) ✓" in block and "0.50" not in block
    assert "at new, 2026-01-02, quick sizes" in block and "`new.json`" in block
    assert "Between the blocks, hand-written." in update.text
    assert "`<!-- bench:NAME begin -->`." in update.text  # quoted, not a block
    # No result holds `deploy`: its empty block says how to get one.
    assert "No saved result holds `deploy` yet" in update.text
    assert update_page(update.text, newest).changed == []


def test_check_fails_until_docs_rewrites_the_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results, page = tmp_path / "results", tmp_path / "performance.md"
    results.mkdir()
    page.write_text(PAGE)
    _save(results, "run", "2026-01-01T10:00:00+00:00", {"cold_start": _cold(0.5)})
    assert docs(page, results, check=True) == 1
    assert "out of date (cold_start, deploy)" in capsys.readouterr().err
    assert page.read_text() == PAGE  # --check writes nothing
    assert docs(page, results, check=False) == 0
    assert docs(page, results, check=True) == 0

    # A new scenario, which the page has no block for: one is added at the end.
    toy = {"dynamic": {"took_ms": {"p50": 12.0, "max": 30.0}, "failed": 0}, "runs": 3}
    _save(results, "later", "2026-01-02T10:00:00+00:00", {"toy": toy})
    assert docs(page, results, check=True) == 1
    assert "toy (new block)" in capsys.readouterr().err
    assert docs(page, results, check=False) == 0
    text = page.read_text()
    assert text.rstrip().endswith("<!-- bench:toy end -->")
    assert "## `toy`" in text and "| toy (runs 3) " in text
    assert docs(page, results, check=True) == 0


def test_a_table_whose_result_is_not_here_is_kept(tmp_path: Path) -> None:
    """bench/results of a fresh clone may lack the file a table came from."""
    _save(tmp_path, "run", "2026-01-01T10:00:00+00:00", {"cold_start": _cold(0.5)})
    generated = update_page(PAGE, newest_runs(saved_runs(tmp_path))).text
    update = update_page(generated, {})
    assert update.text == generated
    assert update.changed == []
    assert update.kept == ["cold_start"]


def test_a_block_left_open_is_an_error(tmp_path: Path) -> None:
    page = tmp_path / "performance.md"
    page.write_text(PAGE.replace("<!-- bench:deploy end -->\n", ""))
    assert docs(page, tmp_path, check=True) == 2
    with pytest.raises(ValueError, match="begun: cold_start, deploy"):
        update_page(page.read_text(), {})


def test_a_scenario_without_a_builder_gets_its_figures_as_they_are() -> None:
    result = {
        "runs": 2,
        "dynamic": {"took_ms": {"p50": 12.0, "max": 30.0}, "ok": True, "samples": [1, 2]},
        "static": {"took_ms": {"p50": 20.0, "max": 40.0}},
        "phases": {"count": 4},
    }
    table = render_table(generic_rows("toy", result))
    rows = [[cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines()]
    assert rows[2] == ["toy (runs 2)", "took_ms, median (max)", "12 (30)", "20 (40)", "—", ""]
    assert ["", "ok", "True", "—", "—", ""] in rows
    assert ["", "phases.count: 4", "—", "—", "—", ""] in rows
    assert "samples" not in table


def test_the_repositorys_results_are_where_the_command_reads_them() -> None:
    assert RESULTS.name == "results" and RESULTS.parent.name == "bench"
    assert DOCS_PAGE.relative_to(RESULTS.parent.parent) == Path("docs/performance.md")
