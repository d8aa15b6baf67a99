"""Nothing lost when a part restarts: Caddy restarted empty, labelsync stopped under a
client that never retries.

Timings are printed (and recorded as properties); the asserts are about behaviour: the
routes come back although the resync is a minute away, no request fails.
"""

from __future__ import annotations

import concurrent.futures
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import StartDaemon
from tests.support.caddy import CaddyProcess
from tests.support.containers import ContainerHandle, short_uuid
from tests.support.daemon import Daemon, wait_routed, wait_settled
from tests.support.load import Load
from tests.support.scenario import Scenario
from tests.support.waiting import wait_until

StartBackend = Callable[..., ContainerHandle]
RecordProperty = Callable[[str, object], None]
MODES = ["dynamic", "static"]


@pytest.fixture
def private_daemons() -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        daemon.close()


class OneClient:
    """One client, one request at a time on a fresh connection, never retrying: every
    status (or error name) it got, and its slowest request."""

    def __init__(self, url: str, host: str) -> None:
        self.url, self.host = url, host
        self.statuses: list[int | str] = []
        self.slowest = 0.0
        self._client = httpx.Client(trust_env=False, timeout=10.0)

    def __enter__(self) -> OneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def one(self) -> None:
        started = time.monotonic()
        try:
            headers = {"Host": self.host, "Connection": "close"}
            self.statuses.append(self._client.get(self.url, headers=headers).status_code)
        except httpx.HTTPError as exc:
            self.statuses.append(type(exc).__name__)
        self.slowest = max(self.slowest, time.monotonic() - started)


def kill_and_restart(caddy: CaddyProcess) -> float:
    """SIGKILL Caddy, start it again from its base config; when it answered again."""
    process = caddy._process  # the harness has no kill(): a crash is what this test needs
    assert process is not None
    process.kill()
    process.wait(timeout=10)
    caddy.start()
    return time.monotonic()


@pytest.mark.parametrize("mode", MODES)
def test_restarted_caddy_gets_its_routes_back_long_before_the_resync(
    mode: str,
    caddy_factory: Callable[[], CaddyProcess],
    private_daemons: list[Daemon],
    backend: StartBackend,
    make_host: Callable[[str], str],
    record_property: RecordProperty,
) -> None:
    """Seed (issue 11, item 1): an external Caddy killed and restarted with only its own
    config gets labelsync's server and routes back although the resync is 60 s away:
    labelsync probes one of its routes by @id twice a second. Three restarts, each at a
    different phase; the time from "Caddy answers" to "the host is routed" is printed."""
    private = caddy_factory()
    prefix = f"ls{short_uuid()}"
    daemon = Daemon(
        private,
        name=f"ls-watch-{short_uuid()}",
        upstreams=mode,
        env={"LABELSYNC_LABEL_PREFIX": prefix, "LABELSYNC_RESYNC_INTERVAL": "60s"},
    )
    private_daemons.append(daemon)
    daemon.start()
    host = make_host(mode)
    web = backend(labels={f"{prefix}.host": host})
    wait_routed(daemon, host, {web.name})
    gaps = []
    for pause in (0.0, 0.3, 0.7):
        time.sleep(pause)
        answered = kill_and_restart(private)
        wait_until(
            lambda: daemon.body(host) == web.name,
            timeout=10,
            interval=0.05,
            message="routes back in the restarted Caddy",
        )
        gaps.append(time.monotonic() - answered)
    record_property("routes_back_seconds", gaps)
    print(f"\nCaddy restart [{mode}]: routes back after {', '.join(f'{g:.2f}s' for g in gaps)}")
    assert "restoring the routes" in daemon.logs() or "answers again" in daemon.logs()
    assert len(daemon.routes()) == 1


def test_a_client_that_never_retries_sees_no_failure_through_sigterm(
    private_daemons: list[Daemon],
    caddy_factory: Callable[[], CaddyProcess],
    backend: StartBackend,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed (issue 11, item 3): one client, one request at a time on a fresh connection,
    no retries, while labelsync (dynamic mode) gets SIGTERM and exits: every request
    answers 200. Caddy's cached SRV answer names member targets only the resolver can
    turn into addresses; on its way out the resolver refuses SRV lookups (Caddy falls
    back to the route's member IPs) while still answering member names, for longer than
    Caddy's refresh, and only then goes."""
    private = caddy_factory()
    prefix = f"ls{short_uuid()}"
    daemon = Daemon(private, name=f"ls-exit-{short_uuid()}", env={"LABELSYNC_LABEL_PREFIX": prefix})
    private_daemons.append(daemon)
    daemon.start()
    web = backend(labels={f"{prefix}.host": unique_host})
    wait_routed(daemon, unique_host, {web.name})
    # The pool's first fallback list is written once the loop is quiet (coalesce.py);
    # SIGTERM within that time writes it on the way out, a reload this test is not about.
    wait_settled(daemon, filled={unique_host})
    with OneClient(daemon.url, unique_host) as client:
        for _ in range(20):
            client.one()
        assert daemon.process is not None
        daemon.process.terminate()
        while daemon.process.poll() is None:
            client.one()
        for _ in range(50):
            client.one()
    daemon.process = None
    statuses, slowest = client.statuses, client.slowest
    failed = [s for s in statuses if s != 200]
    record_property("sigterm_requests", len(statuses))
    record_property("sigterm_slowest_seconds", slowest)
    print(f"\nthrough SIGTERM: {len(failed)}/{len(statuses)} failed, slowest {slowest:.3f}s")
    assert not failed, statuses
    # Go's DNS timeout (5 s) or Caddy's dial timeout (3 s) would show here: a query lost.
    assert slowest < 2.5, f"a request took {slowest:.2f}s"


def test_a_killed_replica_stalls_no_request(
    start_daemon: StartDaemon,
    backend: StartBackend,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed (issue 11, item 7): `docker kill` of a replica under steady traffic, three
    times (five replicas, two left). Caddy's cached SRV answer still names the killed member for up
    to `refresh`; a dial to an address gone from the bridge got no answer until Caddy's
    3 s dial timeout. With LABELSYNC_DIAL_TIMEOUT (500ms unless a pool sets
    `timeout.dial`) the dial gives up early and the retry, after a fresh lookup, reaches
    a live member: nothing fails, and no request comes near the old 3 s."""
    scenario = Scenario(start_daemon, "dynamic")
    daemon, labels = scenario.daemon, scenario.labels({"host": unique_host})
    # All replicas start before the load: a replica that joins is published when it
    # starts, a moment before it listens, and that race is not what this test is about.
    replicas = [backend(labels=labels) for _ in range(5)]
    wait_routed(daemon, unique_host, {r.name for r in replicas})
    wait_settled(daemon, filled={unique_host})  # the first member's fallback, written later
    assert daemon.shapes()[0]["handle"][0]["transport"]["dial_timeout"] == "500ms"
    with Load(daemon.url, unique_host, clients=4, max_seconds=60, max_requests=40_000) as load:
        load.wait_successes(200)
        for victim in replicas[:3]:
            victim.container.kill()
            load.wait_successes(load.result.successes + 500)
    result = load.result
    record_property("kill_slowest_seconds", result.slowest)
    print(f"\nreplica killed 3 times under load: {result.summary()}, slowest {result.slowest:.3f}s")
    assert result.failed == 0, result.summary()
    assert result.slowest < 2.5, f"a request took {result.slowest:.2f}s: {result.summary()}"


def test_a_resolver_on_a_unix_socket_refuses_at_once_when_labelsync_is_gone(
    private_daemons: list[Daemon],
    caddy_factory: Callable[[], CaddyProcess],
    backend: StartBackend,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed (issue 11, item 2): the resolver on a unix socket (`unix:///path`; in compose
    a volume both containers mount). labelsync is SIGKILLed, the harshest exit: nothing
    drains, and Caddy's cached answer names members only the resolver resolves. A
    connect to the socket without a listener is refused at once (a UDP address across a
    Docker network goes silent instead: Go's 5 s), so each lookup fails fast and Caddy
    falls back to the members' IPs. One client, one request at a time, never retrying:
    nothing fails, nothing stalls; labelsync started again serves on the same socket."""
    directory = Path(tempfile.mkdtemp(prefix="ls-dns-"))
    socket_address = f"unix://{directory}/dns.sock"
    private = caddy_factory()
    prefix = f"ls{short_uuid()}"
    daemon = Daemon(
        private,
        name=f"ls-unix-{short_uuid()}",
        env={"LABELSYNC_LABEL_PREFIX": prefix, "LABELSYNC_RESOLVER_LISTEN": socket_address},
    )
    private_daemons.append(daemon)
    try:
        daemon.start()
        web = backend(labels={f"{prefix}.host": unique_host})
        wait_routed(daemon, unique_host, {web.name})
        daemon.wait_log(r"Caddy reaches the resolver at unix://")
        # The fallback list is written once the loop has been quiet for 2 s (coalesce.py).
        wait_until(lambda: all(daemon.fallbacks().values()), timeout=10, message="fallback")
        resolver = daemon.shapes()[0]["handle"][0]["dynamic_upstreams"]["resolver"]
        assert resolver == {"addresses": [f"unix/{directory}/dns.sock"]}
        with OneClient(daemon.url, unique_host) as client:
            for index in range(120):
                if index == 30:
                    daemon.kill()
                if index == 90:
                    daemon.start(wait_synced=False)
                client.one()
                time.sleep(0.02)
        statuses, slowest = client.statuses, client.slowest
        daemon.wait_log(r"resolver answering on unix://")
        failed = [s for s in statuses if s != 200]
        record_property("unix_kill_slowest_seconds", slowest)
        shown = f"{len(failed)}/{len(statuses)} failed, slowest {slowest:.3f}s"
        print(f"\nSIGKILL, unix resolver: {shown}")
        assert not failed, statuses
        assert slowest < 2.5, f"a request took {slowest:.2f}s"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_stack_started_at_dockers_pace_is_written_in_a_few_writes(
    start_daemon: StartDaemon, backend: StartBackend, make_host: Callable[[str], str]
) -> None:
    """Seed (issue 11, item 5): 30 containers in 6 new pools, started together (Docker
    takes several seconds for them here, as for `docker compose up`): the loop sees a
    burst and waits for quiet before writing, and the fallback lists wait for its end;
    before, each new pool cost a write of its own and another for its fallback list.
    Every container answers, every fallback list gets filled, and the admin writes (from
    the log, fallback lists included) stay at most one per pool; they are printed."""
    scenario = Scenario(start_daemon, "dynamic")
    daemon = scenario.daemon
    hosts = [make_host(f"p{index}") for index in range(6)]
    logged = len(daemon.logs())
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        handles = list(
            pool.map(
                lambda index: backend(
                    labels=scenario.labels({"host": hosts[index % 6], "lb.policy": "round_robin"}),
                    wait_listening=False,
                ),
                range(30),
            )
        )
    for index, host in enumerate(hosts):
        wait_routed(daemon, host, {h.name for h in handles[index::6]}, timeout=30)
    # The fallback lists, written once the loop has been quiet for 2 s (coalesce.py).
    wait_until(lambda: all(daemon.fallbacks().values()), timeout=20, message="fallbacks")
    # One applied sync that changed Caddy is one admin write (several operations go as
    # one PATCH of the routes list).
    writes = len(re.findall(r"writes=[1-9]", daemon.logs()[logged:]))
    print(f"\n30 containers, 6 new pools at Docker's pace: {writes} admin writes")
    assert writes <= 6, daemon.logs()[logged:][-3000:]
