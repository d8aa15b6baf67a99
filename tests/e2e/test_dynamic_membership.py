"""Dynamic membership end to end: real dockerd, real Caddy, real `labelsync run`, real requests.

In the default mode each pool's Caddy route holds only its shape; the members come from
labelsync's resolver. These scenarios prove what that buys (scaling, crashes and health
flips change no Caddy config, and health verdicts outlive Caddy reloads), that every
policy behaves as it does with static upstreams, that the resolver shrugs off garbage,
and that a resolver Caddy cannot reach is reported.
"""

from __future__ import annotations

import re
import socket
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from labelsync.core.names import member_target
from tests.e2e.conftest import StartDaemon
from tests.support.caddy import CaddyProcess
from tests.support.containers import ContainerHandle
from tests.support.daemon import Daemon, free_udp_port, wait_routed, wait_settled
from tests.support.scenario import Scenario

MODES = ["dynamic", "static"]
MakeHost = Callable[[str], str]
StartBackend = Callable[..., ContainerHandle]

# Quick checks so that a member flips within about a second of its /health changing.
ACTIVE_CHECK = {
    "health.path": "/health",
    "health.interval": "500ms",
    "health.fails": "2",
    "health.passes": "1",
}


# -- helpers -----------------------------------------------------------------------------------


def ask(daemon: Daemon, name: str, qtype: str = "SRV", timeout: float = 2.0) -> DNSRecord | None:
    """One UDP question to the daemon's resolver; None when nothing answers in time."""
    return exchange(daemon, DNSRecord.question(name, qtype).pack(), timeout)


def exchange(daemon: Daemon, packet: bytes, timeout: float = 2.0) -> DNSRecord | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, ("127.0.0.1", daemon.resolver_port))
        try:
            return DNSRecord.parse(sock.recv(4096))
        except TimeoutError:
            return None


def pool_name(daemon: Daemon, host: str) -> str:
    """The SRV name Caddy asks for the pool of `host` (from the route labelsync wrote)."""
    for route in daemon.routes():
        if any(host in matcher.get("host", []) for matcher in route.get("match", [])):
            return str(route["handle"][0]["dynamic_upstreams"]["name"])
    raise AssertionError(f"no route for {host}")


def srv_targets(daemon: Daemon, name: str) -> set[str]:
    reply = ask(daemon, name)
    assert reply is not None, f"the resolver did not answer SRV {name}"
    return {str(rr.rdata.target) for rr in reply.rr if rr.rtype == QTYPE.SRV}


def target_of(member: ContainerHandle) -> str:
    return member_target(member.address(), member.id)[0]


@pytest.fixture
def unrelated_route(caddy: CaddyProcess, make_host: MakeHost) -> Iterator[Callable[[], None]]:
    """Factory: one admin write to the session Caddy outside labelsync's servers (a reload)."""
    hosts: set[str] = set()

    def write() -> None:
        host = make_host("unrelated")
        hosts.add(host)
        route = {"match": [{"host": [host]}], "handle": [{"handler": "static_response"}]}
        caddy.add_routes([route])

    yield write
    if hosts:
        caddy.delete_routes_with_host(hosts)


# -- membership changes write no config --------------------------------------------------------


def test_scaling_and_a_crash_change_no_caddy_config(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: `--scale web=5`, a replica crashing (`docker kill`) and scaling back to 1 are
    routed within moments in dynamic mode, and none of it writes Caddy's config (the Etag
    of GET /config/ never changes)."""
    scenario = Scenario(start_daemon, "dynamic")
    daemon = scenario.daemon
    labels = scenario.labels({"host": unique_host, "lb.policy": "round_robin"})
    replicas = [backend(labels=labels)]
    wait_routed(daemon, unique_host, {replicas[0].name})
    wait_settled(daemon, filled={unique_host})  # the first member's fallback write
    etag = daemon.config_etag()

    replicas += [backend(labels=labels) for _ in range(4)]
    wait_routed(daemon, unique_host, {r.name for r in replicas}, timeout=10)

    crashed = replicas.pop(2)
    crashed.container.kill()
    wait_routed(daemon, unique_host, {r.name for r in replicas}, timeout=10)

    for extra in replicas[1:]:
        extra.container.remove(force=True)
    crashed.container.remove(force=True)
    wait_routed(daemon, unique_host, {replicas[0].name}, timeout=10)
    assert daemon.config_etag() == etag, "membership changes wrote Caddy config"


# -- labelsync's own active checks -------------------------------------------------------------


def test_failing_health_check_withdraws_a_member_across_a_caddy_reload(
    start_daemon: StartDaemon,
    backend: StartBackend,
    unique_host: str,
    unrelated_route: Callable[[], None],
) -> None:
    """Seed: with `health.path=/health` (interval 500ms, fails 2, passes 1) a member whose
    /health starts failing leaves the resolver's answers and gets no more requests; a Caddy
    config reload in between (an unrelated admin write) does not bring it back, because the
    verdict lives in labelsync; once /health passes again the member returns."""
    scenario = Scenario(start_daemon, "dynamic")
    daemon = scenario.daemon
    labels = scenario.labels({"host": unique_host, "lb.policy": "round_robin", **ACTIVE_CHECK})
    healthy, sick = backend(labels=labels), backend(labels=labels)
    wait_routed(daemon, unique_host, {healthy.name, sick.name})
    name = pool_name(daemon, unique_host)
    assert srv_targets(daemon, name) == {target_of(healthy), target_of(sick)}

    sick.exec("rm", "/www/health")  # the backend's /health answers 503 without this file
    wait_routed(daemon, unique_host, {healthy.name}, timeout=10)
    assert srv_targets(daemon, name) == {target_of(healthy)}

    etag = daemon.config_etag()
    unrelated_route()
    assert daemon.config_etag() != etag, "the unrelated write did not reach Caddy"
    assert {daemon.body(unique_host) for _ in range(10)} == {healthy.name}
    assert srv_targets(daemon, name) == {target_of(healthy)}

    sick.exec("touch", "/www/health")
    wait_routed(daemon, unique_host, {healthy.name, sick.name}, timeout=10)
    assert srv_targets(daemon, name) == {target_of(healthy), target_of(sick)}
    # Health changes name the container, then its address.
    daemon.wait_log(rf"member {re.escape(sick.name)} \(\S+\) of \S+ is unhealthy \(status 503")


# -- policies: the same outcomes in both modes -------------------------------------------------


def sticky_cookie(daemon: Daemon, host: str) -> tuple[str, str]:
    """The backend of a first request without a cookie, and the `lb` cookie Caddy set."""
    response = daemon.request(host)
    assert response.status_code == 200, response.text
    return response.text.strip(), response.cookies["lb"]


def with_cookie(daemon: Daemon, host: str, cookie: str) -> str:
    response = daemon.request(host, headers={"Cookie": f"lb={cookie}"})
    assert response.status_code == 200, response.text
    return response.text.strip()


@pytest.mark.parametrize("mode", MODES)
def test_every_policy_behaves_the_same_in_both_modes(
    mode: str, start_daemon: StartDaemon, backend: StartBackend, make_host: MakeHost
) -> None:
    """Seed parity: round robin cycles every member, `cookie` and `ip_hash` keep a client on
    one member, a 25% canary split gets exactly a quarter, an https member with
    `tls.skip_verify=true` answers, and `first` fails over when its primary stops and
    returns when it is back — with dynamic upstreams exactly as with static ones."""
    scenario = Scenario(start_daemon, mode)
    daemon = scenario.daemon
    hosts = {name: make_host(name) for name in ("rr", "cookie", "iphash", "first", "split", "tls")}

    def route_labels(index: int) -> dict[str, str]:
        keys = {
            "route.rr.host": hosts["rr"],
            "route.rr.lb.policy": "round_robin",
            "route.cookie.host": hosts["cookie"],
            "route.cookie.lb.policy": "cookie",
            "route.iphash.host": hosts["iphash"],
            "route.iphash.lb.policy": "ip_hash",
            "route.first.host": hosts["first"],
            "route.first.lb.policy": "first",
            "route.first.order": str(index),
        }
        if index < 2:  # a stable member and a canary
            keys |= {
                "route.split.host": hosts["split"],
                "route.split.split": "25",
                "route.split.track": "canary" if index == 1 else "stable",
            }
        return scenario.labels(keys)

    members = [backend(labels=route_labels(index)) for index in range(3)]
    names = [member.name for member in members]
    tls = backend(
        image="https",
        ports=[8443],
        labels=scenario.labels({"host": hosts["tls"], "tls.skip_verify": "true"}),
    )
    wait_routed(daemon, hosts["rr"], set(names))
    wait_routed(daemon, hosts["split"], set(names[:2]))
    wait_routed(daemon, hosts["first"], {names[0]})
    wait_routed(daemon, hosts["tls"], {tls.name})

    cycle = Counter(daemon.body(hosts["rr"]) for _ in range(9))
    assert cycle == dict.fromkeys(names, 3), cycle

    first_answer, cookie = sticky_cookie(daemon, hosts["cookie"])
    assert {with_cookie(daemon, hosts["cookie"], cookie) for _ in range(8)} == {first_answer}

    pinned = {daemon.body(hosts["iphash"]) for _ in range(10)}
    assert len(pinned) == 1 and pinned <= set(names), pinned

    shares = Counter(daemon.body(hosts["split"]) for _ in range(40))
    assert shares == {names[0]: 30, names[1]: 10}, shares

    members[0].container.stop(timeout=1)
    wait_routed(daemon, hosts["first"], {names[1]}, timeout=10)
    members[0].container.start()
    wait_routed(daemon, hosts["first"], {names[0]}, timeout=15)


# -- the resolver under bad input --------------------------------------------------------------


def test_the_resolver_survives_malformed_and_unknown_queries(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: garbage, a DNS *response*, an unknown opcode, names outside labelsync's zone and
    unknown names inside it, sent to the running daemon's resolver, get no answer, NOTIMP,
    REFUSED or NXDOMAIN; the resolver keeps answering the pool and Caddy keeps routing."""
    scenario = Scenario(start_daemon, "dynamic")
    daemon = scenario.daemon
    member = backend(labels=scenario.labels({"host": unique_host}))
    wait_routed(daemon, unique_host, {member.name})
    name = pool_name(daemon, unique_host)

    assert exchange(daemon, b"\x12\x34 certainly not DNS", timeout=0.5) is None
    response = DNSRecord.question(name, "SRV")
    response.header.qr = 1
    assert exchange(daemon, response.pack(), timeout=0.5) is None
    status = DNSRecord.question(name, "SRV")
    status.header.opcode = 2
    assert (reply := exchange(daemon, status.pack())) is not None
    assert reply.header.rcode == RCODE.NOTIMP
    assert (reply := ask(daemon, "example.com.", "A")) is not None
    assert reply.header.rcode == RCODE.REFUSED and not reply.rr
    assert (reply := ask(daemon, "nothing-here.pool.labelsync.internal.")) is not None
    assert reply.header.rcode == RCODE.NXDOMAIN and not reply.rr
    with socket.create_connection(("127.0.0.1", daemon.resolver_port), timeout=2) as stream:
        stream.sendall(b"\x00\x05oops!")  # a framed TCP message that is not DNS
        assert stream.recv(100) == b""  # the resolver hangs up on it

    assert srv_targets(daemon, name) == {target_of(member)}
    assert {daemon.body(unique_host) for _ in range(4)} == {member.name}


# -- can Caddy reach the resolver? -------------------------------------------------------------


UNREACHABLE = "Caddy is not using labelsync's resolver"


def test_caddy_reaching_the_resolver_is_confirmed_without_traffic(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: after the first routes are written, labelsync confirms that Caddy asks its
    resolver, sending one request through Caddy itself when no client does."""
    scenario = Scenario(start_daemon, "dynamic")
    member = backend(labels=scenario.labels({"host": unique_host}))
    scenario.daemon.wait_log(r"Caddy reaches the resolver at 127\.0\.0\.1:\d+", timeout=20)
    assert UNREACHABLE not in scenario.daemon.logs()
    wait_routed(scenario.daemon, unique_host, {member.name})


def test_a_resolver_address_caddy_cannot_use_is_reported_once(
    start_daemon: StartDaemon, backend: StartBackend, unique_host: str
) -> None:
    """Seed: `LABELSYNC_RESOLVER_ADVERTISE` names an address where no resolver answers (as
    when Caddy runs in another container and is told 127.0.0.1): one ERROR line says that
    Caddy does not use the resolver, names both settings and what Caddy was told."""
    wrong = f"127.0.0.1:{free_udp_port()}"
    scenario = Scenario(start_daemon, "dynamic", LABELSYNC_RESOLVER_ADVERTISE=wrong)
    member = backend(labels=scenario.labels({"host": unique_host}))
    line = scenario.daemon.wait_log(rf"ERROR\s+{UNREACHABLE}.*", timeout=30)[0]
    assert f"udp/{wrong}" in line and f"LABELSYNC_RESOLVER_ADVERTISE={wrong}" in line, line
    assert "LABELSYNC_RESOLVER_LISTEN=127.0.0.1:" in line, line
    assert "did not reach its resolver either" in line, line
    assert "served only by the members of labelsync's last config write" in line, line
    # As the line says: Caddy serves from the route's fallback member list.
    assert scenario.daemon.body(unique_host) == member.name
    assert scenario.daemon.logs().count(UNREACHABLE) == 1
