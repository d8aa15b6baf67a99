"""Prometheus text as labelsync reads it (core/prometheus_text.py): the samples asked for,
as prometheus_client's own parser reads them, from Caddy's real output and from any text."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from labelsync.core.prometheus_text import parse_sample, parse_samples

CADDY_METRICS = Path(__file__).parent / "data" / "caddy-2.11.7-metrics.txt"


def reference(text: str, names: set[str]) -> list[tuple[str, dict[str, str], float]]:
    """The samples prometheus_client finds, in order, of the names asked for."""
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name in names
    ]


def ours(text: str, names: set[str]) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, dict(s.labels), s.value) for s in parse_samples(text, names)]


def test_caddys_own_output_reads_as_prometheus_client_reads_it() -> None:
    text = CADDY_METRICS.read_text()
    names = {
        "caddy_http_requests_total",
        "caddy_http_request_errors_total",
        "caddy_http_request_duration_seconds_bucket",
        "caddy_http_request_duration_seconds_count",
        "caddy_config_last_reload_success_timestamp_seconds",
    }
    found = ours(text, names)
    assert found == reference(text, names)
    assert len(found) > 50
    # Only the names asked for: a histogram's parts are names of their own.
    assert {name for name, _, _ in found} == names
    assert not ours(text, {"caddy_http_request_duration_seconds"})


def test_a_sample_line() -> None:
    sample = parse_sample('m_total{a="1",b="two words"} 3 1700000000000')
    assert sample is not None
    assert (sample.name, dict(sample.labels), sample.value) == (
        "m_total",
        {"a": "1", "b": "two words"},
        3.0,
    )
    bucket = parse_sample('h_bucket{le="+Inf"} 12')
    assert bucket is not None and bucket.labels["le"] == "+Inf" and bucket.value == 12
    bare = parse_sample("up 1")
    assert bare is not None and bare.labels == {} and bare.value == 1
    nan = parse_sample("x NaN")
    assert nan is not None and math.isnan(nan.value)
    assert parse_sample('m{a="1"} +Inf') == ("m", {"a": "1"}, math.inf)
    escaped = parse_sample('m{path="C:\\\\x \\"q\\" }{\\n"} 1')
    assert escaped is not None and escaped.labels["path"] == 'C:\\x "q" }{\n'
    spaced = 'm{a="1", b="x}{=,",} 3'  # blanks, a trailing comma, braces in a value
    assert parse_sample(spaced) == ("m", {"a": "1", "b": "x}{=,"}, 3.0)
    assert ours(spaced + "\n", {"m"}) == reference(spaced + "\n", {"m"})
    assert parse_sample("m{} 2") == ("m", {}, 2.0)
    assert parse_sample("m{a=} 1") is None
    assert parse_sample('m{a="1" 1') is None
    assert parse_sample("m") is None
    assert parse_sample("m one") is None


# Quotes, backslashes, braces, newlines, any script (utf-8: no lone surrogates).
label_values = st.text(st.characters(codec="utf-8"), max_size=12)
names = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
label_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)  # `__*` is reserved


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@given(
    st.lists(
        st.tuples(
            names,
            st.dictionaries(label_names, label_values, max_size=3),
            st.floats(allow_nan=False) | st.integers(-(10**9), 10**9),
        ),
        max_size=8,
    )
)
def test_any_exposition_reads_as_prometheus_client_reads_it(
    samples: list[tuple[str, dict[str, str], float]],
) -> None:
    lines = []
    for name, labels, value in samples:
        inside = ",".join(f'{key}="{escape(text)}"' for key, text in labels.items())
        lines.append(f"# HELP {name} anything\n# TYPE {name} untyped")
        lines.append(f"{name}{{{inside}}} {float(value)!r}" if labels else f"{name} {value!r}")
    text = "\n".join(lines) + "\n"
    wanted = {name for name, _, _ in samples}
    assert ours(text, wanted) == reference(text, wanted)
