"""Logging through loguru: human text by default, one JSON object per line for shippers.

Context travels as loguru `extra` fields (container, pool, event) so that the JSON
form carries them as fields and the text form can show them after the message.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger

from labelsync.core.model import Problem, Severity

if TYPE_CHECKING:
    from loguru import Message, Record


def _json_line(record: Record) -> str:
    payload: dict[str, Any] = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    payload.update({k: v for k, v in record["extra"].items() if v is not None})
    if record["exception"] is not None:
        payload["exception"] = str(record["exception"].value)
    return json.dumps(payload, default=str)


def _json_sink(stream: TextIO) -> Any:
    def write(message: Message) -> None:
        stream.write(_json_line(message.record) + "\n")
        stream.flush()

    return write


def _text_format(record: Record) -> str:
    extras = " ".join(f"{k}={v}" for k, v in record["extra"].items() if v is not None)
    suffix = f"  <dim>{extras}</dim>" if extras else ""
    return (
        "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
        "{message}" + suffix.replace("{", "{{").replace("}", "}}") + "\n{exception}"
    )


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Route every log line to `stream` (stderr) at `level`, as text or JSON."""
    out = stream or sys.stderr
    logger.remove()
    if fmt == "json":
        logger.add(_json_sink(out), level=level, format="{message}")
    else:
        logger.add(out, level=level, format=_text_format, colorize=out.isatty())


def log_problems(problems: Iterable[Problem]) -> None:
    """One line per problem: ERROR for errors, WARNING for warnings, with the container."""
    for problem in problems:
        bound = logger.bind(container=problem.container, key=problem.key or None)
        if problem.severity is Severity.ERROR:
            bound.error(str(problem))
        else:
            bound.warning(str(problem))
