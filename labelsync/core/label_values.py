"""Parsers for single label values: text in, typed value out, `LabelValueError` otherwise.

Each parser knows nothing of routes or containers; `labels.py` decides which key uses
which parser and what a bad value means for the route. Error messages are written to
be read after `labelsync.<key>='<value>': `, so they start lower-case and name the fix.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

import re2  # type: ignore[import-untyped]

from labelsync.core.durations import normalize_duration, parse_duration
from labelsync.core.engines import Reach
from labelsync.core.model import RETRIES_AUTO, Track

T = TypeVar("T", str, int)  # what a comma-separated list holds

POLICIES = (
    "random",
    "round_robin",
    "weighted_round_robin",
    "least_conn",
    "ip_hash",
    "client_ip_hash",
    "uri_hash",
    "first",
    "cookie",
    "header",
    "query",
    "random_choose",
)
SCHEMES = ("http", "https", "h2c")
TRACKS = tuple(track.value for track in Track)  # plain strings: `did_you_mean` repr()s one
REACHES = tuple(reach.value for reach in Reach)

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# RFC 9110 token: header names, cookie names.
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# The longest duration Go (and so Caddy) can hold: int64 nanoseconds.
_MAX_DURATION_SECONDS = (2**63 - 1) / 1e9
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # the error goes into the problem, not to stderr


class LabelValueError(ValueError):
    """A label value that cannot be used; the message says why and what would work."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """`; did you mean 'x'?` for the nearest choice, or the list of choices."""
    options = list(choices)
    nearest = difflib.get_close_matches(value, options, n=1, cutoff=0.6)
    if nearest:
        return f"; did you mean {nearest[0]!r}?"
    return f" (one of: {', '.join(options)})"


def choice(kind: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    """A parser accepting one of `choices`, case-insensitively."""

    def parse(text: str) -> str:
        value = text.strip().lower()
        if value in choices:
            return value
        raise LabelValueError(f"unknown {kind}{did_you_mean(value, choices)}")

    return parse


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    nearest = difflib.get_close_matches(value, (*_TRUE, *_FALSE), n=1, cutoff=0.6)
    hint = f"; did you mean {nearest[0]!r}?" if nearest else ""
    raise LabelValueError(f"not a boolean (true/false, yes/no, on/off, 1/0){hint}")


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """A parser for a plain decimal integer within [minimum, maximum]."""

    def parse(text: str) -> int:
        value = text.strip()
        if not re.fullmatch(r"-?[0-9]{1,18}", value):
            raise LabelValueError(f"not a whole number{_range_hint(minimum, maximum)}")
        number = int(value)
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise LabelValueError(f"out of range{_range_hint(minimum, maximum)}")
        return number

    return parse


def _range_hint(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f" (use {minimum}..{maximum})"
    if minimum is not None:
        return f" (use {minimum} or more)"
    if maximum is not None:
        return f" (use {maximum} or less)"
    return ""


parse_port = integer(1, 65535)


def duration(*, positive: bool) -> Callable[[str], str]:
    """A parser for a Go duration, returned normalised (`90s` -> `1m30s`)."""

    def parse(text: str) -> str:
        try:
            seconds = parse_duration(text)
        except ValueError as exc:
            raise LabelValueError(str(exc).replace(f": {text!r}", "")) from None
        if not math.isfinite(seconds) or seconds > _MAX_DURATION_SECONDS:
            raise LabelValueError("duration too long")
        if positive and seconds <= 0:
            raise LabelValueError("must be longer than 0 (e.g. 250ms, 5s, 1m30s)")
        return normalize_duration(text)

    return parse


def parse_optional_duration(text: str) -> str | None:
    """A duration where `0` means off (None)."""
    value = duration(positive=False)(text)
    return None if value == "0s" else value


def parse_retries(text: str) -> int | str:
    value = text.strip().lower()
    if value == RETRIES_AUTO:
        return RETRIES_AUTO
    try:
        return integer(0, 1000)(value)
    except LabelValueError:
        raise LabelValueError("not a retry count (use a whole number >= 0, or auto)") from None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def is_dns_name(name: str) -> bool:
    if not name or len(name) > 253:
        return False
    return all(_DNS_LABEL.fullmatch(label) for label in name.split("."))


def _host_name(item: str) -> str:
    """One entry of `host`: a DNS name (optionally `*.`-prefixed), localhost or an IP."""
    if item.startswith("[") and item.endswith("]") and is_ip(item[1:-1]):
        return item[1:-1]
    if is_ip(item):
        return item
    name = item[2:] if item.startswith("*.") else item
    if is_dns_name(name):
        return item
    if ":" in item and is_dns_name(item.rsplit(":", 1)[0].removeprefix("*.")):
        raise LabelValueError(f"{item!r}: host names carry no port (set labelsync.port)")
    raise LabelValueError(f"{item!r} is not a host name (e.g. app.example.com, *.example.com)")


def _comma_list(text: str, parse: Callable[[str], T], nothing: str) -> tuple[T, ...]:
    """Comma-separated items, each trimmed, lower-cased and parsed; de-duplicated, sorted.
    `nothing` is the error when no item is given."""
    items = [item.strip().lower() for item in text.split(",")]
    parsed = {parse(item) for item in items if item}
    if not parsed:
        raise LabelValueError(nothing)
    return tuple(sorted(parsed))


def parse_hosts(text: str) -> tuple[str, ...]:
    """Comma-separated host names: trimmed, lower-cased, de-duplicated, sorted."""
    return _comma_list(text, _host_name, "no host name given (e.g. app.example.com)")


def parse_server_name(text: str) -> str:
    value = text.strip().lower()
    if is_dns_name(value) or is_ip(value):
        return value
    raise LabelValueError("not a server name (e.g. app.internal)")


def parse_path(text: str) -> str:
    value = text.strip()
    if not value.startswith("/"):
        hint = f"; did you mean {'/' + value!r}?" if value else ""
        raise LabelValueError(f"must start with '/'{hint}")
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        raise LabelValueError("must not contain spaces or control characters")
    return value


_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def parse_health_path(text: str) -> str:
    """The URI of an active check: a path as above that Go's url.Parse takes too."""
    value = parse_path(text)
    if _BAD_PERCENT.search(value):
        raise LabelValueError("'%' must start an escape of two hex digits (e.g. %20)")
    return value


def parse_address(text: str) -> str:
    """`host:port`: DNS name, IPv4, or bracketed IPv6, with a port; normalised."""
    value = text.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise LabelValueError("needs host:port (e.g. 10.0.0.5:8080, [fd00::5]:8080)")
    try:
        port = parse_port(port_text)
    except LabelValueError:
        raise LabelValueError(f"{port_text!r} is not a port (use 1..65535)") from None
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        if is_ip(inner) and ipaddress.ip_address(inner).version == 6:
            return f"[{ipaddress.ip_address(inner).compressed}]:{port}"
        raise LabelValueError(f"{host!r} is not a bracketed IPv6 address")
    if ":" in host:
        raise LabelValueError("IPv6 addresses need brackets: [fd00::5]:8080")
    if is_ip(host):
        return f"{host}:{port}"
    if is_dns_name(host.lower()):
        return f"{host.lower()}:{port}"
    raise LabelValueError(f"{host!r} is not a host name or IP address")


def member_address(ip: str, port: int) -> str | None:
    """`ip:port` for a network address read from Docker, or None if it is no IP."""
    if not is_ip(ip):
        return None
    parsed = ipaddress.ip_address(ip)
    return f"[{parsed.compressed}]:{port}" if parsed.version == 6 else f"{parsed}:{port}"


def is_unspecified(ip: str) -> bool:
    """True for a binding to every address of the host (`0.0.0.0`, `::`) or to none given."""
    return not ip or (is_ip(ip) and ipaddress.ip_address(ip).is_unspecified)


def is_loopback(host: str) -> bool:
    """True for a loopback address (`127.0.0.2`, `::1`) or `localhost`."""
    if host.lower() == "localhost":
        return True
    return is_ip(host) and ipaddress.ip_address(host).is_loopback


def join_address(host: str, port: int) -> str:
    """`host:port` for an IP address (`member_address`) or a host name (lower-cased)."""
    return member_address(host, port) or f"{host.lower()}:{port}"


def address_port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _status(item: str) -> int:
    if re.fullmatch(r"[1-5]xx", item):
        return int(item[0])
    if re.fullmatch(r"[1-5][0-9][0-9]", item):
        return int(item)
    raise LabelValueError(f"{item!r} is not a status (use a code like 200 or a class like 2xx)")


def parse_status(text: str) -> int:
    """`200` -> 200; `2xx` -> 2, the class digit Caddy's expect_status takes."""
    return _status(text.strip().lower())


def parse_status_list(text: str) -> tuple[int, ...]:
    """`5xx,429` -> (5, 429): codes and class digits as Caddy's unhealthy_status takes."""
    return _comma_list(text, _status, "no status given (e.g. 5xx,429)")


class BodyPattern(Protocol):
    """A compiled `health.body`: `search` finds the pattern anywhere in the text."""

    def search(self, text: str) -> object | None: ...


def parse_regex(text: str) -> str:
    """A regular expression Caddy (Go's regexp, RE2 syntax) can compile; returned unchanged.

    Checked by RE2 itself (see `compile_body_pattern`): Python's `re` accepts possessive
    quantifiers (`ok++`), atomic groups, lookarounds, backreferences, `\\Z`, `\\u0041`,
    `(?x)` ..., which Caddy refuses.
    """
    compile_body_pattern(text)
    return text


@functools.lru_cache(maxsize=256)
def compile_body_pattern(text: str) -> BodyPattern:
    """`health.body` compiled the way Caddy's `expect_body` compiles it: RE2 (Go syntax).

    The one place that says which engine and options `health.body` uses: the label
    validator and labelsync's own active checks both call it, so a pattern that passes
    validation also compiles for the checks. Search the result anywhere in the body, as
    Go's `regexp.Match` does. Raises `LabelValueError` for what Go's regexp refuses
    (including `\\C`, which RE2 accepts and Go does not). Cached by pattern text.
    """
    if _has_escape(text, "C"):
        raise LabelValueError(
            "not a Go (RE2) regular expression: invalid escape sequence: \\C (any byte)"
        )
    try:
        compiled: BodyPattern = re2.compile(text, options=_RE2_OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise LabelValueError(f"not a Go (RE2) regular expression: {reason}") from None
    return compiled


def _has_escape(text: str, letter: str) -> bool:
    """True when `text` holds the escape `\\<letter>` (not an escaped backslash before it)."""
    index = 0
    while index < len(text) - 1:
        if text[index] == "\\":
            if text[index + 1] == letter:
                return True
            index += 2
        else:
            index += 1
    return False


def parse_token(text: str) -> str:
    """A cookie, header or query-parameter name."""
    value = text.strip()
    if _TOKEN.fullmatch(value):
        return value
    raise LabelValueError("not a valid name (letters, digits and -_.!#$%&'*+^`|~)")


def is_header_name(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def parse_text(text: str) -> str:
    value = text.strip()
    if not value:
        raise LabelValueError("empty value")
    return value
