"""Requests under keep-alive load while replicas and labelsync itself come and go.

Real dockerd, real Caddy, real `labelsync run`, and six keep-alive clients through Caddy's
listener (`tests/support/load.py`, bounded in seconds and requests). Dynamic mode (the
default) changes no Caddy config when members change, so nothing reloads and nothing is
dropped; static mode rewrites the upstreams on every change, and each write reloads Caddy.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import datetime

from tests.e2e.conftest import StartDaemon
from tests.support.containers import ContainerHandle
from tests.support.daemon import Daemon, wait_routed, wait_settled
from tests.support.load import Load, LoadResult
from tests.support.scenario import Scenario
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]
RecordProperty = Callable[[str, object], None]

CLIENTS = 6
REPLICAS = 2
ROLLING_STEPS = 5
LOAD_SECONDS = 60.0  # a bound only: each load stops as soon as its scenario is done
LOAD_REQUESTS = 60_000
RESTARTS = 2
# Replicas keep serving this long after SIGTERM, as a service that drains does: a backend
# killed in the middle of a response breaks that response whatever the proxy does.
DRAIN = {"STOP_DELAY": "1"}


def service_labels(scenario: Scenario, host: str) -> dict[str, str]:
    return scenario.labels({"host": host, "lb.policy": "round_robin"})


def resolver_gaps(logs: str) -> list[float]:
    """Seconds between each "labelsync stopped" line and the next "resolver answering"."""
    stamps = [
        (datetime.fromisoformat(match[1]), match[2])
        for match in re.finditer(
            r"^(\S+ \S+) \S+\s+(labelsync stopped|resolver answering)", logs, re.M
        )
    ]
    return [
        (later - earlier).total_seconds()
        for (earlier, what), (later, then) in itertools.pairwise(stamps)
        if what == "labelsync stopped" and then == "resolver answering"
    ]


def rolling_update(
    daemon: Daemon,
    backend: StartBackend,
    labels: dict[str, str],
    host: str,
    load: Load,
    replicas: list[ContainerHandle],
) -> None:
    """Start a new replica, wait until the load reaches it, stop the oldest; five times."""
    for _ in range(ROLLING_STEPS):
        new = backend(labels=labels, env=DRAIN)
        wait_until(
            lambda new=new: load.result.backends[new.name] > 0,  # type: ignore[misc]
            timeout=15,
            message=f"load to reach {new.name}",
        )
        old = replicas.pop(0)
        old.container.stop(timeout=5)
        replicas.append(new)
        load.wait_successes(200)  # the pool settles on its new members under load
    wait_routed(daemon, host, {r.name for r in replicas})


def measure_rolling_update(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, host: str
) -> LoadResult:
    scenario = Scenario(start_daemon, mode)  # a label prefix of its own: no other test's pools
    daemon, labels = scenario.daemon, service_labels(scenario, host)
    replicas = [backend(labels=labels, env=DRAIN) for _ in range(REPLICAS)]
    wait_routed(daemon, host, {r.name for r in replicas})
    if mode == "dynamic":
        wait_settled(daemon, filled={host})  # the first fallback list, before the load
    with Load(
        daemon.url, host, clients=CLIENTS, max_seconds=LOAD_SECONDS, max_requests=LOAD_REQUESTS
    ) as load:
        load.wait_successes(300)
        rolling_update(daemon, backend, labels, host, load, replicas)
    result = load.result
    daemon.stop()
    assert load.result.total < LOAD_REQUESTS and result.seconds < LOAD_SECONDS, (
        f"the load hit its bound before the update ended: {result.summary()}"
    )
    return result


def test_rolling_update_drops_no_request_in_dynamic_mode(
    start_daemon: StartDaemon,
    backend: StartBackend,
    make_host: Callable[[str], str],
    record_property: RecordProperty,
) -> None:
    """Seed: a rolling update (start new, stop old, five times) of a two-replica service
    whose replicas drain for a second after SIGTERM, under six keep-alive clients, fails
    no request in dynamic mode; the same update in static mode is measured and reported
    next to it (each of its ten config writes reloads Caddy, which resets connections)."""
    results = {
        mode: measure_rolling_update(mode, start_daemon, backend, make_host(mode))
        for mode in ("dynamic", "static")
    }
    for mode, result in results.items():
        record_property(f"{mode}_failed", result.failed)
        record_property(f"{mode}_total", result.total)
    dynamic, static = results["dynamic"], results["static"]
    print(
        f"\nzero-drop rolling update: dynamic {dynamic.failed}/{dynamic.total} failed, "
        f"static {static.failed}/{static.total} failed"
    )
    print(f"  dynamic: {dynamic.summary()}")
    print(f"  static:  {static.summary()}")
    assert dynamic.failed == 0, dynamic.summary()


def test_restarting_labelsync_under_load_drops_no_request(
    start_daemon: StartDaemon,
    backend: StartBackend,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed: labelsync is restarted twice (SIGTERM, then started again with the same
    settings and server) while Caddy serves six keep-alive clients: no request fails and
    no route changes shape. While the resolver is gone (about half a second) Caddy's
    lookups fail and it dials each route's fallback member list instead (still live
    members here, so the stopping labelsync had no reason to write). Before that fallback
    existed, most requests in the gap failed with 503: new upstream connections could not
    resolve member names."""
    scenario = Scenario(start_daemon, "dynamic")
    daemon = scenario.daemon
    replicas = [backend(labels=service_labels(scenario, unique_host)) for _ in range(REPLICAS)]
    wait_routed(daemon, unique_host, {r.name for r in replicas})
    wait_settled(daemon, filled={unique_host})  # the first fallback list, before the load
    shapes = daemon.shapes()
    with Load(
        daemon.url,
        unique_host,
        clients=CLIENTS,
        max_seconds=LOAD_SECONDS,
        max_requests=LOAD_REQUESTS,
    ) as load:
        load.wait_successes(300)
        for _ in range(RESTARTS):
            logged = len(daemon.logs())
            assert daemon.stop() == 0  # as `systemctl restart` does: stop, then start
            daemon.start()
            daemon.wait_log(r"Caddy reaches the resolver", after=logged)
            load.wait_successes(300)
    result = load.result
    gaps = resolver_gaps(daemon.logs())
    record_property("restart_failed", result.failed)
    record_property("restart_total", result.total)
    record_property("resolver_gaps", gaps)
    print(
        f"\nlabelsync restart under load (dynamic): {result.failed}/{result.total} failed; "
        f"resolver absent for {', '.join(f'{gap:.2f}s' for gap in gaps)}"
    )
    assert result.failed == 0, result.summary()
    assert set(result.backends) == {r.name for r in replicas}, result.summary()
    assert daemon.shapes() == shapes, "a restart with unchanged containers changed a route"
    # The fallback was written with the first replica; it still serves, so stopping
    # labelsync wrote nothing (a write would reload Caddy under this load).
    (fallback,) = daemon.fallbacks().values()
    assert fallback and set(fallback) <= {r.address() for r in replicas}
