"""labelsync's built-in DNS resolver: pool membership, served live to Caddy.

Caddy's `dynamic_upstreams` (source `srv`) asks for a pool's SRV name every `refresh`
and dials each target through the transport resolver, both pointed here. It answers:

- SRV for every pool name given to `update` (TTL 0: Caddy's own refresh is the cache);
- A / AAAA for member target names (`10-0-0-5.3f2a9b1c0d4e.ip4.labelsync.internal.`),
  read from the name itself, so a member is dialable the moment it is answered, and still while a
  request that picked it just before it left is in flight;
- A / AAAA for host-name targets that some pool answers (members given by host name),
  looked up in the system resolver; never for any other name (no open resolver);
- NXDOMAIN for other names in `labelsync.internal`, REFUSED outside it.

It must always answer, and fast: Caddy holds one lock over all SRV upstreams while a
lookup runs, so a query left unanswered stalls every dynamic pool for Go's resolver
timeout (10 s measured). So the server runs on its own thread and event loop, where a
busy main loop cannot delay it; `update` swaps an immutable snapshot. Each answer is
packed once per snapshot and replayed: a repeated question (Caddy asks the same names
every `refresh`) costs a dictionary look-up and a copy with the asker's ID and question
bytes patched in (~33 µs round trip on loopback, `python -m bench --only resolver`,
against ~134 µs through the DNS library); an `update` keeps the packed answers of the
pools it does not change. Malformed packets
are counted and dropped. UDP answers fit the client's buffer (1232 bytes for Go): a
longer answer becomes a window of its records with TC set (see `_fit`). TCP is served
on the same port for clients configured with `tcp/` addresses, and for `dig +tcp`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import os
import random
import socket
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SRV, A, DNSHeader, DNSRecord
from loguru import logger

from labelsync.core.names import in_zone, parse_listen, target_ip
from labelsync.membership.srv_records import SrvAnswer

TTL = 0
# The EDNS buffer size we announce and the most we send over UDP to anyone: Go asks
# with 1232 (the DNS-flag-day size), and loopback needs no more.
EDNS_UDP_SIZE = 1232
CLASSIC_UDP_SIZE = 512
TCP_MESSAGE_LIMIT = 65535
TCP_IDLE_SECONDS = 10.0

_IN = 1
_ANY_CLASS = 255
_EMPTY_RESULT_ERRNOS = {
    socket.EAI_NONAME,
    getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
    getattr(socket, "EAI_ADDRFAMILY", socket.EAI_NONAME),
}


class _CompressedSRV(SRV):  # type: ignore[misc]
    """SRV whose target may point into names already in the message.

    RFC 2782 asks for uncompressed targets, but Go parses compressed ones (measured),
    and compression is what lets about 27 distinct IPv4 members (17 IPv6) fit one
    1232-byte answer: each target carries its own IP and container labels, only the zone
    is shared. A larger answer is a window of the records with TC set (`_fit`).
    """

    def pack(self, buffer: object) -> None:
        buffer.pack("!HHH", self.priority, self.weight, self.port)  # type: ignore[attr-defined]
        buffer.encode_name(self.target)  # type: ignore[attr-defined]


# Answers packed once and replayed; bounded, because names outside every pool (REFUSED,
# NXDOMAIN) are cached too and anyone who reaches the port picks those names.
PACKED_CACHE_LIMIT = 65536


@dataclass(frozen=True)
class _Packed:
    """One answer as sent: its bytes with the asker's ID and question to patch in."""

    wire: bytes
    name: str  # the question's name, normalised: what `update` invalidates by
    pool: bool  # a served pool's name (counted in `pool_queries`)


@dataclass(frozen=True)
class _Served:
    """What the resolver answers, replaced whole by `update`.

    `packed` holds the answers already sent for this snapshot, keyed by the request
    without its ID and with its question name lower-cased (`_packed_key`): a repeated
    question (Caddy asks the same few every `refresh`) is answered by copying bytes.
    """

    pools: Mapping[str, tuple[SrvAnswer, ...]] = field(default_factory=dict)
    hostnames: frozenset[str] = frozenset()
    packed: dict[bytes, _Packed] = field(default_factory=dict)


def _question_end(data: bytes) -> int:
    """Offset just past the question's name in a request; 0 when it is not plain labels
    (a compression pointer or a packet cut short: the full parser deals with those)."""
    size = len(data)
    index = 12
    while index < size:
        length = data[index]
        if length == 0:
            return index + 1
        if length > 63:
            return 0
        index += length + 1
    return 0


def _packed_key(data: bytes, name_end: int, *, tcp: bool) -> bytes:
    # Everything that shapes the answer but the ID: the transport (UDP answers are cut
    # to fit, TCP ones are not), flags (RD is echoed), counts, the name (lower-cased;
    # label lengths are below 64, so only letters change), type, class and the
    # additional section (EDNS: the client's buffer size).
    return (b"t" if tcp else b"u") + data[2:12] + data[12:name_end].lower() + data[name_end:]


def _normal(name: str) -> str:
    return name.rstrip(".").lower()


def _bind_address(listen: str) -> tuple[str, int]:
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ValueError(f"resolver listen address: {exc}") from exc
    return host or "0.0.0.0", port  # ":8053": every (IPv4) interface


UNIX_PREFIX = "unix://"


def unix_socket_path(address: str) -> str | None:
    """The socket path of a `unix:///path` resolver address; None for host:port.

    ValueError for a relative path."""
    if not address.startswith(UNIX_PREFIX):
        return None
    path = address.removeprefix(UNIX_PREFIX)
    if not path.startswith("/"):
        raise ValueError(f"resolver unix socket needs an absolute path: {address!r}")
    return path


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Resolver:
    """The DNS server Caddy asks for pool members.

        resolver = Resolver("127.0.0.1:8053")
        await resolver.start()
        resolver.update({pool_dns_name(pool.id): srv_answers(pool, healthy=...)})
        ...
        await resolver.stop()

    Counters for metrics: `queries` (messages received), `pool_queries` (questions
    for a served pool name: Caddy at work), `malformed` (dropped), `truncated` (UDP
    answers cut to fit, TC set), `lookup_failures` (host-name targets the system
    resolver did not answer).
    """

    def __init__(self, listen: str = "127.0.0.1:8053", *, lookup_timeout: float = 2.0) -> None:
        self._unix_path = unix_socket_path(listen)
        self._listen = ("", 0) if self._unix_path else _bind_address(listen)
        self._lookup_timeout = lookup_timeout
        self._served = _Served()
        self._bound: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._warned_truncation: set[str] = set()
        self.tcp_enabled = False
        self._refusing_pools = False
        self.queries = 0
        self.pool_queries = 0
        self.malformed = 0
        self.truncated = 0
        self.lookup_failures = 0

    @property
    def bound_address(self) -> str:
        """`host:port` the resolver answers on (the real port when asked for port 0)."""
        if self._bound is None:
            raise RuntimeError("resolver not started")
        return self._bound

    def answers(self) -> Mapping[str, tuple[SrvAnswer, ...]]:
        """The records served now, by pool DNS name (lower case, no trailing dot)."""
        return self._served.pools

    def update(
        self, pools: Mapping[str, Sequence[SrvAnswer]], *, changed: Iterable[str] | None = None
    ) -> None:
        """Serve exactly these pools from now on, keyed by DNS name; thread-safe.

        Packed answers of names whose answer did not change are kept, so an update
        that touches one pool costs the other pools nothing on their next question.
        `changed`: the names whose answers may differ from the last update (added,
        changed, or gone from `pools`); every other name is taken as it was, unread.
        """
        previous = self._served
        old = previous.pools
        served: dict[str, tuple[SrvAnswer, ...]]
        if changed is not None:
            served = dict(old)
            touched: set[str] = set()
            for name in changed:
                normal = _normal(name)
                given = pools.get(name)
                if given is None:
                    served.pop(normal, None)
                else:
                    served[normal] = tuple(given)
                if old.get(normal) != served.get(normal):
                    touched.add(normal)
        else:
            served = {_normal(name): tuple(records) for name, records in pools.items()}
            touched = {name for name, records in served.items() if old.get(name) != records}
            touched.update(old.keys() - served.keys())
        hostnames = previous.hostnames
        # Host-name targets only of the answers that changed: the others' are the same.
        if any(
            target_ip(record.target) is None
            for name in touched
            for record in (*old.get(name, ()), *served.get(name, ()))
        ):
            hostnames = frozenset(
                _normal(record.target)
                for records in served.values()
                for record in records
                if target_ip(record.target) is None
            )
        packed: dict[bytes, _Packed] = {}
        if hostnames == previous.hostnames:
            # A copy of the dict, taken while the resolver thread may add to it: a key
            # added meanwhile is either copied or asked again, never wrong.
            for key, entry in list(previous.packed.items()):
                if entry.name not in touched:
                    packed[key] = entry
        self._served = _Served(pools=served, hostnames=hostnames, packed=packed)

    def refuse_pools(self) -> None:
        """From now on answer pool (SRV) names REFUSED, member names as before; thread-safe.

        For the way out: Caddy's lookups then fail at once and it dials each route's
        fallback members by IP, while the member names in the SRV answers it cached (for
        up to its `refresh`) still resolve. Stopping at once instead leaves those names
        unresolvable: the requests that picked one fail, or wait out a timeout.
        """
        self._refusing_pools = True
        # A fresh snapshot: the packed answers kept so far include pool answers.
        served = self._served
        self._served = _Served(pools=served.pools, hostnames=served.hostnames)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind UDP (and TCP on the same port) and answer from a thread of its own.

        Raises OSError when the UDP address cannot be bound.
        """
        if self._thread is not None:
            raise RuntimeError("resolver already started")
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run, args=(ready,), name="labelsync-resolver", daemon=True
        )
        thread.start()
        try:
            self._bound = await asyncio.wrap_future(ready)
        except BaseException:
            await asyncio.to_thread(thread.join)
            raise
        self._thread = thread

    async def stop(self) -> None:
        """Stop answering and release the sockets; a no-op when not started."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None or loop is None or stopping is None:
            return
        loop.call_soon_threadsafe(stopping.set)
        await asyncio.to_thread(thread.join)
        self._thread = None

    def _run(self, ready: concurrent.futures.Future[str]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(ready))
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    async def _serve(self, ready: concurrent.futures.Future[str]) -> None:
        self._stopping = asyncio.Event()
        if self._unix_path is not None:
            await self._serve_unix_socket(self._unix_path, ready)
            return
        try:
            udp, tcp, address = await self._bind()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(address)
        try:
            await self._stopping.wait()
        finally:
            self._close_udp(udp)
            if tcp is not None:
                tcp.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if tcp is not None:
                await tcp.wait_closed()

    async def _serve_unix_socket(self, path: str, ready: concurrent.futures.Future[str]) -> None:
        """Answer on a unix stream socket (`unix:///path`), e.g. in a volume Caddy shares.

        Go's DNS client sees the connection Caddy dials there as a packet conn (a
        `*net.UnixConn` has ReadFrom/WriteTo), so it writes each query as one raw message
        and reads one raw answer, as over UDP: no length prefix, and answers fit Go's
        1232-byte buffer as over UDP. The point of the socket: when labelsync is gone
        (restarting, recreated, upgraded), a connect is refused at once, where a UDP
        address across a Docker network goes silent and each lookup waits out Go's 5 s.
        """
        assert self._stopping is not None
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a previous labelsync's; connecting to it is refused
            server = await asyncio.start_unix_server(self._serve_unix, path=path)
            os.chmod(path, 0o666)  # Caddy may run as another user: the directory guards it
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(f"{UNIX_PREFIX}{path}")
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _answer_message(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The packed answer to one message read from a stream (TCP, or the unix socket,
        which carries raw messages sized as over UDP); None for garbage."""
        served = self._served
        packed = self._answer_packed(data, served, tcp=tcp)
        if packed is not None:
            return packed
        request = self._parse(data)
        if request is None:
            return None
        limit = None if tcp else self._udp_limit(request)
        reply = self._reply(request, served)
        if reply is None:  # a host-name target: not the same for every asker
            return self._pack(request, await self._reply_by_lookup(request), limit)
        return self._pack_and_keep(data, request, reply, limit, served)

    async def _serve_unix(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_SECONDS):
                    data = await reader.read(TCP_MESSAGE_LIMIT)
                if not data:
                    break
                packed = await self._answer_message(data, tcp=False)
                if packed is None:
                    break
                writer.write(packed)
                await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    def _close_udp(self, udp: asyncio.DatagramTransport) -> None:
        """Close without losing a query: each one gets an answer or a refusal.

        Datagrams still queued in the socket when it closes are dropped without a word,
        and a client whose query was among them waits out its timeout (Go: 5 s, holding
        Caddy's SRV lock meanwhile). So the socket is first connected to a port that
        never sends (from then on the kernel refuses other senders with ICMP port
        unreachable, which Go reports at once), then the queue is read out and answered.
        """
        sock = udp.get_extra_info("socket")
        try:
            family = sock.family
            twin = socket.socket(family, socket.SOCK_DGRAM, fileno=os.dup(sock.fileno()))
        except OSError:
            udp.close()
            return
        with twin:
            try:
                twin.connect(("::1" if family == socket.AF_INET6 else "127.0.0.1", 9))
                twin.setblocking(False)
                for _ in range(10_000):
                    data, addr = twin.recvfrom(TCP_MESSAGE_LIMIT)
                    request = self._parse(data)
                    reply = None if request is None else self._reply(request, self._served)
                    if request is not None and reply is not None:
                        twin.sendto(self._pack(request, reply, self._udp_limit(request)), addr)
            except OSError:  # BlockingIOError: the queue is empty
                pass
        udp.close()

    async def _bind(
        self,
    ) -> tuple[asyncio.DatagramTransport, asyncio.Server | None, str]:
        host, port = self._listen
        loop = asyncio.get_running_loop()
        # With port 0 the kernel picks a UDP port that may be taken for TCP: try again.
        for attempt in range(5):
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            bound_host, bound_port = udp.get_extra_info("sockname")[:2]
            try:
                tcp = await asyncio.start_server(self._serve_tcp, bound_host, bound_port)
            except OSError as exc:
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 4:
                    udp.close()
                    continue
                logger.warning(
                    f"resolver: TCP {_format_address(bound_host, bound_port)} unavailable "
                    f"({exc}); answering over UDP only"
                )
                tcp = None
            self.tcp_enabled = tcp is not None
            return udp, tcp, _format_address(bound_host, bound_port)
        raise OSError("resolver: no port free for both UDP and TCP")  # pragma: no cover

    # -- transports --------------------------------------------------------------------------

    def _on_datagram(
        self, data: bytes, addr: tuple[str, int], udp: asyncio.DatagramTransport
    ) -> None:
        served = self._served
        fast = self._answer_packed(data, served, tcp=False)
        if fast is not None:
            udp.sendto(fast, addr)
            return
        request = self._parse(data)
        if request is None:
            return
        reply = self._reply(request, served)
        if reply is not None:
            limit = self._udp_limit(request)
            udp.sendto(self._pack_and_keep(data, request, reply, limit, served), addr)
            return
        task = asyncio.get_running_loop().create_task(self._answer_later(request, addr, udp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_later(
        self, request: DNSRecord, addr: tuple[str, int], udp: asyncio.DatagramTransport
    ) -> None:
        reply = await self._reply_by_lookup(request)
        if not udp.is_closing():
            udp.sendto(self._pack(request, reply, self._udp_limit(request)), addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE_SECONDS):
                    length = await reader.readexactly(2)
                async with asyncio.timeout(TCP_IDLE_SECONDS):
                    data = await reader.readexactly(int.from_bytes(length, "big"))
                packed = await self._answer_message(data, tcp=True)
                if packed is None:
                    break  # a stream that sent garbage is not worth reading further
                writer.write(len(packed).to_bytes(2, "big") + packed)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    # -- answering ---------------------------------------------------------------------------

    def _answer_packed(self, data: bytes, served: _Served, *, tcp: bool) -> bytes | None:
        """The answer to `data` from the packed answers of this snapshot, or None.

        The hot path: Caddy holds its lock over every SRV pool while it waits for this.
        The answer is the packed one with the asker's ID and question bytes (the case
        it asked in) copied in; everything else is the same for the same key.
        """
        name_end = _question_end(data)
        if not name_end:
            return None
        entry = served.packed.get(_packed_key(data, name_end, tcp=tcp))
        if entry is None:
            return None
        self.queries += 1
        if entry.pool:
            self.pool_queries += 1
        wire = entry.wire
        return data[:2] + wire[2:12] + data[12:name_end] + wire[name_end:]

    def _pack_and_keep(
        self,
        data: bytes,
        request: DNSRecord,
        reply: DNSRecord,
        limit: int | None,
        served: _Served,
    ) -> bytes:
        """`_pack`, remembering the answer for `_answer_packed` when it is the same for
        every asker of the same question (not a window of a truncated answer).

        `served` is the snapshot `reply` was made from: an answer is only ever kept in
        its own snapshot, so an `update` in between cannot leave a stale one behind.
        """
        packed = self._pack(request, reply, limit)
        name_end = _question_end(data)
        cacheable = (
            name_end
            and not reply.header.tc
            and len(served.packed) < PACKED_CACHE_LIMIT
            and len(request.questions) == 1
            # The answer echoes the question: same layout as the request up to its end.
            and packed[12:name_end].lower() == data[12:name_end].lower()
        )
        if cacheable:
            name = _normal(str(request.q.qname))
            key = _packed_key(data, name_end, tcp=limit is None)
            served.packed[key] = _Packed(wire=packed, name=name, pool=name in served.pools)
        return packed

    def _parse(self, data: bytes) -> DNSRecord | None:
        self.queries += 1
        try:
            request = DNSRecord.parse(data)
        except Exception:  # dnslib raises several types on garbage; all mean "drop it"
            self.malformed += 1
            return None
        if request.header.qr:  # a response: never answer one (no loops)
            self.malformed += 1
            return None
        return request

    def _new_reply(self, request: DNSRecord, rcode: int = RCODE.NOERROR) -> DNSRecord:
        header = DNSHeader(
            id=request.header.id, qr=1, aa=1, ra=0, rd=request.header.rd, rcode=rcode
        )
        reply = DNSRecord(header, q=request.q if request.questions else None)
        if any(rr.rtype == QTYPE.OPT for rr in request.ar):
            reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
        return reply

    def _reply(self, request: DNSRecord, served: _Served) -> DNSRecord | None:
        """The reply from `served`, or None when it needs a system lookup
        (`_reply_by_lookup`)."""
        header = request.header
        if header.opcode != 0:
            return self._new_reply(request, RCODE.NOTIMP)
        if len(request.questions) != 1:
            return self._new_reply(request, RCODE.FORMERR)
        question = request.q
        name, qtype = _normal(str(question.qname)), question.qtype
        if question.qclass not in (_IN, _ANY_CLASS):
            return self._refused(request)
        reply = self._new_reply(request)
        records = served.pools.get(name)
        if records is not None and self._refusing_pools:
            return self._refused(request)
        if records is not None:
            self.pool_queries += 1
            if qtype in (QTYPE.SRV, QTYPE.ANY):
                for record in records:
                    rdata = _CompressedSRV(
                        record.priority, record.weight, record.port, record.target
                    )
                    reply.add_answer(RR(question.qname, QTYPE.SRV, ttl=TTL, rdata=rdata))
            return reply
        ip = target_ip(name)
        if ip is not None:
            if isinstance(ip, ipaddress.IPv4Address) and qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(question.qname, QTYPE.A, ttl=TTL, rdata=A(str(ip))))
            elif isinstance(ip, ipaddress.IPv6Address) and qtype in (QTYPE.AAAA, QTYPE.ANY):
                reply.add_answer(RR(question.qname, QTYPE.AAAA, ttl=TTL, rdata=AAAA(str(ip))))
            return reply
        if in_zone(name):
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if name in served.hostnames:
            return None if qtype in (QTYPE.A, QTYPE.AAAA) else reply
        return self._refused(request)

    def _refused(self, request: DNSRecord) -> DNSRecord:
        reply = self._new_reply(request, RCODE.REFUSED)
        reply.header.aa = 0
        return reply

    async def _reply_by_lookup(self, request: DNSRecord) -> DNSRecord:
        """A / AAAA for a host-name target, from the system resolver."""
        question = request.q
        name = _normal(str(question.qname))
        v6 = question.qtype == QTYPE.AAAA
        loop = asyncio.get_running_loop()
        reply = self._new_reply(request)
        try:
            async with asyncio.timeout(self._lookup_timeout):
                infos = await loop.getaddrinfo(
                    name,
                    None,
                    family=socket.AF_INET6 if v6 else socket.AF_INET,
                    type=socket.SOCK_STREAM,
                )
        except socket.gaierror as exc:
            if exc.errno in _EMPTY_RESULT_ERRNOS:
                return reply  # the name serves a pool: say "no address of this type"
            self.lookup_failures += 1
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        except (TimeoutError, OSError):
            self.lookup_failures += 1
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        addresses = sorted({str(info[4][0]) for info in infos})
        for address in addresses:
            rdata = AAAA(address) if v6 else A(address)
            reply.add_answer(RR(question.qname, question.qtype, ttl=TTL, rdata=rdata))
        return reply

    # -- size --------------------------------------------------------------------------------

    @staticmethod
    def _udp_limit(request: DNSRecord) -> int:
        for rr in request.ar:
            if rr.rtype == QTYPE.OPT:
                return max(CLASSIC_UDP_SIZE, min(int(rr.rclass), EDNS_UDP_SIZE))
        return CLASSIC_UDP_SIZE

    def _pack(self, request: DNSRecord, reply: DNSRecord, limit: int | None) -> bytes:
        packed: bytes = reply.pack()
        if len(packed) <= (limit or TCP_MESSAGE_LIMIT):
            return packed
        if limit is None:
            raise ValueError("answer larger than a DNS message")  # 65535 bytes: not reachable
        return self._fit(request, reply, limit)

    def _fit(self, request: DNSRecord, reply: DNSRecord, limit: int) -> bytes:
        """The most records that fit `limit`, with TC set.

        Go's resolver, on TC, asks again "over TCP", but Caddy's dialer sends that query
        over UDP too and Go then takes the truncated answer as it is (measured). So a
        pool whose answer does not fit gets a window of its records: for records of one
        priority the window starts at a random record, so that every member is seen
        over successive refreshes (and repeated weights keep their shares on average);
        for prioritised records (`first`) the window is the head of the list.
        """
        records = list(reply.rr)
        name = _normal(str(request.q.qname))
        start = 0
        if records and len({rr.rdata.priority for rr in records if rr.rtype == QTYPE.SRV}) == 1:
            start = random.randrange(len(records))
        rotated = records[start:] + records[:start]

        def packed_with(count: int) -> bytes:
            reply.rr = rotated[:count]
            reply.header.tc = 1
            data: bytes = reply.pack()
            return data

        low, high = 0, len(rotated)  # largest count whose packing fits
        while low < high:
            middle = (low + high + 1) // 2
            if len(packed_with(middle)) <= limit:
                low = middle
            else:
                high = middle - 1
        self.truncated += 1
        if name not in self._warned_truncation:
            self._warned_truncation.add(name)
            logger.warning(
                f"resolver: the answer for {name} has {len(records)} records; {low} fit "
                f"one UDP message, so each lookup gets a window of them (TC set)"
            )
        return packed_with(low)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._transport is None:
            return
        try:
            self._resolver._on_datagram(data, addr, self._transport)
        except Exception:  # one bad query must never take the server down
            self._resolver.malformed += 1
            logger.opt(exception=True).debug("resolver: query dropped")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for answers to clients that went away: nothing to do.
        pass
