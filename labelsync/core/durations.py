"""Go durations (`250ms`, `5s`, `1m30s`), parsed strictly and written back as strings.

Caddy reads an integer duration as nanoseconds, so labelsync always writes strings.
"""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration string; ValueError with the reason otherwise.

    A bare `0` is accepted (Go accepts it too); any other number needs a unit.
    """
    value = text.strip()
    if value == "0":
        return 0.0
    if not value:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    while pos < len(value):
        match = _PART.match(value, pos)
        if match is None:
            raise ValueError(
                f"not a duration: {text!r} (use a number and a unit: 250ms, 5s, 1m30s)"
            )
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    return total


def normalize_duration(text: str) -> str:
    """The same duration as a canonical string (`1m30s`, `250ms`) for stable JSON."""
    seconds = parse_duration(text)
    nanos = round(seconds * 1e9)
    if nanos == 0:
        return "0s"
    if nanos % 1_000_000_000 == 0:
        whole = nanos // 1_000_000_000
        hours, rest = divmod(whole, 3600)
        minutes, secs = divmod(rest, 60)
        out = ""
        if hours:
            out += f"{hours}h"
        if minutes:
            out += f"{minutes}m"
        if secs or not out:
            out += f"{secs}s"
        return out
    if nanos % 1_000_000 == 0:
        return f"{nanos // 1_000_000}ms"
    if nanos % 1_000 == 0:
        return f"{nanos // 1_000}us"
    return f"{nanos}ns"
