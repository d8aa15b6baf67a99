"""The image's entrypoint: which socket's group it takes, and what it says when it cannot
take it or cannot drop root."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from labelsync.app import entrypoint


def test_the_socket_is_the_one_labelsync_will_open() -> None:
    assert entrypoint.docker_socket({}) == "/var/run/docker.sock"
    assert entrypoint.docker_socket({"DOCKER_HOST": "unix:///run/d.sock"}) == "/run/d.sock"
    chosen = {"LABELSYNC_DOCKER_HOST": "unix://run/x.sock", "DOCKER_HOST": "unix:///y"}
    assert entrypoint.docker_socket(chosen) == "/run/x.sock"
    assert entrypoint.docker_socket({"LABELSYNC_DOCKER_HOST": "off"}) == "/var/run/docker.sock"
    assert entrypoint.docker_socket({"DOCKER_HOST": "tcp://10.0.0.1:2376"}) is None


def test_a_missing_socket_is_a_warning(tmp_path: Path) -> None:
    gid, line, warn = entrypoint.socket_group(str(tmp_path / "docker.sock"))
    assert gid is None and warn and "no Docker socket" in line
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "docker.sock"))
        (tmp_path / "docker.sock").chmod(0o660)
        gid, line, warn = entrypoint.socket_group(str(tmp_path / "docker.sock"))
    assert gid == (tmp_path / "docker.sock").stat().st_gid
    assert not warn and line.startswith("took the group of")


def test_root_without_setuid_says_how_to_run_as_the_image_user(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setgroups", refused)
    monkeypatch.setattr(entrypoint, "added_groups", lambda: [])
    entrypoint.drop_privileges({"LABELSYNC_DOCKER_HOST": "tcp://10.0.0.1:2376"})
    (line,) = capsys.readouterr().err.splitlines()
    assert "WARNING" in line and "cap_add: [SETUID, SETGID]" in line, line
