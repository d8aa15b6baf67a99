"""How the settings shape the core's build and the rendering of pools (the daemon, and
`labelsync render` and `check`, which must build exactly as the daemon does)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence

from labelsync.caddy.render import RenderOptions
from labelsync.core.model import ContainerInfo, DesiredState, Problem
from labelsync.core.pools import ParseMemo, build_desired
from labelsync.settings import Settings


def build_from_settings(
    settings: Settings,
    containers: Iterable[ContainerInfo],
    *,
    problems: Sequence[Problem] = (),
    withdrawn: Collection[str] = (),
    memo: ParseMemo | None = None,
) -> DesiredState:
    """The core's build with the settings that shape it (the daemon, `render`, `check`);
    `problems` found before the build (the static file's) come first."""
    desired = build_desired(
        containers,
        prefix=settings.label_prefix,
        default_network=settings.network,
        dynamic=settings.upstreams == "dynamic",
        withdrawn=withdrawn,
        memo=memo,
    )
    if problems:
        desired = DesiredState(desired.pools, (*problems, *desired.problems))
    return desired


def render_options(settings: Settings, json_pools: frozenset[str] = frozenset()) -> RenderOptions:
    """How the settings want pools rendered into Caddy's JSON."""
    return RenderOptions(
        upstreams=settings.upstreams,
        resolver=settings.resolver_address,
        resolver_refresh=settings.resolver_refresh,
        stream_close_delay=settings.stream_close_delay,
        dial_timeout=settings.dial_timeout or None,
        json_pools=json_pools,
    )
