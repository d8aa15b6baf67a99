"""Defaults that more than one layer states: each defined once, here, and imported.

`settings.py` declares them as the defaults of the LABELSYNC_* settings of the same
names; the functions and records that take the same value as an argument (rendering,
the resolver, the dynamic budget, the label parser) default to the same constant, so a
call without settings behaves as the daemon does with default settings. The core sits
below every layer, so each of them may import this module.
"""

from __future__ import annotations

from typing import Final

LABEL_PREFIX: Final = "labelsync"
"""Prefix of every label labelsync reads (`LABELSYNC_LABEL_PREFIX`)."""

CADDY_SERVER: Final = "labelsync"
"""Server name in apps.http.servers that labelsync writes into (`LABELSYNC_CADDY_SERVER`)."""

LISTEN: Final = (":80", ":443")
"""Listen addresses of the server labelsync creates (`LABELSYNC_LISTEN`, comma-separated)."""

AUTO_HTTPS: Final = "on"
"""Caddy automatic HTTPS for the server labelsync creates (`LABELSYNC_AUTO_HTTPS`)."""

UPSTREAMS: Final = "dynamic"
"""Membership through the built-in resolver (`LABELSYNC_UPSTREAMS`)."""

RESOLVER_LISTEN: Final = "127.0.0.1:8053"
"""Where the built-in resolver answers, and what Caddy is told (`LABELSYNC_RESOLVER_LISTEN`)."""

RESOLVER_REFRESH: Final = "150ms"
"""How often Caddy re-reads a pool's members (`LABELSYNC_RESOLVER_REFRESH`)."""

STREAM_CLOSE_DELAY: Final = "10m"
"""How long upgraded connections outlive a Caddy reload (`LABELSYNC_STREAM_CLOSE_DELAY`)."""

DYNAMIC_BUDGET: Final = 90
"""Most pools served by the resolver (`LABELSYNC_DYNAMIC_BUDGET`; membership/budget.py)."""

UNSET_WORDS: Final = ("", "off", "none", "false", "0")
"""What an optional setting (an address, a path) may be set to, to mean "not set"."""

DOCKER_SOCKET: Final = "/var/run/docker.sock"
"""The Docker engine's socket when neither `LABELSYNC_DOCKER_HOST` nor `DOCKER_HOST` is set."""

CADDY_METRICS: Final = "auto"
"""Caddy's per-host request metrics (`LABELSYNC_CADDY_METRICS`): `auto` reads them where
they are on and turns them on in the bundled Caddy only if `BUNDLED_CADDY_METRICS`; `on`
turns them on in every Caddy, the bundled one and an external one; `off` neither writes
nor reads."""

BUNDLED_CADDY_METRICS: Final = False
"""Whether `auto` turns per-host metrics on in the bundled Caddy: no, they cost it more
than 5 % of its throughput in the busy-pools bench (docs/performance.md), so they are
opt-in (`LABELSYNC_CADDY_METRICS=on`)."""
