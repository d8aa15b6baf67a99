"""The resolver's answers: DNS replies made from a snapshot of pool membership, no sockets.

What is answered (`Responder.reply`):

- SRV for every pool name given to `update` (TTL 0: Caddy's own refresh is the cache);
- A / AAAA for member target names (`10-0-0-5.3f2a9b1c0d4e.ip4.labelsync.internal.`),
  read from the name itself, so a member is dialable the moment it is answered, and still while a
  request that picked it just before it left is in flight;
- A / AAAA for host-name targets that some pool answers (members given by host name):
  the resolver looks them up in the system resolver (`address_reply` makes the reply);
  never for any other name (no open resolver);
- NXDOMAIN for other names in `labelsync.internal`, REFUSED outside it.

Each answer is packed once per snapshot and replayed: a repeated question (Caddy asks the
same names every `refresh`) costs a dictionary look-up and a copy with the asker's ID and
question bytes patched in (`answer_packed`); an `update` keeps the packed answers of the
pools it does not change. UDP answers fit the client's buffer (1232 bytes for Go): a
longer answer becomes a window of its records with TC set (see `Responder._fit`).

A `Responder` is read by the resolver's thread while `update` runs on another: `update`
swaps an immutable snapshot (`Snapshot`), and each message is answered from the snapshot
it started with.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SRV, A, DNSHeader, DNSRecord
from loguru import logger

from labelsync.core.names import in_zone, target_ip
from labelsync.membership.srv_records import SrvAnswer

TTL = 0
# The EDNS buffer size we announce and the most we send over UDP to anyone: Go asks
# with 1232 (the DNS-flag-day size), and loopback needs no more.
EDNS_UDP_SIZE = 1232
CLASSIC_UDP_SIZE = 512
TCP_MESSAGE_LIMIT = 65535
# Answers packed once and replayed; bounded, because names outside every pool (REFUSED,
# NXDOMAIN) are cached too and anyone who reaches the port picks those names.
PACKED_CACHE_LIMIT = 65536

_IN = 1
_ANY_CLASS = 255


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


@dataclass(frozen=True)
class Packed:
    """One answer as sent: its bytes with the asker's ID and question to patch in."""

    wire: bytes
    name: str  # the question's name, normalised: what `update` invalidates by
    pool: bool  # a served pool's name (counted in `pool_queries`)


@dataclass(frozen=True)
class Snapshot:
    """What the resolver answers, replaced whole by `update`.

    `packed` holds the answers already sent for this snapshot, keyed by the request
    without its ID and with its question name lower-cased (`_packed_key`): a repeated
    question (Caddy asks the same few every `refresh`) is answered by copying bytes.
    """

    pools: Mapping[str, tuple[SrvAnswer, ...]] = field(default_factory=dict)
    hostnames: frozenset[str] = frozenset()
    packed: dict[bytes, Packed] = field(default_factory=dict)


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


def normal_name(name: str) -> str:
    """A DNS name as the snapshot keys it: lower case, no trailing dot."""
    return name.rstrip(".").lower()


def udp_limit(request: DNSRecord) -> int:
    """The most bytes a UDP answer to `request` may take: its EDNS buffer size, within
    512 (no EDNS) and `EDNS_UDP_SIZE`."""
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return max(CLASSIC_UDP_SIZE, min(int(rr.rclass), EDNS_UDP_SIZE))
    return CLASSIC_UDP_SIZE


class Responder:
    """DNS replies from the snapshot given to `update`, and the counters of answering.

    The resolver (`resolver.py`) reads messages off its sockets and hands them here:
    `answer_packed` for the replay of an answer packed before, else `parse`, `reply`
    (None: a host name for the system resolver, then `address_reply`) and `pack` or
    `pack_and_keep`.
    """

    def __init__(self) -> None:
        self.served = Snapshot()
        self.refusing_pools = False
        self._warned_truncation: set[str] = set()
        self.queries = 0
        self.pool_queries = 0
        self.malformed = 0
        self.truncated = 0
        self.lookup_failures = 0

    # -- the snapshot ------------------------------------------------------------------------

    def update(
        self, pools: Mapping[str, Sequence[SrvAnswer]], *, changed: Iterable[str] | None = None
    ) -> None:
        """Serve exactly these pools from now on (`Resolver.update`)."""
        previous = self.served
        old = previous.pools
        served: dict[str, tuple[SrvAnswer, ...]]
        if changed is not None:
            served = dict(old)
            touched: set[str] = set()
            for name in changed:
                normal = normal_name(name)
                given = pools.get(name)
                if given is None:
                    served.pop(normal, None)
                else:
                    served[normal] = tuple(given)
                if old.get(normal) != served.get(normal):
                    touched.add(normal)
        else:
            served = {normal_name(name): tuple(records) for name, records in pools.items()}
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
                normal_name(record.target)
                for records in served.values()
                for record in records
                if target_ip(record.target) is None
            )
        packed: dict[bytes, Packed] = {}
        if hostnames == previous.hostnames:
            # A copy of the dict, taken while the resolver thread may add to it: a key
            # added meanwhile is either copied or asked again, never wrong.
            for key, entry in list(previous.packed.items()):
                if entry.name not in touched:
                    packed[key] = entry
        self.served = Snapshot(pools=served, hostnames=hostnames, packed=packed)

    def refuse_pools(self) -> None:
        """Answer pool (SRV) names REFUSED from now on (`Resolver.refuse_pools`)."""
        self.refusing_pools = True
        # A fresh snapshot: the packed answers kept so far include pool answers.
        served = self.served
        self.served = Snapshot(pools=served.pools, hostnames=served.hostnames)

    # -- packed answers ----------------------------------------------------------------------

    def answer_packed(self, data: bytes, served: Snapshot, *, tcp: bool) -> bytes | None:
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

    def pack_and_keep(
        self,
        data: bytes,
        request: DNSRecord,
        reply: DNSRecord,
        limit: int | None,
        served: Snapshot,
    ) -> bytes:
        """`pack`, remembering the answer for `answer_packed` when it is the same for
        every asker of the same question (not a window of a truncated answer).

        `served` is the snapshot `reply` was made from: an answer is only ever kept in
        its own snapshot, so an `update` in between cannot leave a stale one behind.
        """
        packed = self.pack(request, reply, limit)
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
            name = normal_name(str(request.q.qname))
            key = _packed_key(data, name_end, tcp=limit is None)
            served.packed[key] = Packed(wire=packed, name=name, pool=name in served.pools)
        return packed

    # -- replies -----------------------------------------------------------------------------

    def parse(self, data: bytes) -> DNSRecord | None:
        """The request in `data`, counted; None (counted as malformed) for garbage or a
        response."""
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

    def reply(self, request: DNSRecord, served: Snapshot) -> DNSRecord | None:
        """The reply from `served`, or None when it needs a system lookup
        (then `address_reply`)."""
        header = request.header
        if header.opcode != 0:
            return _new_reply(request, RCODE.NOTIMP)
        if len(request.questions) != 1:
            return _new_reply(request, RCODE.FORMERR)
        question = request.q
        name, qtype = normal_name(str(question.qname)), question.qtype
        if question.qclass not in (_IN, _ANY_CLASS):
            return _refused(request)
        reply = _new_reply(request)
        records = served.pools.get(name)
        if records is not None and self.refusing_pools:
            return _refused(request)
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
        return _refused(request)

    def address_reply(self, request: DNSRecord, addresses: Iterable[str] | None) -> DNSRecord:
        """A / AAAA for a host-name target (a question `reply` left to the system
        resolver): `addresses` as looked up, empty for "no address of this type", None
        when the lookup failed (SERVFAIL, counted in `lookup_failures`)."""
        question = request.q
        v6 = question.qtype == QTYPE.AAAA
        reply = _new_reply(request)
        if addresses is None:
            self.lookup_failures += 1
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for address in addresses:
            rdata = AAAA(address) if v6 else A(address)
            reply.add_answer(RR(question.qname, question.qtype, ttl=TTL, rdata=rdata))
        return reply

    # -- size --------------------------------------------------------------------------------

    def pack(self, request: DNSRecord, reply: DNSRecord, limit: int | None) -> bytes:
        """`reply` as sent: within `limit` bytes (UDP: `udp_limit`), or None for TCP."""
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
        name = normal_name(str(request.q.qname))
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


def _new_reply(request: DNSRecord, rcode: int = RCODE.NOERROR) -> DNSRecord:
    header = DNSHeader(id=request.header.id, qr=1, aa=1, ra=0, rd=request.header.rd, rcode=rcode)
    reply = DNSRecord(header, q=request.q if request.questions else None)
    if any(rr.rtype == QTYPE.OPT for rr in request.ar):
        reply.add_ar(EDNS0(udp_len=EDNS_UDP_SIZE))
    return reply


def _refused(request: DNSRecord) -> DNSRecord:
    reply = _new_reply(request, RCODE.REFUSED)
    reply.header.aa = 0
    return reply
