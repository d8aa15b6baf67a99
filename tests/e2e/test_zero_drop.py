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

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import StartDaemon
from tests.support.caddy import CaddyProcess, free_port
from tests.support.containers import ContainerFactory, ContainerHandle, short_uuid
from tests.support.daemon import Daemon, wait_routed, wait_settled
from tests.support.load import Load, LoadResult
from tests.support.scenario import Scenario, prefixed, routes_for
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


def bounded_load(daemon: Daemon, host: str, *, retry_stale: bool = False) -> Load:
    """The six keep-alive clients through the daemon's Caddy, within this module's bounds."""
    return Load(
        daemon.url,
        host,
        clients=CLIENTS,
        max_seconds=LOAD_SECONDS,
        max_requests=LOAD_REQUESTS,
        retry_stale=retry_stale,
    )


def wait_reached(load: Load, replica: ContainerHandle) -> None:
    """Until the load has had an answer from `replica`."""
    wait_until(
        lambda: load.result.backends[replica.name] > 0,
        timeout=15,
        message=f"load to reach {replica.name} ({replica.ip})",
    )


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
        wait_reached(load, new)
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
    with bounded_load(daemon, host, retry_stale=mode == "static") as load:
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
    with bounded_load(daemon, unique_host) as load:
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


# -- Health-checked pools, a pool's writes, member names ---------------------------------------

# Each replica opens its port a second after its container starts (an app booting) and
# drains for a second after SIGTERM.
BOOTING = {"START_DELAY": "1", "STOP_DELAY": "1"}
SMALL_ROLL_STEPS = 6
SMALL_ROLL_REPLICAS = 3
ZONE_SUFFIX = ".labelsync.internal."
ADMIN_WRITES = "labelsync_caddy_admin_writes"
# Longer than any write labelsync defers (a fallback list alone waits `FILL_DELAY`, 2 s,
# of quiet, and once more if the pools changed meanwhile): a write a phase causes late
# still lands in that phase's count.
WRITES_QUIET = 4.5


def test_health_checked_rolling_update_on_a_small_network_drops_no_request(
    start_daemon: StartDaemon,
    backend: StartBackend,
    container_factory: ContainerFactory,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed: a pool with an active check (`health.path`, the default 30 s interval) and
    passive checks that eject a member on its first failure for 30 s, its three replicas
    on a /28 network. Each replica listens a second after its container starts and drains
    for a second after SIGTERM. Six times, under six keep-alive clients, a new replica is
    started and the oldest stopped at once (not waiting for the new one to serve): Docker
    hands the stopped replica's address to the next new one. No request fails, and at the
    end requests reach exactly the last three replicas.

    What it takes: a new member is answered only once its first check passed, checked
    again quickly until then (not 30 s on), so no request goes to a port not yet open; and
    a replica on a dead one's address is a new upstream name in Caddy (the container's
    short id in its SRV target), so it does not inherit the dead one's passive failures
    (which would keep it out of rotation for 30 s)."""
    network = container_factory.create_small_network()  # a /28
    scenario = Scenario(start_daemon, "dynamic")
    daemon = scenario.daemon
    labels = scenario.labels(
        {
            "host": unique_host,
            "lb.policy": "round_robin",
            "health.path": "/health",
            "health.passive.max_fails": "1",
            "health.passive.fail_duration": "30s",
        }
    )
    # The first replica listens at once: while a pool has no healthy member all are
    # answered, and labelsync's one reachability probe (a HEAD through Caddy, about a
    # second after the first routes are written) would meet a port not yet open, which
    # these passive checks count as the member's failure: out for 30 s.
    replicas = [backend(labels=labels, env=DRAIN, network=network)]
    replicas += [
        backend(labels=labels, env=BOOTING, network=network) for _ in range(SMALL_ROLL_REPLICAS - 1)
    ]
    wait_routed(daemon, unique_host, {r.name for r in replicas})
    wait_settled(daemon, filled={unique_host})
    freed: dict[str, str] = {}  # address -> the stopped replica that had it
    reused: list[str] = []  # "new (address, was old's)"
    with bounded_load(daemon, unique_host) as load:
        load.wait_successes(300)
        for _ in range(SMALL_ROLL_STEPS):
            # Started, not yet listening (`START_DELAY`): nothing waits for it to serve.
            new = backend(labels=labels, env=BOOTING, network=network, wait_listening=False)
            if new.ip in freed:
                reused.append(f"{new.name} ({new.ip}, was {freed[new.ip]}'s)")
            old = replicas.pop(0)
            old.container.stop(timeout=5)  # returns once it drained and exited
            freed[old.ip] = old.name
            replicas.append(new)
            # The new replica serves before the next step stops another one: else two
            # replicas still booting could leave one of three serving. Within 15 s, well
            # inside the 30 s check interval: a new member is checked again quickly.
            wait_reached(load, new)
            load.wait_successes(100)
    result = load.result
    record_property("small_roll_failed", result.failed)
    record_property("small_roll_total", result.total)
    record_property("small_roll_reused", len(reused))
    print(
        f"\nhealth-checked rolling update on a /28: {result.failed}/{result.total} failed; "
        f"addresses reused: {', '.join(reused) or 'none'}"
    )
    assert result.total < LOAD_REQUESTS and result.seconds < LOAD_SECONDS, (
        f"the load hit its bound before the update ended: {result.summary()}"
    )
    assert result.failed == 0, result.summary()
    assert reused, (
        f"no new replica got a stopped one's address (freed: {freed}); "
        f"the test did not exercise address reuse"
    )
    wait_routed(daemon, unique_host, {r.name for r in replicas})


def admin_writes(client: httpx.Client, metrics_url: str) -> int:
    """labelsync's count of Caddy admin writes so far (`/metrics`)."""
    for family in text_string_to_metric_families(client.get(metrics_url).text):
        if family.name == ADMIN_WRITES:
            return int(sum(s.value for s in family.samples if s.name == f"{ADMIN_WRITES}_total"))
    raise AssertionError(f"{ADMIN_WRITES} missing from {metrics_url}")


def applied_lines(logs: str) -> list[str]:
    """labelsync's "applied: ..." log lines that name at least one admin operation."""
    return [
        line
        for line in logs.splitlines()
        if (found := re.search(r"applied: .*\((\d+) admin operation\(s\)\)", line))
        and int(found[1]) > 0
    ]


def test_a_pools_life_costs_one_write_to_appear_and_one_to_go(
    start_daemon: StartDaemon,
    backend: StartBackend,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed: in dynamic mode a pool costs one Caddy admin write when it appears (its
    route, written at its first container's start with that member as its fallback),
    none while it scales from one replica to three, rolls one, and scales back to one,
    and one when its last container is removed (the route goes). Each write reloads
    Caddy, which resets every idle keep-alive connection of every site it serves."""
    port = free_port()
    scenario = Scenario(start_daemon, "dynamic", LABELSYNC_METRICS_LISTEN=f"127.0.0.1:{port}")
    daemon, host = scenario.daemon, unique_host
    labels = scenario.labels({"host": host, "lb.policy": "round_robin"})
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    counts: dict[str, int] = {}
    lines: dict[str, list[str]] = {}
    with httpx.Client(trust_env=False, timeout=10) as client:
        wait_until(lambda: admin_writes(client, metrics_url) >= 0, message="/metrics")
        wait_settled(daemon, quiet=WRITES_QUIET)
        writes, logged = admin_writes(client, metrics_url), len(daemon.logs())

        def phase(name: str) -> None:
            nonlocal writes, logged
            wait_settled(daemon, filled={host}, quiet=WRITES_QUIET)
            now, logs = admin_writes(client, metrics_url), daemon.logs()
            counts[name], lines[name] = now - writes, applied_lines(logs[logged:])
            writes, logged = now, len(logs)

        first = backend(labels=labels)
        wait_routed(daemon, host, {first.name})
        phase("appear")

        replicas = [first, backend(labels=labels), backend(labels=labels)]
        wait_routed(daemon, host, {r.name for r in replicas})
        phase("scale to 3")

        new = backend(labels=labels)
        old = replicas.pop(0)  # the member the route's fallback list names
        old.container.stop(timeout=5)
        old.container.remove()
        replicas.append(new)
        wait_routed(daemon, host, {r.name for r in replicas})
        phase("roll one")

        for gone in replicas[:-1]:
            gone.container.stop(timeout=5)
            gone.container.remove()
        last = replicas[-1]
        wait_routed(daemon, host, {last.name})
        phase("scale to 1")

        last.container.remove(force=True)
        wait_until(lambda: not routes_for(daemon, {host}), timeout=15, message="route gone")
        phase("remove")
    record_property("pool_life_writes", counts)
    print(f"\nadmin writes through a pool's life: {counts}")
    expected = {"appear": 1, "scale to 3": 0, "roll one": 0, "scale to 1": 0, "remove": 1}
    assert counts == expected, f"writes {counts}, wanted {expected}; applied lines: {lines}"


def test_dynamic_upstream_names_carry_the_container(
    caddy_factory: Callable[[], CaddyProcess],
    backend: StartBackend,
    unique_host: str,
) -> None:
    """Seed: Caddy's dynamic upstreams of a two-replica pool are named after their
    containers: each SRV target spells the member's IP and its container's short id
    (`172-17-0-5.<12 hex>.ip4.labelsync.internal.`), so Caddy's per-upstream state
    (passive failure counts, kept an hour) never passes to a later container on the
    same IP. A Caddy of its own: the session's lists the upstreams of earlier tests'
    containers, some on these very IPs."""
    caddy = caddy_factory()
    prefix = f"ls{short_uuid()}"
    daemon = Daemon(caddy, name=f"ls-names-{short_uuid()}", env={"LABELSYNC_LABEL_PREFIX": prefix})
    try:
        daemon.start()
        labels = prefixed({"host": unique_host, "lb.policy": "round_robin"}, prefix)
        replicas = [backend(labels=labels) for _ in range(2)]
        wait_routed(daemon, unique_host, {r.name for r in replicas})
        for _ in range(6):
            daemon.body(unique_host)
        listed = [str(u["address"]) for u in caddy.admin("GET", "/reverse_proxy/upstreams").json()]
    finally:
        daemon.close()
    dynamic = [address for address in listed if ZONE_SUFFIX in address]
    assert dynamic, f"no dynamic upstream in Caddy's list: {listed}"
    for replica in replicas:
        spelled = replica.ip.replace(".", "-") + "."
        named = [address for address in dynamic if address.startswith(spelled)]
        assert named, f"no dynamic upstream for {replica.name} ({replica.ip}): {dynamic}"
        short_id = replica.id[:12]
        assert all(f".{short_id}." in address for address in named), (
            f"{replica.name}'s upstream names lack its short id {short_id}: {named}"
        )
    ids = {replica.id[:12] for replica in replicas}
    strangers = [a for a in dynamic if not any(f".{i}." in a for i in ids)]
    assert not strangers, f"dynamic upstreams naming no container of the pool: {strangers}"


def test_a_lone_replica_replaced_while_its_successor_boots_drops_no_request(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: a one-replica, health-checked service is replaced the blunt way: the new
    container starts, the old one is stopped at once. The new app listens a second after
    its container starts; the old one drains for two seconds after SIGTERM. labelsync
    withdraws the old replica at its SIGTERM and holds the new one back until its first
    check passes; with no member passing, it answers the replica still draining rather
    than one that refuses connections. Three times over, under load: no request fails."""
    scenario = Scenario(start_daemon, "dynamic")
    daemon = scenario.daemon
    labels = scenario.labels({"host": unique_host, "health.path": "/health"})
    slow = {"START_DELAY": "1", "STOP_DELAY": "2"}
    current = backend(labels=labels, env=slow)
    wait_routed(daemon, unique_host, {current.name})
    with bounded_load(daemon, unique_host) as load:
        load.wait_successes(200)
        for _ in range(3):
            new = backend(labels=labels, env=slow, wait_listening=False)
            current.container.stop(timeout=10)  # returns once it drained and exited
            current = new
            wait_reached(load, new)
            load.wait_successes(200)
    result = load.result
    assert result.failed == 0, result.summary()
    wait_routed(daemon, unique_host, {current.name})
