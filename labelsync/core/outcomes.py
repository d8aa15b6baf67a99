"""What one sync of the loop came to; shared by the loop and everything that reports it.

The values are the `result` label of `labelsync_applies_total` (docs/operations.md, metrics table).
"""

from __future__ import annotations

from enum import StrEnum


class SyncResult(StrEnum):
    """The outcome of one sync (snapshot, build, apply)."""

    APPLIED = "applied"
    """Admin writes were sent and Caddy took them."""
    UNCHANGED = "unchanged"
    """Caddy already held what the labels say; nothing written."""
    DOCKER_UNAVAILABLE = "docker_unavailable"
    """The engine did not answer; Caddy left as it is."""
    CADDY_FAILED = "caddy_failed"
    """A temporary Caddy error (unreachable, busy, conflicts); retried with backoff."""
    CADDY_REFUSED = "caddy_refused"
    """Caddy refused the config; not sent again until the routes change or the resync."""

    @property
    def ok(self) -> bool:
        """Caddy holds what the labels say."""
        return self in (SyncResult.APPLIED, SyncResult.UNCHANGED)
