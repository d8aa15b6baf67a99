"""Fixtures for running labelsync the way users do: the example compose files, the image
built from the Containerfile, Caddy in a container. The stand-in images
(`tests/support/stack_images.py`) are built once per session and cached by content across
sessions. Without Docker, compose or mmdebstrap these tests skip, except under CI (env
`CI` set), where they fail.
"""

from __future__ import annotations

import time
from typing import NoReturn

import docker
import pytest

from tests.support.compose import compose_available
from tests.support.images import TestImages
from tests.support.requirements import skip_or_fail_under_ci
from tests.support.stack_images import StackImages, StackImagesUnavailable, ensure_stack_images


def unavailable(reason: str) -> NoReturn:
    skip_or_fail_under_ci(reason, ci_note=" (CI is set: deployment tests must run)")


@pytest.fixture(scope="session")
def stack_images(
    docker_client: docker.DockerClient, images: TestImages, request: pytest.FixtureRequest
) -> StackImages:
    """The stand-ins for `caddy`, `traefik/whoami` and `python:3.11-slim`, and the labelsync
    image built from the Containerfile on them."""
    missing = compose_available()
    if missing:
        unavailable(missing)
    started = time.monotonic()
    try:
        built = ensure_stack_images(docker_client, images)
    except StackImagesUnavailable as exc:
        unavailable(str(exc))
    seconds = ", ".join(f"{name} {took:.0f}s" for name, took in built.build_seconds.items())
    terminal = request.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.write_line(
            f"\nstack images ready in {time.monotonic() - started:.1f}s ({seconds}; 0s = cached)"
        )
    return built
