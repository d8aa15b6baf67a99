"""labelsync's built-in DNS resolver: pool membership, served live to Caddy.

Caddy's `dynamic_upstreams` (source `srv`) asks for a pool's SRV name every `refresh`
and dials each target through the transport resolver, both pointed here. What it answers,
and how answers are packed, replayed and cut to fit, is `answers.py`; this module serves
them over UDP, TCP and a unix socket.

It must always answer, and fast: Caddy holds one lock over all SRV upstreams while a
lookup runs, so a query left unanswered stalls every dynamic pool for Go's resolver
timeout (10 s measured). So the server runs on its own thread and event loop, where a
busy main loop cannot delay it; `update` swaps an immutable snapshot. A repeated
question is answered from the packed answers of the snapshot (~33 µs round trip on
loopback, `python -m bench --only resolver`, against ~134 µs through the DNS library).
Malformed packets are counted and dropped. TCP is served on the same port for clients
configured with `tcp/` addresses, and for `dig +tcp`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import functools
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from dnslib import QTYPE, DNSRecord
from loguru import logger

from labelsync.core import defaults, endpoints
from labelsync.core.endpoints import has_relative_path, join_host_port, unix_endpoint
from labelsync.core.names import parse_listen
from labelsync.membership.answers import TCP_MESSAGE_LIMIT, Responder, normal_name, udp_limit
from labelsync.membership.srv_records import SrvAnswer

TCP_IDLE_SECONDS = 10.0

_EMPTY_RESULT_ERRNOS = {
    socket.EAI_NONAME,
    getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
    getattr(socket, "EAI_ADDRFAMILY", socket.EAI_NONAME),
}


def _bind_address(listen: str) -> tuple[str, int]:
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise ValueError(f"resolver listen address: {exc}") from exc
    return host or "0.0.0.0", port  # ":8053": every (IPv4) interface


def unix_socket_path(address: str) -> str | None:
    """The socket path of a `unix:///path` resolver address; None for host:port.

    ValueError for a relative path."""
    if has_relative_path(address):
        raise ValueError(f"resolver unix socket needs an absolute path: {address!r}")
    return endpoints.unix_socket_path(address)


@dataclass(frozen=True)
class _Framing:
    """How a stream socket carries DNS messages (`Resolver._serve_stream`)."""

    read: Callable[[asyncio.StreamReader], Awaitable[bytes | None]]
    """The next message; None when the client closed the stream."""
    frame: Callable[[bytes], bytes]
    """An answer as written to the stream."""
    tcp: bool
    """Answers sized as over TCP (else as over UDP: `udp_limit`)."""


async def _read_length_prefixed(reader: asyncio.StreamReader) -> bytes | None:
    # IncompleteReadError when the client closes the stream (RFC 1035 4.2.2 framing).
    async with asyncio.timeout(TCP_IDLE_SECONDS):
        length = await reader.readexactly(2)
    async with asyncio.timeout(TCP_IDLE_SECONDS):
        return await reader.readexactly(int.from_bytes(length, "big"))


async def _read_raw(reader: asyncio.StreamReader) -> bytes | None:
    async with asyncio.timeout(TCP_IDLE_SECONDS):
        data = await reader.read(TCP_MESSAGE_LIMIT)
    return data or None


def _with_length(packed: bytes) -> bytes:
    return len(packed).to_bytes(2, "big") + packed


def _as_is(packed: bytes) -> bytes:
    return packed


# TCP: each message behind its two-byte length; answers whole.
_TCP = _Framing(read=_read_length_prefixed, frame=_with_length, tcp=True)
# The unix socket: raw messages, answers sized as over UDP (`_serve_unix_socket`).
_UNIX = _Framing(read=_read_raw, frame=_as_is, tcp=False)


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

    def __init__(
        self, listen: str = defaults.RESOLVER_LISTEN, *, lookup_timeout: float = 2.0
    ) -> None:
        self._unix_path = unix_socket_path(listen)
        self._listen = ("", 0) if self._unix_path else _bind_address(listen)
        self._lookup_timeout = lookup_timeout
        self._responder = Responder()
        self._bound: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.tcp_enabled = False

    @property
    def bound_address(self) -> str:
        """`host:port` the resolver answers on (the real port when asked for port 0)."""
        if self._bound is None:
            raise RuntimeError("resolver not started")
        return self._bound

    @property
    def queries(self) -> int:
        return self._responder.queries

    @property
    def pool_queries(self) -> int:
        return self._responder.pool_queries

    @property
    def malformed(self) -> int:
        return self._responder.malformed

    @property
    def truncated(self) -> int:
        return self._responder.truncated

    @property
    def lookup_failures(self) -> int:
        return self._responder.lookup_failures

    def answers(self) -> Mapping[str, tuple[SrvAnswer, ...]]:
        """The records served now, by pool DNS name (lower case, no trailing dot)."""
        return self._responder.served.pools

    def update(
        self, pools: Mapping[str, Sequence[SrvAnswer]], *, changed: Iterable[str] | None = None
    ) -> None:
        """Serve exactly these pools from now on, keyed by DNS name; thread-safe.

        Packed answers of names whose answer did not change are kept, so an update
        that touches one pool costs the other pools nothing on their next question.
        `changed`: the names whose answers may differ from the last update (added,
        changed, or gone from `pools`); every other name is taken as it was, unread.
        """
        self._responder.update(pools, changed=changed)

    def refuse_pools(self) -> None:
        """From now on answer pool (SRV) names REFUSED, member names as before; thread-safe.

        For the way out: Caddy's lookups then fail at once and it dials each route's
        fallback members by IP, while the member names in the SRV answers it cached (for
        up to its `refresh`) still resolve. Stopping at once instead leaves those names
        unresolvable: the requests that picked one fail, or wait out a timeout.
        """
        self._responder.refuse_pools()

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
            await self._cancel_tasks()
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
            server = await asyncio.start_unix_server(
                functools.partial(self._serve_stream, framing=_UNIX), path=path
            )
            os.chmod(path, 0o666)  # Caddy may run as another user: the directory guards it
        except BaseException as exc:
            ready.set_exception(exc)
            return
        ready.set_result(unix_endpoint(path))
        try:
            await self._stopping.wait()
        finally:
            server.close()
            await self._cancel_tasks()
            await server.wait_closed()
            with contextlib.suppress(OSError):
                os.unlink(path)

    async def _cancel_tasks(self) -> None:
        """End the connections and the lookups still running."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close_udp(self, udp: asyncio.DatagramTransport) -> None:
        """Close without losing a query: each one gets an answer or a refusal.

        Datagrams still queued in the socket when it closes are dropped without a word,
        and a client whose query was among them waits out its timeout (Go: 5 s, holding
        Caddy's SRV lock meanwhile). So the socket is first connected to a port that
        never sends (from then on the kernel refuses other senders with ICMP port
        unreachable, which Go reports at once), then the queue is read out and answered.
        """
        responder = self._responder
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
                    request = responder.parse(data)
                    reply = None if request is None else responder.reply(request, responder.served)
                    if request is not None and reply is not None:
                        twin.sendto(responder.pack(request, reply, udp_limit(request)), addr)
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
                tcp = await asyncio.start_server(
                    functools.partial(self._serve_stream, framing=_TCP), bound_host, bound_port
                )
            except OSError as exc:
                if port == 0 and exc.errno == errno.EADDRINUSE and attempt < 4:
                    udp.close()
                    continue
                logger.warning(
                    f"resolver: TCP {join_host_port(bound_host, bound_port)} unavailable "
                    f"({exc}); answering over UDP only"
                )
                tcp = None
            self.tcp_enabled = tcp is not None
            return udp, tcp, join_host_port(bound_host, bound_port)
        raise OSError("resolver: no port free for both UDP and TCP")  # pragma: no cover

    # -- transports --------------------------------------------------------------------------

    def _on_datagram(
        self, data: bytes, addr: tuple[str, int], udp: asyncio.DatagramTransport
    ) -> None:
        responder = self._responder
        served = responder.served
        fast = responder.answer_packed(data, served, tcp=False)
        if fast is not None:
            udp.sendto(fast, addr)
            return
        request = responder.parse(data)
        if request is None:
            return
        reply = responder.reply(request, served)
        if reply is not None:
            limit = udp_limit(request)
            udp.sendto(responder.pack_and_keep(data, request, reply, limit, served), addr)
            return
        task = asyncio.get_running_loop().create_task(self._answer_later(request, addr, udp))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_later(
        self, request: DNSRecord, addr: tuple[str, int], udp: asyncio.DatagramTransport
    ) -> None:
        reply = await self._reply_by_lookup(request)
        if not udp.is_closing():
            udp.sendto(self._responder.pack(request, reply, udp_limit(request)), addr)

    async def _serve_stream(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, framing: _Framing
    ) -> None:
        """Answer the messages of one stream connection (TCP or the unix socket) until
        the client closes it, goes idle for `TCP_IDLE_SECONDS`, or sends garbage."""
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                data = await framing.read(reader)
                if data is None:
                    break
                packed = await self._answer_message(data, tcp=framing.tcp)
                if packed is None:
                    break  # a stream that sent garbage is not worth reading further
                writer.write(framing.frame(packed))
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _answer_message(self, data: bytes, *, tcp: bool) -> bytes | None:
        """The packed answer to one message read from a stream (TCP, or the unix socket,
        which carries raw messages sized as over UDP); None for garbage."""
        responder = self._responder
        served = responder.served
        packed = responder.answer_packed(data, served, tcp=tcp)
        if packed is not None:
            return packed
        request = responder.parse(data)
        if request is None:
            return None
        limit = None if tcp else udp_limit(request)
        reply = responder.reply(request, served)
        if reply is None:  # a host-name target: not the same for every asker
            return responder.pack(request, await self._reply_by_lookup(request), limit)
        return responder.pack_and_keep(data, request, reply, limit, served)

    async def _reply_by_lookup(self, request: DNSRecord) -> DNSRecord:
        """A / AAAA for a host-name target, from the system resolver."""
        question = request.q
        name = normal_name(str(question.qname))
        v6 = question.qtype == QTYPE.AAAA
        loop = asyncio.get_running_loop()
        addresses: list[str] | None
        try:
            async with asyncio.timeout(self._lookup_timeout):
                infos = await loop.getaddrinfo(
                    name,
                    None,
                    family=socket.AF_INET6 if v6 else socket.AF_INET,
                    type=socket.SOCK_STREAM,
                )
        except socket.gaierror as exc:
            # The name serves a pool: say "no address of this type", or SERVFAIL.
            addresses = [] if exc.errno in _EMPTY_RESULT_ERRNOS else None
        except (TimeoutError, OSError):
            addresses = None
        else:
            addresses = sorted({str(info[4][0]) for info in infos})
        return self._responder.address_reply(request, addresses)


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
            self._resolver._responder.malformed += 1
            logger.opt(exception=True).debug("resolver: query dropped")

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for answers to clients that went away: nothing to do.
        pass
