"""Logs: `LABELSYNC_LOG_FORMAT=json` gives one JSON object per line with the context
(container, pool, event) as fields; text logs show the same context after the message."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from labelsync.core.model import ContainerInfo
from labelsync.core.pools import build_desired
from labelsync.report.logs import log_problems, setup_logging


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    yield stream
    logger.remove()  # back to loguru's own default for the rest of the run
    logger.add(sys.stderr)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    lines = stream.getvalue().splitlines()
    assert lines, "nothing was logged"
    return [json.loads(line) for line in lines]  # every line parses on its own


def test_label_problems_are_json_lines_naming_the_container(captured: io.StringIO) -> None:
    setup_logging("DEBUG", "json", stream=captured)
    web = ContainerInfo(
        id="1" * 64,
        name="shop-web-1",
        created=1.0,
        labels={
            "labelsync.host": "shop.test",
            "labelsync.lb.policy": "rond_robin",
            "labelsync.helth.path": "/health",
        },
        networks={"bridge": "10.0.0.5"},
        exposed_ports=(8080,),
    )
    log_problems(build_desired([web]).problems)
    found = records(captured)
    error = next(r for r in found if r["level"] == "ERROR")
    assert error["container"] == "shop-web-1"
    assert error["key"] == "labelsync.lb.policy"
    assert "did you mean 'round_robin'" in error["message"]
    warning = next(r for r in found if r["level"] == "WARNING")
    assert warning["container"] == "shop-web-1"
    assert warning["key"] == "labelsync.helth.path"
    assert {"time", "level", "message", "logger"} <= set(error)


def test_bound_context_becomes_fields_and_multiline_messages_stay_one_line(
    captured: io.StringIO,
) -> None:
    setup_logging("INFO", "json", stream=captured)
    logger.bind(pool="labelsync-app-1234", event="health_status", container=None).info(
        "first line\nsecond line"
    )
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    first, second = records(captured)
    assert first["pool"] == "labelsync-app-1234" and first["event"] == "health_status"
    assert "container" not in first  # None context is left out, not written as null
    assert first["message"] == "first line\nsecond line"
    assert second["exception"] == "boom"


def test_level_filters_json_lines(captured: io.StringIO) -> None:
    setup_logging("WARNING", "json", stream=captured)
    logger.info("hidden")
    logger.warning("shown")
    assert [r["message"] for r in records(captured)] == ["shown"]


def test_text_format_puts_context_after_the_message(captured: io.StringIO) -> None:
    setup_logging("INFO", "text", stream=captured)
    logger.bind(container="shop-web-1", key="labelsync.port").error("bad {braces} kept")
    line = captured.getvalue().splitlines()[0]
    assert "ERROR" in line and "bad {braces} kept" in line
    assert line.endswith("container=shop-web-1 key=labelsync.port")
    assert "\x1b[" not in line  # no colour off a terminal
