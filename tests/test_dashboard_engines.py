"""The dashboard with several Docker engines, in headless Chromium, without Docker: the
report `status --json` builds from a hand-made snapshot (engine `b` out), served by a
Dashboard. The page shows each engine up or out, the outage as a note (as a stale static
file's), and each member's engine; with one engine, none of it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelsync.report.snapshot import LiveView
from labelsync.report.status_report import report_json
from labelsync.settings import Settings
from tests.support.browser import Chromium, chromium_path
from tests.support.dashboard import dashboard_serving
from tests.support.requirements import skip_or_fail_under_ci
from tests.support.snapshots import report_of
from tests.support.waiting import wait_until
from tests.test_engines_report import (
    B_OUT,
    B_WARNING,
    CONTAINERS,
    LOCAL,
    Engines,
    loop_of,
)

VIEW = """JSON.stringify({
  loaded: document.body.dataset.loaded === "true",
  engines: Object.fromEntries([...document.querySelectorAll("#reach [data-engine]")]
    .map((p) => [p.dataset.engine, {up: p.dataset.up, text: p.textContent, title: p.title}])),
  reach: document.getElementById("reach").textContent,
  outNotes: [...document.querySelectorAll("#notes [data-engine-out]")].map((n) => n.textContent),
  staleNotes: [...document.querySelectorAll("#notes [data-stale]")].map((n) => n.textContent),
  headers: [...document.querySelectorAll("#pools th")].map((h) => h.textContent),
  members: Object.fromEntries([...document.querySelectorAll("#pools tr[data-container]")]
    .map((r) => [r.dataset.container, [r.dataset.engine || null, r.querySelector(".engine")
      ? r.querySelector(".engine").textContent : null]])),
  unrouted: Object.fromEntries([...document.querySelectorAll("#unrouted [data-container]")]
    .map((c) => [c.dataset.container, (c.querySelector("[data-engine]") || {}).textContent
      || null])),
})"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    if chromium_path() is None:
        skip_or_fail_under_ci("chromium is not installed (scripts/ensure-browser.sh)")
    profile: Path = tmp_path_factory.mktemp("chromium")
    with Chromium.launch(profile / "profile") as chromium:
        yield chromium


def page_of(browser: Chromium, report: dict[str, Any]) -> dict[str, Any]:
    with dashboard_serving(report) as port:
        browser.navigate(f"http://127.0.0.1:{port}/")
        view = wait_until(
            lambda: (found := json.loads(browser.evaluate(VIEW)))["loaded"] and found,
            timeout=15,
            message="the page drawn",
        )
    assert not [line for line in browser.console if line.startswith("exception")], browser.console
    return dict(view)


def test_the_page_shows_each_engine_and_each_members_engine(browser: Chromium) -> None:
    view = LiveView([loop_of()], settings=Settings(), engines=Engines(LOCAL, B_OUT))
    report = report_json(report_of(view.snapshot()))
    page = page_of(browser, report)
    assert page["engines"]["local"]["up"] == "true"
    assert page["engines"]["local"]["text"] == "engine local"
    assert page["engines"]["b"] == {
        "up": "false",
        "text": "engine b out",
        "title": "tcp://10.0.0.2:2376: out since 2026-03-01T12:30:05Z: its event stream was "
        "lost; 1 container(s), 1 member(s), as last listed",
    }
    assert "stale config file" not in page["reach"]  # an engine is not a config file
    assert page["outNotes"] == [B_WARNING] and page["staleNotes"] == []
    assert page["headers"][:3] == ["Member", "Engine", "Address"]
    assert page["members"] == {
        "web-1@local": ["local", "local"],
        "web-1@b": ["b", "b"],
        "web-2@local": ["local", "local"],
    }
    assert page["unrouted"] == {"web-2@local": "engine local"}


def test_the_page_with_one_engine_shows_no_engine(browser: Chromium) -> None:
    single = tuple(
        dataclasses.replace(c, engine=None, name=c.name.partition("@")[0]) for c in CONTAINERS[:2]
    )
    report = report_json(report_of(LiveView([loop_of(single)], settings=Settings()).snapshot()))
    page = page_of(browser, report)
    assert page["engines"] == {} and page["outNotes"] == []
    assert "Engine" not in page["headers"]
    assert all(engine == [None, None] for engine in page["members"].values())
    assert page["unrouted"] == {"web-2": None}
