"""The daemon's live view, as a small JSON file that `labelsync status` reads.

`labelsync status` is another process: the health verdicts of labelsync's own active
checks, which containers form each pool and whether Docker and Caddy answer live only in
the daemon. So the daemon writes them to a state file after every sync, health flip and
Docker stream change (coalesced, written atomically: a reader never sees half a file),
and removes it when it stops.

Where it lives: `LABELSYNC_STATE_FILE` when set, else `$XDG_RUNTIME_DIR/labelsync/
state.json`, else `/run/labelsync/state.json` for root (the unit's RuntimeDirectory), else
`/tmp/labelsync-<uid>/state.json`. Readers also look in `/run/labelsync/`, so a root shell
whose XDG_RUNTIME_DIR is `/run/user/0` still finds the system service's file.

The file holds the JSON form of the daemon's `Snapshot` (`snapshot_json.py`): facts
such as Docker's health, the check's verdict and reason, whether the member is in its
pool's answer. Judging them into healthy/unhealthy/unknown is left to the reader, which adds
what Caddy knows (`labelsync.app.status`). This module only finds and writes the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger

from labelsync.core.model import JSON
from labelsync.report.snapshot_json import STATE_VERSION
from labelsync.report.views import Snapshot

if TYPE_CHECKING:
    from labelsync.settings import Settings

STATE_NAME = "state.json"
SYSTEM_RUNTIME_DIR = Path("/run/labelsync")


def default_state_file() -> Path:
    """Where the daemon writes its state when `LABELSYNC_STATE_FILE` is unset."""
    xdg_runtime = os.environ.get("XDG_RUNTIME_DIR")
    if xdg_runtime:
        return Path(xdg_runtime) / "labelsync" / STATE_NAME
    if os.geteuid() == 0:
        return SYSTEM_RUNTIME_DIR / STATE_NAME
    return Path(tempfile.gettempdir()) / f"labelsync-{os.getuid()}" / STATE_NAME


def state_file_path(settings: Settings) -> Path:
    return settings.state_file or default_state_file()


def state_file_candidates(settings: Settings) -> list[Path]:
    """Where a reader looks, in order: the setting alone when set, else the defaults."""
    if settings.state_file is not None:
        return [settings.state_file]
    candidates = [default_state_file(), SYSTEM_RUNTIME_DIR / STATE_NAME]
    return list(dict.fromkeys(candidates))


def process_alive(pid: int) -> bool:
    """True when a process with this pid exists (owned by anyone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user (the service's own)
    return True


def read_state_file(path: Path) -> JSON | None:
    """The state a daemon wrote at `path`; None when missing, unreadable or foreign."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(payload, dict) or payload.get("version") != STATE_VERSION:
        return None
    return payload


def write_state_file(path: Path, payload: JSON) -> None:
    """Replace `path` atomically (a temporary file in the same directory, then rename)."""
    _prepare_directory(path.parent)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as out:
            json.dump(payload, out, indent=1, sort_keys=True)
            out.write("\n")
        os.chmod(temporary, 0o640)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _prepare_directory(directory: Path) -> None:
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    # A shared parent (/tmp) could hold someone else's directory or a symlink by that name.
    info = directory.lstat()
    if directory.is_symlink() or info.st_uid != os.geteuid():
        raise PermissionError(f"{directory} is not a directory owned by this user")


class StateFileWriter:
    """Writes the daemon's state to `path` soon after each `request()`, coalescing bursts.

    `snapshot` gives the current snapshot at write time, so a burst of requests costs
    one write of the newest state.
    """

    def __init__(self, path: Path, snapshot: Callable[[], Snapshot]) -> None:
        self.path = path
        self.snapshot = snapshot
        self.writes = 0
        self._pending = False
        self._last_failure: str | None = None
        self._last_written: JSON | None = None

    def request(self) -> None:
        """Schedule a write on the running loop (one per loop turn, however many ask)."""
        if self._pending:
            return
        self._pending = True
        asyncio.get_running_loop().call_soon(self.write_now)

    def write_if_changed(self) -> None:
        """Write when anything but the time differs from the last write (called every
        second: a check's first verdict or a new failure reason flips nothing)."""
        payload = self.snapshot().to_json()
        if _timeless(payload) != self._last_written:
            self._write(payload)

    def write_now(self) -> None:
        self._pending = False
        self._write(self.snapshot().to_json())

    def _write(self, payload: JSON) -> None:
        try:
            write_state_file(self.path, payload)
        except OSError as exc:
            failure = f"{exc}"
            if failure != self._last_failure:
                logger.warning(
                    f"cannot write the state file {self.path} ({failure}); `labelsync status` "
                    "will not see live health. Set LABELSYNC_STATE_FILE to a writable path"
                )
                self._last_failure = failure
            return
        self._last_failure = None
        self._last_written = _timeless(payload)
        self.writes += 1

    def remove(self) -> None:
        """Remove the file on a clean stop (no reader should trust it any more), unless
        another labelsync has written it since."""
        current = read_state_file(self.path)
        if current is not None and current.get("pid") != os.getpid():
            return
        with contextlib.suppress(OSError):
            self.path.unlink()


def _timeless(payload: JSON) -> JSON:
    return {key: value for key, value in payload.items() if key != "written_at"}
