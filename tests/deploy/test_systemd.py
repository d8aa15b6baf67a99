"""systemd/labelsync.service for real: systemd as PID 1 in a container built from the
Debian stand-in (not privileged: this engine refuses privileged containers, and systemd
boots without), with labelsync installed where the unit expects it. The unit starts and
reports READY with a STATUS line, reloads on `systemctl reload`, and stops within its
TimeoutStopSec. Hardening the container cannot give (namespaces, cgroup IDs) systemd
skips with a notice, as on any container manager.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import docker
import pytest
from docker.models.containers import Container

from tests.support.compose import docker_socket_gid
from tests.support.containers import SESSION_ID, TEST_ID_LABEL, TEST_SESSION_LABEL, short_uuid
from tests.support.containers import test_id_for as id_for
from tests.support.stack_images import StackImages, ensure_systemd
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(600)
UNIT = "labelsync.service"
TIMEOUT_STOP = 15.0  # the unit's TimeoutStopSec


def run(container: Container, command: str) -> tuple[int, str]:
    result = container.exec_run(["sh", "-c", command])
    return result.exit_code, result.output.decode(errors="replace")


def show(container: Container, *properties: str) -> dict[str, str]:
    _, output = run(container, f"systemctl show {UNIT} -p {','.join(properties)}")
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def machine(
    stack_images: StackImages, docker_client: docker.DockerClient, request: pytest.FixtureRequest
) -> Iterator[Container]:
    image, took = ensure_systemd(docker_client, stack_images.python)
    print(f"\nsystemd image {image} ({took:.0f}s to build; 0 = cached)")
    container = docker_client.containers.run(
        image,
        name=f"lssystemd-{short_uuid()}",
        detach=True,
        tmpfs={"/run": "", "/run/lock": ""},
        volumes={
            "/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "ro"},
            "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"},
        },
        labels={TEST_ID_LABEL: id_for(request.node.nodeid), TEST_SESSION_LABEL: SESSION_ID},
    )
    try:
        wait_until(
            lambda: (
                run(container, "systemctl is-system-running")[1].strip() in {"running", "degraded"}
            ),
            timeout=60,
            interval=0.5,
            message="systemd to boot in the container",
        )
        # The unit's SupplementaryGroups=docker: the socket's group, as on a real host.
        run(container, f"groupmod -g {docker_socket_gid()} docker")
        yield container
    finally:
        container.remove(force=True)


def test_the_unit_starts_and_reports_ready_with_a_status(machine: Container) -> None:
    code, output = run(machine, f"systemctl start {UNIT}")
    assert code == 0, output  # Type=notify: returns once labelsync sent READY=1

    def with_status() -> dict[str, str] | None:
        shown = show(machine, "ActiveState", "StatusText")
        return shown if shown["StatusText"] else None

    state = wait_until(
        with_status,
        timeout=30,
        message="a STATUS line",
    )
    assert state["ActiveState"] == "active", state
    assert state["StatusText"].startswith("in sync"), state


def test_systemctl_reload_reaches_the_daemon_and_keeps_it_running(machine: Container) -> None:
    before = show(machine, "MainPID")["MainPID"]
    code, output = run(machine, f"systemctl reload {UNIT}")
    assert code == 0, output + run(machine, f"journalctl -u {UNIT} --no-pager | tail -5")[1]
    after = show(machine, "MainPID", "ActiveState")
    assert after == {"MainPID": before, "ActiveState": "active"}, after
    wait_until(
        lambda: "SIGHUP" in run(machine, f"journalctl -u {UNIT} --no-pager -n 30")[1],
        timeout=10,
        message="labelsync's log line for the SIGHUP",
    )


def test_the_unit_stops_within_its_timeout(machine: Container) -> None:
    started = time.monotonic()
    code, output = run(machine, f"systemctl stop {UNIT}")
    took = time.monotonic() - started
    print(f"\nsystemctl stop {UNIT}: {took:.2f}s")
    assert code == 0, output
    state = show(machine, "ActiveState", "Result")
    assert state == {"ActiveState": "inactive", "Result": "success"}, state
    assert took < TIMEOUT_STOP
