"""`labelsync run` against real containers and a real Caddy: the seed behaviours of every
load-balancing policy, a rolling update under load, user routes sharing the server, and a
bad label that must change nothing else.

Each scenario runs in both upstream modes where the mode matters: `dynamic` (membership
served by labelsync's resolver) and `static` (members written into Caddy's JSON).
Failure counts under load are printed (`-s` shows them) and recorded as test properties.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import StartDaemon
from tests.support.caddy import CaddyProcess
from tests.support.containers import ContainerHandle, short_uuid
from tests.support.daemon import Daemon, wait_routed, wait_settled
from tests.support.load import Load
from tests.support.scenario import Scenario, answers, prefixed, routes_for, unrouted
from tests.support.waiting import wait_until

MODES = ["dynamic", "static"]
MakeHost = Callable[[str], str]
StartBackend = Callable[..., ContainerHandle]
RecordProperty = Callable[[str, object], None]


@pytest.fixture
def client(request: pytest.FixtureRequest) -> Iterator[Callable[..., httpx.Client]]:
    """Factory for keep-alive clients to a daemon's listener, closed after the test."""
    opened: list[httpx.Client] = []

    def make(daemon: Daemon, **options: Any) -> httpx.Client:
        made = httpx.Client(base_url=daemon.url, trust_env=False, timeout=10.0, **options)
        opened.append(made)
        return made

    yield make
    for made in opened:
        made.close()


def fresh_answers(daemon: Daemon, host: str, count: int) -> set[str | None]:
    """The backends `count` new clients reach (no cookie, no connection reused)."""
    seen: set[str | None] = set()
    for _ in range(count):
        with httpx.Client(base_url=daemon.url, trust_env=False, timeout=5.0) as fresh:
            seen.update(answers(fresh, host, 1))
    return seen


def answered_by(service: str) -> Callable[[httpx.Response], bool]:
    """Success for the load: a 200 from one of `service`'s replicas. A stopped replica's
    address can be handed to another container at once; an answer from that one is wrong."""

    def check(response: httpx.Response) -> bool:
        backend_name = response.headers.get("X-Backend", "")
        return response.status_code == 200 and backend_name.startswith(f"{service}-")

    return check


# -- seed behaviours ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_round_robin_cycles_three_backends_in_a_stable_order(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, unique_host: str, client: Any
) -> None:
    """Seed: `lb.policy=round_robin` over 3 replicas answers 1 -> 2 -> 3 -> 1 -> ...: every
    replica in turn, and the same order on every cycle."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    labels = scenario.labels({"host": unique_host, "lb.policy": "round_robin"})
    replicas = {backend(labels=labels).name for _ in range(3)}
    wait_routed(daemon, unique_host, replicas)

    seen = answers(client(daemon), unique_host, 15)

    assert set(seen[:3]) == replicas, seen
    assert all(seen[i] == seen[i + 3] for i in range(len(seen) - 3)), seen


# Replicas that shut down gracefully, as real servers do on SIGTERM: they keep serving for
# 1s (longer than Caddy's 150ms membership refresh), then exit. Without it the test backend
# sometimes dies between writing a response's headers and its body (about once in six
# failover runs): the client gets a truncated answer that no proxy can retry.
GRACEFUL = {"STOP_DELAY": "1"}

# Zero failed requests while the primary of a `first` pool stops and comes back. Why each key:
# - health.passive.max_fails=1: the first failed attempt marks the primary down, so the retry
#   that follows (and every request after it) picks the backup instead of the dead primary;
# - health.passive.fail_duration=2s: short, so the primary is used again soon after it returns;
# - lb.retries=2: a failed attempt is retried at once on the next usable member;
# - no lb.try_duration: with it, Caddy waits lb.try_interval (250ms by default) between
#   attempts, and a request waiting there when Caddy reloads its config (every membership
#   change in static mode) is answered 502 at once (measured on 2.11.7 with try_duration=5s,
#   try_interval=100ms: 3 of 525 requests, each after ~80ms);
# - timeout.dial=1s: a stopped container's address may not answer at all (no RST), so a
#   dial to it must give up quickly.
FAILOVER_LABELS = {
    "lb.policy": "first",
    "lb.retries": "2",
    "health.passive.max_fails": "1",
    "health.passive.fail_duration": "2s",
    "timeout.dial": "1s",
}


@pytest.mark.parametrize("mode", MODES)
def test_first_fails_over_to_the_backup_without_a_failed_request_and_returns(
    mode: str,
    start_daemon: StartDaemon,
    backend: StartBackend,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed: `lb.policy=first` sends everything to the primary; stopping the primary moves
    traffic to the backup with no failed request (labels: FAILOVER_LABELS), and starting it
    again moves traffic back."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    pool = {"host": unique_host, **FAILOVER_LABELS}
    service = f"{scenario.prefix}-db"
    primary = backend(
        name=f"{service}-primary", labels=scenario.labels({**pool, "order": "1"}), env=GRACEFUL
    )
    standby = backend(
        name=f"{service}-backup", labels=scenario.labels({**pool, "order": "2"}), env=GRACEFUL
    )
    wait_routed(daemon, unique_host, {primary.name})
    if mode == "static":  # the backup's join reloads Caddy: let that happen before measuring
        wait_until(
            lambda: len(routes_for(daemon, {unique_host})[0]["handle"][0]["upstreams"]) == 2,
            timeout=15,
            message="the backup in Caddy's upstreams",
        )

    with Load(
        daemon.url,
        unique_host,
        clients=3,
        max_seconds=90,
        timeout=15,
        is_success=answered_by(service),
        retry_stale=mode == "static",
    ) as load:
        load.wait_successes(30)
        primary.container.stop(timeout=5)
        wait_until(
            lambda: load.result.backends[standby.name] >= 30,
            timeout=30,
            message="the backup to serve",
        )
        primary.container.start()
        at_return = load.result.backends[primary.name]
        wait_until(
            lambda: load.result.backends[primary.name] >= at_return + 30,
            timeout=30,
            message="the primary to serve again",
        )
    result = load.result
    print(f"first failover [{mode}]: {result.summary()}")
    record_property(f"first_failover_failed_{mode}", f"{result.failed}/{result.total}")
    wait_routed(daemon, unique_host, {primary.name})
    if mode == "dynamic":
        assert result.failed == 0, result.summary()
    else:
        # Every membership change reloads Caddy, which closes client connections: a request
        # racing that close is lost (a browser would resend it). No request may fail
        # otherwise: every answer that came back is a 200 from the service.
        assert set(result.statuses) == {200}, result.summary()
        assert result.failed == sum(result.errors.values()), result.summary()


@pytest.mark.parametrize("mode", MODES)
def test_least_conn_avoids_a_backend_jammed_by_slow_requests(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, unique_host: str, client: Any
) -> None:
    """Seed: `lb.policy=least_conn` with slow requests (`/slow?6`) in flight on one replica
    sends every new request to the idle replica, and to both once the slow ones are done."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    labels = scenario.labels({"host": unique_host, "lb.policy": "least_conn"})
    jammed = backend(name="jammed", labels=labels)
    wait_routed(daemon, unique_host, {jammed.name})

    slow_answers: list[str | None] = []

    def slow_request() -> None:
        response = daemon.request(unique_host, "/slow?6", timeout=30)
        slow_answers.append(response.headers.get("X-Backend"))

    slow = [threading.Thread(target=slow_request) for _ in range(3)]
    for thread in slow:
        thread.start()
    idle = backend(name="idle", labels=labels)
    # While the jammed replica holds 3 requests, least_conn picks the idle one every time.
    wait_routed(daemon, unique_host, {idle.name})
    quick = answers(client(daemon), unique_host, 20)
    still_jammed = all(thread.is_alive() for thread in slow)
    for thread in slow:
        thread.join(timeout=30)

    assert still_jammed, "the slow requests ended before the check: inconclusive"
    assert quick == [idle.name] * 20
    assert slow_answers == [jammed.name] * 3
    wait_routed(daemon, unique_host, {jammed.name, idle.name})


@pytest.mark.parametrize("mode", MODES)
def test_ip_hash_and_cookie_keep_each_client_on_one_backend(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, make_host: MakeHost, client: Any
) -> None:
    """Seed: `lb.policy=ip_hash` sends each client address to one replica, and
    `lb.policy=cookie` keeps a client holding the cookie on one replica; different clients
    spread over the replicas."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    by_ip, by_cookie = make_host("iphash"), make_host("cookie")
    ip_labels = scenario.labels({"host": by_ip, "lb.policy": "ip_hash"})
    cookie_labels = scenario.labels({"host": by_cookie, "lb.policy": "cookie"})
    ip_replicas = {backend(name="ip", labels=ip_labels).name for _ in range(3)}
    cookie_replicas = {backend(name="cookie", labels=cookie_labels).name for _ in range(3)}
    # The cookie pool's replicas started last: once a fresh client per request reaches each
    # of them, the ip_hash pool (same or earlier listing) is complete too.
    wait_until(
        lambda: fresh_answers(daemon, by_cookie, 12) == cookie_replicas,
        timeout=20,
        message="every cookie replica to serve",
    )

    # Loopback is 127/8: each client dials from its own source address.
    def chosen_by_ip() -> dict[str, set[str | None]]:
        chosen = {}
        for last in range(2, 12):
            source = f"127.0.0.{last}"
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(base_url=daemon.url, transport=transport, trust_env=False) as one:
                chosen[source] = set(answers(one, by_ip, 6))
        return chosen

    # Dynamic mode: Caddy may hold the previous member list for one refresh; judge once two
    # rounds in a row agree.
    rounds: list[dict[str, set[str | None]]] = []

    def settled() -> dict[str, set[str | None]] | None:
        rounds.append(chosen_by_ip())
        return rounds[-1] if len(rounds) >= 2 and rounds[-1] == rounds[-2] else None

    by_source = wait_until(settled, timeout=20, message="ip_hash choices to settle")
    assert all(len(chosen) == 1 for chosen in by_source.values()), by_source
    spread = set().union(*by_source.values())
    assert spread <= ip_replicas and len(spread) >= 2, by_source

    chosen_by_session = []
    for _ in range(8):
        session = client(daemon)  # its own cookie jar
        chosen = answers(session, by_cookie, 6)
        assert "lb" in session.cookies, "the cookie policy set no cookie"
        chosen_by_session.append(set(chosen))
    assert all(len(chosen) == 1 for chosen in chosen_by_session), chosen_by_session
    spread = set().union(*chosen_by_session)
    assert spread <= cookie_replicas and len(spread) >= 2, chosen_by_session


@pytest.mark.parametrize("mode", MODES)
def test_canary_split_of_20_percent_holds_over_200_requests(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, unique_host: str, client: Any
) -> None:
    """Seed: `split=20` with one `track=canary` replica beside two stable ones sends 20 %
    (within 5 points) of 200 requests to the canary."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    pool = {"host": unique_host, "split": "20"}
    stable = {backend(name="stable", labels=scenario.labels(pool)).name for _ in range(2)}
    canary = backend(name="canary", labels=scenario.labels({**pool, "track": "canary"}))
    wait_routed(daemon, unique_host, {*stable, canary.name})

    counts = Counter(answers(client(daemon), unique_host, 200))

    print(f"canary split [{mode}]: {dict(counts)}")
    assert set(counts) == {*stable, canary.name}
    assert 30 <= counts[canary.name] <= 50, counts


@pytest.mark.parametrize("mode", MODES)
def test_https_backend_is_reached(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: a backend serving TLS on 8443 (scheme https by default for that port) with a
    self-signed certificate and `tls.skip_verify=true` answers through Caddy."""
    scenario = Scenario(start_daemon, mode)
    labels = scenario.labels({"host": unique_host, "tls.skip_verify": "true"})
    secure = backend(image="https", ports=[8443], labels=labels)
    wait_routed(scenario.daemon, unique_host, {secure.name})


# -- rolling update ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_rolling_update_under_load(
    mode: str,
    start_daemon: StartDaemon,
    backend: StartBackend,
    unique_host: str,
    record_property: RecordProperty,
) -> None:
    """Seed: a 2-replica service (graceful on SIGTERM) is updated 4 times (start a new
    replica, wait until it serves, stop the oldest) while 4 keep-alive clients send requests
    through Caddy. In dynamic mode no request fails and every answer comes from the service;
    in static mode routing converges (failures reported)."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    labels = scenario.labels({"host": unique_host, "lb.policy": "round_robin"})
    service = f"{scenario.prefix}-web"
    replicas = [backend(name=f"{service}-v0", labels=labels, env=GRACEFUL) for _ in range(2)]
    wait_routed(daemon, unique_host, {r.name for r in replicas})
    wait_settled(daemon, filled={unique_host})  # the first member's fallback, written later

    with Load(
        daemon.url,
        unique_host,
        clients=4,
        max_seconds=120,
        timeout=15,
        is_success=answered_by(service),
        retry_stale=mode == "static",
    ) as load:
        load.wait_successes(40)

        def serves(replica: ContainerHandle) -> bool:
            return load.result.backends[replica.name] >= 5

        for version in range(1, 5):
            fresh = backend(name=f"{service}-v{version}", labels=labels, env=GRACEFUL)
            wait_until(partial(serves, fresh), timeout=30, message=f"{fresh.name} to serve")
            oldest = replicas.pop(0)
            oldest.container.stop(timeout=5)
            replicas.append(fresh)
        load.wait_successes(40)
    result = load.result
    print(f"rolling update [{mode}]: {result.failed}/{result.total} failed; {result.summary()}")
    record_property(f"rolling_update_failed_{mode}", f"{result.failed}/{result.total}")
    wait_routed(daemon, unique_host, {r.name for r in replicas})
    if mode == "dynamic":
        assert result.failed == 0, result.summary()


@pytest.mark.parametrize("mode", MODES)
def test_slow_response_survives_changes_to_other_pools(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, make_host: MakeHost
) -> None:
    """Seed: a slow response (`/slow?5`) already in flight completes intact while other
    pools change: one is removed (a Caddy write in both modes), another loses a replica and
    gets it back (in static mode each change reloads Caddy)."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    slow_host, other_host, gone_host = make_host("slow"), make_host("other"), make_host("gone")
    slow_backend = backend(labels=scenario.labels({"host": slow_host}))
    other = backend(labels=scenario.labels({"host": other_host}))
    extra = backend(labels=scenario.labels({"host": other_host}))
    leaving = backend(labels=scenario.labels({"host": gone_host}))
    wait_routed(daemon, slow_host, {slow_backend.name})
    wait_routed(daemon, other_host, {other.name, extra.name})
    wait_routed(daemon, gone_host, {leaving.name})
    before = routes_for(daemon, {slow_host})

    outcome: dict[str, Any] = {}

    def slow_request() -> None:
        try:
            response = daemon.request(slow_host, "/slow?5", timeout=30)
            outcome["response"] = (response.status_code, response.text)
        except httpx.HTTPError as exc:
            outcome["error"] = repr(exc)

    etag = daemon.config_etag()
    in_flight = threading.Thread(target=slow_request)
    in_flight.start()
    # Changes that need no new container, so they all land while the request is in flight.
    leaving.container.remove(force=True)
    wait_until(lambda: not routes_for(daemon, {gone_host}), timeout=15, message="pool removed")
    extra.container.stop(timeout=1)
    wait_routed(daemon, other_host, {other.name})
    extra.container.start()
    wait_routed(daemon, other_host, {other.name, extra.name})
    changed_config = daemon.config_etag() != etag
    still_in_flight = in_flight.is_alive()
    in_flight.join(timeout=30)

    assert changed_config, "no Caddy config change happened: nothing was tested"
    assert still_in_flight, "the slow request ended before the changes: inconclusive"
    assert outcome == {"response": (200, f"{slow_backend.name}\n")}
    assert routes_for(daemon, {slow_host}) == before


# -- user routes in the same server ------------------------------------------------------------

USER_SITE = "user-site.test"


def _user_server(listen: str) -> dict[str, Any]:
    """A server as a user's Caddyfile would make it: one site, and a catch-all at the end."""
    return {
        "listen": [listen],
        "automatic_https": {"disable": True},
        "routes": [
            {
                "match": [{"host": [USER_SITE]}],
                "handle": [{"handler": "static_response", "body": "user site"}],
                "terminal": True,
            },
            {"handle": [{"handler": "static_response", "status_code": 404, "body": "fallback"}]},
        ],
    }


@pytest.fixture
def user_daemon(caddy: CaddyProcess) -> Iterator[Callable[[str, str], Daemon]]:
    """Factory `(mode, label_prefix) -> Daemon` writing into a server the user created first,
    holding a site route and a catch-all."""
    started: list[Daemon] = []

    def start(mode: str, prefix: str) -> Daemon:
        daemon = Daemon(
            caddy,
            name=f"user-srv-{short_uuid()}",
            upstreams=mode,
            env={"LABELSYNC_LABEL_PREFIX": prefix},
        )
        started.append(daemon)
        caddy.admin("PUT", daemon.server_path, _user_server(f"127.0.0.1:{daemon.http_port}"))
        return daemon.start(wait_synced=False)

    yield start
    for daemon in started:
        daemon.close()


@pytest.mark.parametrize("mode", MODES)
def test_user_routes_keep_content_and_position_through_adds_and_removes(
    mode: str,
    user_daemon: Callable[[str, str], Daemon],
    backend: StartBackend,
    make_host: MakeHost,
) -> None:
    """Seed: in a server the user already has (a site and a catch-all), labelsync adds and
    removes its routes while the user's routes keep their exact content and relative order,
    the catch-all stays last, and the user's site keeps answering."""
    prefix = f"ls{short_uuid()}"
    daemon = user_daemon(mode, prefix)
    user_routes = _user_server("unused")["routes"]

    def check_user_routes() -> int:
        """The number of labelsync's routes, after checking the user's."""
        routes = daemon.routes()
        theirs = [r for r in routes if not str(r.get("@id", "")).startswith("labelsync-")]
        assert theirs == user_routes, routes
        assert routes[-1] == user_routes[-1], "the catch-all is no longer last"
        assert daemon.request(USER_SITE).text == "user site"
        assert daemon.request("nobody.test").text == "fallback"
        return len(routes) - len(theirs)

    first_host, second_host = make_host("first"), make_host("second")
    first = backend(labels=prefixed({"host": first_host}, prefix))
    wait_routed(daemon, first_host, {first.name})
    assert check_user_routes() == 1
    second = backend(labels=prefixed({"host": second_host}, prefix))
    wait_routed(daemon, second_host, {second.name})
    assert check_user_routes() == 2
    first.container.remove(force=True)
    wait_until(lambda: unrouted(daemon, first_host), timeout=15, message="first host gone")
    wait_routed(daemon, second_host, {second.name})
    check_user_routes()
    second.container.remove(force=True)
    wait_until(lambda: unrouted(daemon, second_host), timeout=15, message="second host gone")
    check_user_routes()
    third = backend(labels=prefixed({"host": first_host}, prefix))
    wait_routed(daemon, first_host, {third.name})
    check_user_routes()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_bad_label_drops_only_that_route_and_names_the_container(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, make_host: MakeHost
) -> None:
    """Seed: a container labelled `labelsync.lb.policy=rond_robin` gets one ERROR line naming
    it and suggesting 'round_robin'; nothing else changes: the pool it tried to join keeps
    its route and members, its own host gets no route, and the other pools still route."""
    daemon = start_daemon(upstreams=mode)  # the default prefix: the message names it
    good_host, other_host, bad_host = make_host("good"), make_host("other"), make_host("bad")
    good = backend(name="good", labels=prefixed({"host": good_host}))
    other = backend(name="other", labels=prefixed({"host": other_host}))
    wait_routed(daemon, good_host, {good.name})
    wait_routed(daemon, other_host, {other.name})
    wait_settled(daemon, filled={good_host, other_host})  # the first members' fallbacks
    before = routes_for(daemon, {good_host, other_host, bad_host})
    log_start = len(daemon.logs())

    typo = {"lb.policy": "rond_robin"}
    alone = backend(name="typo-alone", labels=prefixed({"host": bad_host, **typo}))
    joiner = backend(name="typo-joiner", labels=prefixed({"host": good_host, **typo}))
    for bad in (alone, joiner):
        line = daemon.wait_log(rf"ERROR.*{bad.name}.*", after=log_start).group(0)
        assert "labelsync.lb.policy='rond_robin'" in line, line
        assert "did you mean 'round_robin'" in line, line

    wait_routed(daemon, good_host, {good.name})
    wait_routed(daemon, other_host, {other.name})
    assert unrouted(daemon, bad_host)
    assert routes_for(daemon, {good_host, other_host, bad_host}) == before
    # One line per bad container, not one per sync (each start above was a sync).
    later_logs = daemon.logs()[log_start:]
    for bad in (alone, joiner):
        assert len(re.findall(rf"ERROR.*{bad.name}", later_logs)) == 1, later_logs
