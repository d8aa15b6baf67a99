"""One exception hierarchy for everything labelsync raises at its edges.

Bad labels are never raised: the pure core returns them as `Problem` records.
"""

from __future__ import annotations


class LabelsyncError(Exception):
    """Base of every error labelsync raises on purpose."""


class ConfigError(LabelsyncError):
    """Settings or a static file that cannot be used."""


class DockerUnavailable(LabelsyncError):
    """The Docker engine could not be reached (socket missing, refused, timed out)."""


class CaddyError(LabelsyncError):
    """Base of errors talking to Caddy's admin API."""

    def __init__(
        self, message: str, *, method: str = "", path: str = "", status: int = 0, body: str = ""
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.body = body


class CaddyUnavailable(CaddyError):
    """Caddy's admin endpoint did not answer."""


class CaddyNotFound(CaddyError):
    """404: the path or @id does not exist."""


class CaddyConflict(CaddyError):
    """412: the config changed since we read it (If-Match failed)."""


class CaddyRejected(CaddyError):
    """400/500 on a write: Caddy refused the config; the old config keeps serving."""
