"""The built-in resolver, queried over real UDP and TCP sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from labelsync.core.model import Member, Pool, PoolSettings, PoolShape
from labelsync.core.names import member_target
from labelsync.membership.answers import EDNS_UDP_SIZE
from labelsync.membership.resolver import Resolver
from labelsync.membership.srv_records import SrvAnswer, srv_answers

pytestmark = pytest.mark.asyncio(loop_scope="session")

POOL = "0123456789abcdef.pool.labelsync.internal"


def record(address: str, priority: int = 0) -> SrvAnswer:
    target, port = member_target(address)
    return SrvAnswer(priority=priority, weight=0, port=port, target=target)


@pytest.fixture
async def resolver() -> AsyncIterator[Resolver]:
    server = Resolver("127.0.0.1:0")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def _host_port(resolver: Resolver) -> tuple[str, int]:
    host, _, port = resolver.bound_address.rpartition(":")
    return host, int(port)


async def query(
    resolver: Resolver, name: str, qtype: str, *, tcp: bool = False, edns: bool = True
) -> tuple[DNSRecord, int]:
    """The parsed answer and its size in bytes."""
    question = DNSRecord.question(name, qtype)
    if edns:
        question.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
    host, port = _host_port(resolver)
    raw = await asyncio.to_thread(question.send, host, port, tcp=tcp, timeout=3)
    return DNSRecord.parse(raw), len(raw)


def srv_targets(answer: DNSRecord) -> list[tuple[int, int, str]]:
    return [
        (rr.rdata.priority, rr.rdata.port, str(rr.rdata.target))
        for rr in answer.rr
        if rr.rtype == QTYPE.SRV
    ]


async def test_srv_for_a_pool_name_lists_its_members_with_ttl_zero(resolver: Resolver) -> None:
    resolver.update({POOL: [record("10.0.0.5:8080", 0), record("10.0.0.6:8081", 1)]})
    answer, _ = await query(resolver, POOL, "SRV")
    assert answer.header.rcode == RCODE.NOERROR
    assert answer.header.aa == 1
    assert srv_targets(answer) == [
        (0, 8080, "10-0-0-5.ip4.labelsync.internal."),
        (1, 8081, "10-0-0-6.ip4.labelsync.internal."),
    ]
    assert {rr.ttl for rr in answer.rr} == {0}


async def test_pool_names_match_whatever_the_case_and_trailing_dot(resolver: Resolver) -> None:
    resolver.update({POOL + ".": [record("10.0.0.5:80")]})
    answer, _ = await query(resolver, POOL.upper(), "SRV")
    assert len(srv_targets(answer)) == 1


async def test_member_target_names_answer_their_own_address(resolver: Resolver) -> None:
    v4, _ = member_target("172.18.0.9:80")
    v6, _ = member_target("[fd00::9]:80")
    a, _ = await query(resolver, v4, "A")
    assert [str(rr.rdata) for rr in a.rr] == ["172.18.0.9"]
    empty, _ = await query(resolver, v4, "AAAA")
    assert empty.header.rcode == RCODE.NOERROR and not empty.rr
    aaaa, _ = await query(resolver, v6, "AAAA")
    assert [str(rr.rdata) for rr in aaaa.rr] == ["fd00::9"]


async def test_unknown_names_are_nxdomain_in_the_zone_and_refused_outside(
    resolver: Resolver,
) -> None:
    missing, _ = await query(resolver, "ffffffffffffffff.pool.labelsync.internal", "SRV")
    assert missing.header.rcode == RCODE.NXDOMAIN
    outside, _ = await query(resolver, "example.com", "A")
    assert outside.header.rcode == RCODE.REFUSED


async def test_update_replaces_everything_served(resolver: Resolver) -> None:
    other = "fedcba9876543210.pool.labelsync.internal"
    resolver.update({POOL: [record("10.0.0.5:80")], other: [record("10.0.0.6:80")]})
    resolver.update({other: [record("10.0.0.7:80")]})
    gone, _ = await query(resolver, POOL, "SRV")
    assert gone.header.rcode == RCODE.NXDOMAIN
    kept, _ = await query(resolver, other, "SRV")
    assert [t for _, _, t in srv_targets(kept)] == ["10-0-0-7.ip4.labelsync.internal."]


async def test_a_pool_without_members_answers_empty_noerror(resolver: Resolver) -> None:
    resolver.update({POOL: []})
    answer, _ = await query(resolver, POOL, "SRV")
    assert answer.header.rcode == RCODE.NOERROR and not answer.rr


async def test_tcp_gives_the_same_answer(resolver: Resolver) -> None:
    assert resolver.tcp_enabled
    resolver.update({POOL: [record("10.0.0.5:80"), record("10.0.0.6:80")]})
    udp, _ = await query(resolver, POOL, "SRV")
    tcp, _ = await query(resolver, POOL, "SRV", tcp=True)
    assert srv_targets(tcp) == srv_targets(udp)


async def test_malformed_packets_are_dropped_and_the_resolver_keeps_answering(
    resolver: Resolver,
) -> None:
    resolver.update({POOL: [record("10.0.0.5:80")]})
    host, port = _host_port(resolver)
    garbage = [b"", b"\x00", b"\xff" * 7, b"\x12\x34\x01\x00\x00\x01" + b"\xff" * 40, b"x" * 600]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for packet in garbage:
            udp.sendto(packet, (host, port))
    # A response packet (QR set) is never answered either.
    response = DNSRecord.question(POOL, "SRV").reply()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(response.pack(), (host, port))
    # Garbage over TCP closes that connection only.
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"\x00\x05hello")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()

    answer, _ = await query(resolver, POOL, "SRV")
    assert len(srv_targets(answer)) == 1
    tcp_answer, _ = await query(resolver, POOL, "SRV", tcp=True)
    assert len(srv_targets(tcp_answer)) == 1
    assert resolver.malformed >= len(garbage)  # the empty datagram may not arrive at all


async def test_queries_are_counted(resolver: Resolver) -> None:
    before = resolver.queries
    for _ in range(3):
        await query(resolver, POOL, "SRV")
    assert resolver.queries == before + 3


# -- size ----------------------------------------------------------------------------------


def weighted_pool(weights: list[int]) -> Pool:
    settings = PoolSettings(lb_policy="weighted_round_robin", split=1)
    shape = PoolShape(
        id="labelsync-w", hosts=("w.test",), path=None, settings=settings, retries=None
    )
    members = tuple(
        Member(
            address=f"172.18.{i // 250}.{2 + i % 250}:8080",
            container_id=str(i),
            container_name=str(i),
            weight=w,
        )
        for i, w in enumerate(weights)
    )
    return Pool(shape=shape, members=members)


@pytest.mark.parametrize(
    ("count", "address"),
    [(32, "255.255.{i}.{j}:65535"), (35, "172.18.0.{j}:8080"), (21, "[fd00::{i}:{j}]:8080")],
)
async def test_distinct_members_that_fit_one_go_sized_udp_answer(
    resolver: Resolver, count: int, address: str
) -> None:
    # 32 IPv4 members with the longest names, 35 on a Docker bridge, 21 IPv6.
    members = [record(address.format(i=100 + i, j=200 + i)) for i in range(count)]
    resolver.update({POOL: members})
    answer, size = await query(resolver, POOL, "SRV")
    assert answer.header.tc == 0
    assert len(srv_targets(answer)) == count
    assert size <= EDNS_UDP_SIZE
    members.append(record(address.format(i=99, j=199)))
    resolver.update({POOL: members})
    one_more, _ = await query(resolver, POOL, "SRV")
    assert one_more.header.tc == 1


async def test_an_answer_too_big_for_udp_is_a_window_with_tc_and_whole_over_tcp(
    resolver: Resolver,
) -> None:
    records = srv_answers(weighted_pool([99, 1]), healthy=lambda _: True)
    assert len(records) == 100
    resolver.update({POOL: records})
    seen: Counter[str] = Counter()
    for _ in range(20):
        answer, size = await query(resolver, POOL, "SRV")
        assert answer.header.tc == 1
        assert size <= EDNS_UDP_SIZE
        assert 40 <= len(answer.rr) < 100
        seen.update(t for _, _, t in srv_targets(answer))
    assert len(seen) == 2  # both members appear across windows
    whole, _ = await query(resolver, POOL, "SRV", tcp=True)
    assert whole.header.tc == 0
    assert Counter(t for _, _, t in srv_targets(whole)) == {
        member_target("172.18.0.2:8080", "0")[0]: 99,
        member_target("172.18.0.3:8080", "1")[0]: 1,
    }
    assert resolver.truncated >= 20


async def test_prioritised_answers_keep_their_head_when_cut(resolver: Resolver) -> None:
    records = [record(f"10.0.{i // 200}.{1 + i % 200}:80", priority=i) for i in range(80)]
    resolver.update({POOL: records})
    answer, _ = await query(resolver, POOL, "SRV")
    assert answer.header.tc == 1
    priorities = [p for p, _, _ in srv_targets(answer)]
    assert priorities == list(range(len(priorities)))


async def test_clients_without_edns_get_at_most_512_bytes(resolver: Resolver) -> None:
    resolver.update({POOL: [record(f"10.0.0.{i}:80") for i in range(1, 30)]})
    answer, size = await query(resolver, POOL, "SRV", edns=False)
    assert size <= 512
    assert answer.header.tc == 1


# -- host-name members ---------------------------------------------------------------------


async def test_host_name_targets_are_looked_up_only_while_a_pool_answers_them(
    resolver: Resolver,
) -> None:
    refused, _ = await query(resolver, "localhost", "A")
    assert refused.header.rcode == RCODE.REFUSED
    resolver.update({POOL: [record("localhost:8080")]})
    answer, _ = await query(resolver, "localhost", "A")
    assert answer.header.rcode == RCODE.NOERROR
    assert "127.0.0.1" in [str(rr.rdata) for rr in answer.rr]
    tcp_answer, _ = await query(resolver, "localhost", "A", tcp=True)
    assert "127.0.0.1" in [str(rr.rdata) for rr in tcp_answer.rr]


# -- lifecycle -----------------------------------------------------------------------------


async def test_stop_releases_the_port_and_a_new_resolver_can_bind_it() -> None:
    first = Resolver("127.0.0.1:0")
    await first.start()
    address = first.bound_address
    await first.stop()
    second = Resolver(address)
    await second.start()
    try:
        assert second.bound_address == address
        answer, _ = await query(second, "example.com", "A")
        assert answer.header.rcode == RCODE.REFUSED
    finally:
        await second.stop()


async def test_a_taken_udp_port_fails_start() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            await Resolver(f"127.0.0.1:{port}").start()


async def test_answers_while_the_daemons_event_loop_is_busy(resolver: Resolver) -> None:
    # Caddy holds one lock over every SRV pool during a lookup: the resolver runs on its
    # own thread so a busy daemon loop never delays an answer.
    resolver.update({POOL: [record("10.0.0.5:80")]})
    host, port = _host_port(resolver)
    answers: list[DNSRecord] = []

    def ask() -> None:
        raw = DNSRecord.question(POOL, "SRV").send(host, port, timeout=2)
        answers.append(DNSRecord.parse(raw))

    asker = threading.Thread(target=ask)
    asker.start()
    time.sleep(0.5)  # blocks this event loop, as a slow render or a sync call would
    asker.join()
    assert len(answers) == 1 and len(srv_targets(answers[0])) == 1


# -- packed answers ------------------------------------------------------------------------


async def test_repeated_questions_get_their_own_id_and_case_back(resolver: Resolver) -> None:
    resolver.update({POOL: [record("10.0.0.5:8080"), record("10.0.0.6:8080")]})
    host, port = _host_port(resolver)
    answers = []
    for query_id, name in [(1, POOL), (2, POOL.upper()), (3, POOL), (4, POOL.title())]:
        question = DNSRecord.question(name, "SRV")
        question.header.id = query_id
        question.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
        raw = await asyncio.to_thread(question.send, host, port, timeout=3)
        answers.append(DNSRecord.parse(raw))
    for query_id, (name, answer) in zip(
        (1, 2, 3, 4),
        [
            (POOL, answers[0]),
            (POOL.upper(), answers[1]),
            (POOL, answers[2]),
            (POOL.title(), answers[3]),
        ],
        strict=True,
    ):
        assert answer.header.id == query_id
        assert str(answer.q.qname) == name + "."
        assert answer.header.rd == 1 and answer.header.aa == 1
        assert len(srv_targets(answer)) == 2
        assert any(rr.rtype == QTYPE.OPT for rr in answer.ar)
    assert resolver.pool_queries == 4


async def test_an_update_replaces_packed_answers_of_changed_pools_only(resolver: Resolver) -> None:
    other = "fedcba9876543210.pool.labelsync.internal"
    resolver.update({POOL: [record("10.0.0.5:80")], other: [record("10.0.0.9:80")]})
    await query(resolver, POOL, "SRV")
    await query(resolver, other, "SRV")
    resolver.update({POOL: [record("10.0.0.6:80")], other: [record("10.0.0.9:80")]})
    changed, _ = await query(resolver, POOL, "SRV")
    assert [t for _, _, t in srv_targets(changed)] == ["10-0-0-6.ip4.labelsync.internal."]
    kept, _ = await query(resolver, other, "SRV")
    assert [t for _, _, t in srv_targets(kept)] == ["10-0-0-9.ip4.labelsync.internal."]
    resolver.update({other: [record("10.0.0.9:80")]})
    gone, _ = await query(resolver, POOL, "SRV")
    assert gone.header.rcode == RCODE.NXDOMAIN
    resolver.update({POOL: [record("10.0.0.7:80")], other: [record("10.0.0.9:80")]})
    back, _ = await query(resolver, POOL, "SRV")
    assert [t for _, _, t in srv_targets(back)] == ["10-0-0-7.ip4.labelsync.internal."]


async def test_packed_udp_answers_never_stand_in_for_tcp_ones(resolver: Resolver) -> None:
    records = srv_answers(weighted_pool([99, 1]), healthy=lambda _: True)
    resolver.update({POOL: records})
    for _ in range(2):
        whole, _ = await query(resolver, POOL, "SRV", tcp=True)
        assert whole.header.tc == 0 and len(whole.rr) == 100
        cut, size = await query(resolver, POOL, "SRV")
        assert cut.header.tc == 1 and size <= EDNS_UDP_SIZE


def _ask_unix(path: str, question: DNSRecord) -> DNSRecord:
    """One raw message each way on a fresh connection, as Go's client does there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        sock.connect(path)
        sock.sendall(question.pack())
        return DNSRecord.parse(sock.recv(65535))


async def test_a_unix_socket_resolver_answers_raw_messages_and_refuses_once_stopped(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """`unix:///path`: SRV and member names answered as over UDP (raw messages, no
    length prefix); a pool refused during the drain; after stop a connect fails at once."""
    path = str(tmp_path_factory.mktemp("dns") / "dns.sock")
    server = Resolver(f"unix://{path}")
    await server.start()
    try:
        assert server.bound_address == f"unix://{path}"
        server.update({POOL: [record("10.0.0.5:8080")]})
        srv = await asyncio.to_thread(_ask_unix, path, DNSRecord.question(POOL, "SRV"))
        assert srv_targets(srv) == [(0, 8080, "10-0-0-5.ip4.labelsync.internal.")]
        name = "10-0-0-5.ip4.labelsync.internal"
        a = await asyncio.to_thread(_ask_unix, path, DNSRecord.question(name, "A"))
        assert [str(rr.rdata) for rr in a.rr] == ["10.0.0.5"]
        server.refuse_pools()
        refused = await asyncio.to_thread(_ask_unix, path, DNSRecord.question(POOL, "SRV"))
        assert refused.header.rcode == RCODE.REFUSED
    finally:
        await server.stop()
    started = time.monotonic()
    with pytest.raises(OSError):
        _ask_unix(path, DNSRecord.question(POOL, "SRV"))
    assert time.monotonic() - started < 1


async def test_a_relative_unix_socket_path_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute path"):
        Resolver("unix://dns.sock")
