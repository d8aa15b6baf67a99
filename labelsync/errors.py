"""One exception hierarchy for everything labelsync raises at its edges.

Bad labels are never raised: the pure core returns them as `Problem` records.

Caddy's errors are sorted by what to do about them:

    CaddyError
    ├── CaddyRefused        Caddy refused the config: permanent for that content
    └── CaddyTemporary      the same request may succeed later
        ├── CaddyUnavailable    no answer (socket missing, refused, timed out)
        ├── CaddyBusy           an error status not about the config (e.g. 502, 503)
        ├── CaddyConflict       412/409: the config changed since we read it
        └── CaddyNotFound       404: the path or @id is gone (someone edited meanwhile)

A temporary error is retried (re-read first, then backoff); a refused config is not sent
again until what labelsync wants to write changes.
"""

from __future__ import annotations


class LabelsyncError(Exception):
    """Base of every error labelsync raises on purpose."""


class ConfigError(LabelsyncError):
    """Settings or a static file that cannot be used."""


class DockerUnavailable(LabelsyncError):
    """The Docker engine could not be reached (socket missing, refused, timed out)."""


class CaddyError(LabelsyncError):
    """Base of errors talking to Caddy's admin API.

    `method` and `path` name the request, `status` Caddy's answer (0 when there was none)
    and `body` Caddy's error text.
    """

    def __init__(
        self, message: str, *, method: str = "", path: str = "", status: int = 0, body: str = ""
    ) -> None:
        super().__init__(message)
        self.method = method
        self.path = path
        self.status = status
        self.body = body


class CaddyRefused(CaddyError):
    """Caddy refused the config we sent (400 on /load, 500 or 400 on a config write).

    Permanent for that content: sending it again gets the same answer. The old config
    keeps serving.
    """


class CaddyTemporary(CaddyError):
    """Base of errors after which the same request may succeed: retry, re-reading first."""


class CaddyUnavailable(CaddyTemporary):
    """Caddy's admin endpoint did not answer."""


class CaddyBusy(CaddyTemporary):
    """Caddy (or something in front of it) answered an error that is not about the config."""


class CaddyConflict(CaddyTemporary):
    """412/409: the config changed since we read it (If-Match failed, or the key exists)."""


class CaddyNotFound(CaddyTemporary):
    """404: the path or @id does not exist (any more)."""
