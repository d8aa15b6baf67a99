"""`labelsync status`: each pool's upstreams with health and counts."""

from __future__ import annotations

from labelsync.settings import Settings


async def run_status(settings: Settings, *, as_json: bool) -> int:
    """Print the status table (or JSON); the exit code."""
    raise NotImplementedError
