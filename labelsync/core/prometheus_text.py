"""Samples of Prometheus' text exposition format (0.0.4), as Caddy's `/metrics` serves it. Pure.

    for sample in parse_samples(text, {"caddy_http_requests_total"}):
        sample.labels["host"], sample.value

`parse_samples` yields the samples of the metric names asked for only (a histogram's
`_bucket`, `_sum` and `_count` are names of their own) and reads no further than the
name of any other line: Caddy's `/metrics` with per-host metrics at a thousand busy
hosts is megabytes, most of it size histograms labelsync does not read. A line that
is not a sample (a comment, a malformed line) is skipped, never raised on.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from typing import NamedTuple

# One `name="value"` pair; the value with its escapes (\\, \", \n) as written.
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,?)')
_ESCAPE = re.compile(r"\\(.)")
_ESCAPED = {"n": "\n", "\\": "\\", '"': '"'}
_NAME = re.compile(r"[^{\s]*")
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BLANKS = re.compile(r"[ \t]*")


class Sample(NamedTuple):
    """One line of a metric: its name, labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse_samples(text: str, names: Collection[str]) -> Iterator[Sample]:
    """The samples in `text` whose metric name is one of `names`, in order."""
    wanted = frozenset(names)
    prefixes = tuple(wanted)
    known: dict[str, dict[str, str]] = {}  # labels but the last, as parsed already
    for line in text.split("\n"):  # not splitlines(): a label value may hold \r
        if not line.startswith(prefixes):  # comments and every other metric: one C call
            continue
        end = _name_end(line)
        if line[:end] in wanted:
            sample = parse_sample(line, known)
            if sample is not None:
                yield sample


def parse_sample(line: str, known: dict[str, dict[str, str]] | None = None) -> Sample | None:
    """`name{label="value",...} value [timestamp]`; None when the line is not one.

    `known` keeps the labels of earlier lines but their last one, by their text: a
    histogram's bucket lines differ in `le` alone, and are read once per series."""
    end = _name_end(line)
    name = line[:end]
    labels: dict[str, str] = {}
    rest = line[end:]
    if rest.startswith("{"):
        close = line.rfind("}")  # the value and timestamp after it hold none
        inner = line[end + 1 : close]
        plain = None
        if close > 0 and "\\" not in inner:
            plain = _plain_labels(inner, {} if known is None else known)
        if plain is not None:
            labels, after = plain, close + 1
        else:
            parsed = _parse_labels(line, end + 1)
            if parsed is None:
                return None
            labels, after = parsed
        rest = line[after:]
    fields = rest.split()
    if not name or not fields:
        return None
    try:
        return Sample(name, labels, float(fields[0]))  # float() reads +Inf, -Inf and NaN
    except ValueError:
        return None


def _plain_labels(inner: str, known: dict[str, dict[str, str]]) -> dict[str, str] | None:
    """The labels between `{` and `}` the fast way, for a /metrics of megabytes: when no
    value holds an escape (Caddy's never do), no value holds a quote, and each pair ends
    at `",`. None when `inner` is not that simple (`_parse_labels` reads it then)."""
    text = inner.strip().removesuffix(",").rstrip()
    if not text:
        return {}
    if not text.endswith('"'):
        return None
    head, comma, last = text[:-1].rpartition('",')
    first = known.get(head) if comma else None
    if first is None:
        first = _plain_pairs(head) if comma else {}
        if first is None:
            return None
        if comma:
            known[head] = first
    tail = _plain_pairs(last)
    return None if tail is None else {**first, **tail}


def _plain_pairs(text: str) -> dict[str, str] | None:
    """`a="1",b="2` (the last quote gone) as labels; None when it is not that."""
    labels = {}
    for pair in text.split('",'):
        name, equals, value = pair.partition('="')
        name = name.strip()
        if not equals or '"' in value or not _LABEL_NAME.fullmatch(name):
            return None
        labels[name] = value
    return labels


def _name_end(line: str) -> int:
    """Where the metric name ends: at `{`, a blank, or the end of the line."""
    match = _NAME.match(line)
    return match.end() if match is not None else 0


def _parse_labels(line: str, start: int) -> tuple[dict[str, str], int] | None:
    """The labels from `start` (just after `{`) and the index after the closing `}`;
    None when they do not parse."""
    labels: dict[str, str] = {}
    position = start
    while True:
        match = _LABEL.match(line, position)
        if match is None:
            return _closed(line, position, labels)
        name, raw, comma = match.groups()
        labels[name] = _unescape(raw) if "\\" in raw else raw
        position = match.end()
        if not comma:
            return _closed(line, position, labels)


def _unescape(raw: str) -> str:
    """A label value as meant: `\\\\`, `\\"` and `\\n` read as `\\`, `"` and a newline."""
    return _ESCAPE.sub(lambda m: _ESCAPED.get(m[1], "\\" + m[1]), raw)


def _closed(line: str, position: int, labels: dict[str, str]) -> tuple[dict[str, str], int] | None:
    """`labels` and the index after the `}` at `position` (blanks skipped); None if none."""
    close = _BLANKS.match(line, position)
    end = close.end() if close is not None else position
    return (labels, end + 1) if line.startswith("}", end) else None
