"""What a test needs from the machine (Docker, compose, Chromium, systemd-analyze ...), and
what happens when it is missing: the test skips, except under CI (env `CI` set), where it
fails, since CI must never pass by skipping."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def skip_or_fail_under_ci(reason: str, *, ci_note: str = "") -> NoReturn:
    """Skip the test for `reason`; under CI fail instead, with `reason + ci_note` (say,
    `" (CI is set: Docker tests must run)"`) as the message, without a traceback."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}{ci_note}", pytrace=False)
    pytest.skip(reason)


def systemd_analyze() -> str:
    """The path of `systemd-analyze`; skips (fails under CI) when it is not installed."""
    found = shutil.which("systemd-analyze")
    if found is None:
        skip_or_fail_under_ci(
            "systemd-analyze is not installed (Debian: apt-get install systemd)",
            ci_note="; CI is set: scripts/ensure-docker.sh installs it",
        )
    return found
