"""`labelsync ARGS…` as a user runs it: a process of its own, with the given environment."""

from __future__ import annotations

import subprocess
import sys


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Its exit code, stdout and stderr (text); a non-zero exit is the caller's to judge."""
    return subprocess.run(
        [sys.executable, "-m", "labelsync.app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
