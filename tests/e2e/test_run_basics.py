"""`labelsync run` keeps Caddy in step with Docker: start, stop, scale, in both modes."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import StartDaemon
from tests.support.daemon import wait_routed

MODES = ["dynamic", "static"]


@pytest.mark.parametrize("mode", MODES)
def test_started_container_is_routed_and_stopped_one_is_not(
    mode: str, start_daemon: StartDaemon, backend, unique_host: str
) -> None:
    """Seed: a labelled container becomes routable after start, and not after stop."""
    daemon = start_daemon(upstreams=mode)
    labels = {"labelsync.host": unique_host, "labelsync.lb.policy": "round_robin"}
    first = backend(labels=labels)
    wait_routed(daemon, unique_host, {first.name})
    first.container.stop(timeout=1)
    wait_routed(daemon, unique_host, set())


@pytest.mark.parametrize("mode", MODES)
def test_scale_one_to_five_to_one(
    mode: str, start_daemon: StartDaemon, backend, unique_host: str
) -> None:
    """Seed: `--scale web=5` then back to 1: every replica joins, the extras leave."""
    daemon = start_daemon(upstreams=mode)
    labels = {"labelsync.host": unique_host, "labelsync.lb.policy": "round_robin"}
    replicas = [backend(labels=labels)]
    wait_routed(daemon, unique_host, {replicas[0].name})
    etag = daemon.config_etag()
    replicas += [backend(labels=labels) for _ in range(4)]
    wait_routed(daemon, unique_host, {r.name for r in replicas})
    for extra in replicas[1:]:
        extra.container.remove(force=True)
    wait_routed(daemon, unique_host, {replicas[0].name})
    if mode == "dynamic":
        assert daemon.config_etag() == etag, "scaling wrote Caddy config in dynamic mode"
