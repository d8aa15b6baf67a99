"""The ETag Caddy will give a server whose content we know, without reading it.

Caddy's ETag of a config path is `"<path> <xxhash64>"`, the hash of the JSON its GET
answers there: Go's encoding of the stored value (object keys sorted, no spaces,
`<`, `>`, `&`, U+2028 and U+2029 escaped, UTF-8 as is) and a newline. After a write
of ours the content is what the write left, so its ETag can be computed here and the
next write sent with it at once. A prediction is only ever an If-Match: when it is
wrong (someone else edited the server, or a value Go encodes differently, such as a
float) Caddy answers 412 and the loop reads, as for any stale ETag.

Each route's encoding is kept while the loop holds that very route object (rendered
routes are reused from sync to sync), so a prediction encodes only new routes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import xxhash

from labelsync.core.model import JSON

_GO_ESCAPES = (
    ("<", "\\u003c"),
    (">", "\\u003e"),
    ("&", "\\u0026"),
    ("\u2028", "\\u2028"),
    ("\u2029", "\\u2029"),
)


def go_json(value: Any) -> str:
    """`value` as Go's encoding/json writes it (for the values a config holds)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in _GO_ESCAPES:
        if char in text:
            text = text.replace(char, escaped)
    return text


def etag_path(etag: str) -> str | None:
    """The config path an ETag names (`"<path> <hash>"`), or None."""
    inner = etag.strip('"')
    path, _, digest = inner.rpartition(" ")
    return path if path and digest else None


class EtagPredictor:
    """Computes a server's ETag from its content; keeps each route's encoding."""

    def __init__(self) -> None:
        # id(route) -> (route, its encoding); holding the route keeps its id() unique
        self._encoded: dict[int, tuple[JSON, bytes]] = {}

    def etag(self, path: str, rest: JSON, routes: Sequence[JSON]) -> str:
        """The ETag of `rest` (the server without `routes`) with `routes` at `path`."""
        encoded = self._encoded
        if len(encoded) > 2 * len(routes) + 64:  # routes long gone: start over
            encoded = self._encoded = {}
        get = encoded.get
        parts = []
        for route in routes:
            entry = get(id(route))
            if entry is None or entry[0] is not route:
                entry = encoded[id(route)] = (route, go_json(route).encode())
            parts.append(entry[1])
        # Hashed piece by piece: the body (hundreds of KB) is never put together.
        digest = xxhash.xxh64()
        separator = b"{"
        for key, value in sorted({**rest, "routes": None}.items()):
            digest.update(separator + go_json(key).encode() + b":")
            separator = b","
            if key != "routes":
                digest.update(go_json(value).encode())
                continue
            digest.update(b"[")
            for index, part in enumerate(parts):
                if index:
                    digest.update(b",")
                digest.update(part)
            digest.update(b"]")
        digest.update(b"}\n")
        return f'"{path} {digest.hexdigest()}"'
