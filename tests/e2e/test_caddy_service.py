"""The production shape: Caddy as its own service (`labelsync caddy run --resume`, as
systemd/labelsync-caddy.service runs it), labelsync beside it.

Restarting labelsync leaves Caddy alone, and a Caddy that restarts comes back serving
every route from its autosave, before labelsync has done anything (issue 11, items 1, 8).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.caddy import CaddyProcess
from tests.support.containers import ContainerHandle, short_uuid
from tests.support.daemon import Daemon, wait_routed
from tests.support.requirements import systemd_analyze
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
StartBackend = Callable[..., ContainerHandle]


class CaddyService(CaddyProcess):
    """Caddy started the way the unit starts it: through `labelsync caddy`, resuming."""

    def start(self) -> CaddyService:
        env = {
            **os.environ,
            "HOME": self._workdir.name,
            "XDG_DATA_HOME": self._workdir.name,
            "XDG_CONFIG_HOME": self._workdir.name,
        }
        command = [sys.executable, "-m", "labelsync.app.cli", "caddy", "run", "--resume"]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [*command, "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        wait_until(self._answers, timeout=20, message="caddy service to answer")
        return self

    def crash(self) -> None:
        assert self._process is not None
        self._process.kill()
        self._process.wait(timeout=10)


@pytest.fixture
def caddy_service(request: pytest.FixtureRequest) -> Iterator[CaddyService]:
    service = CaddyService(f"service-{short_uuid()}").start()
    try:
        yield service
    finally:
        service.stop()


def test_a_restarted_caddy_service_serves_every_route_before_labelsync_acts(
    caddy_service: CaddyService, backend: StartBackend, unique_host: str
) -> None:
    """labelsync writes its routes, then stops (as for an upgrade): Caddy keeps serving.
    Caddy then crashes and comes back with `--resume` while labelsync is still away:
    the host answers as soon as Caddy does, from the config Caddy autosaved after
    labelsync's last write. labelsync, started again, finds nothing to write."""
    prefix = f"ls{short_uuid()}"
    daemon = Daemon(
        caddy_service,
        name=f"ls-service-{short_uuid()}",
        env={"LABELSYNC_LABEL_PREFIX": prefix},
    )
    try:
        daemon.start()
        web = backend(labels={f"{prefix}.host": unique_host})
        wait_routed(daemon, unique_host, {web.name})
        assert daemon.stop() == 0
        assert daemon.body(unique_host) == web.name
        caddy_service.crash()
        caddy_service.start()
        answered = time.monotonic()
        assert daemon.body(unique_host) == web.name, "the restarted Caddy started empty"
        took = time.monotonic() - answered
        print(f"\nCaddy service restarted: routed {took:.3f}s after it answered")
        etag = daemon.config_etag()
        logged = len(daemon.logs())
        daemon.start()
        daemon.wait_log(r"Caddy reaches the resolver", after=logged)
        assert daemon.body(unique_host) == web.name
        assert daemon.config_etag() == etag, "labelsync rewrote what Caddy had resumed"
    finally:
        daemon.close()


def test_the_caddy_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd/labelsync-caddy.service, with ExecStart pointed at this checkout's
    labelsync, loads without a warning; labelsync.service wants it but does not require
    it (restarting either never restarts the other)."""
    analyze = systemd_analyze()
    executable = Path(shutil.which("labelsync") or REPO / ".venv" / "bin" / "labelsync")
    text = (UNITS / "labelsync-caddy.service").read_text()
    assert "ExecStart=/opt/labelsync/bin/labelsync caddy run --resume" in text
    unit = tmp_path / "labelsync-caddy.service"
    unit.write_text(text.replace("/opt/labelsync/bin/labelsync", str(executable)))
    done = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr
    labelsync = (UNITS / "labelsync.service").read_text()
    assert "Wants=network-online.target labelsync-caddy.service" in labelsync
    for binding in ("Requires=", "BindsTo=", "PartOf="):
        assert binding not in labelsync
        assert binding not in text
