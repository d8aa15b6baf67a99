"""What the built-in resolver answers for a pool: its members as SRV records, as data.

Caddy's `dynamic_upstreams` (source `srv`) turns each SRV record into one upstream
`<target>:<port>` and dials the target through the transport's resolver, which is
labelsync's resolver too. So every member gets a target name the resolver can answer
A/AAAA for without any state: the member's IP spelled inside labelsync's zone
(`10-0-0-5.3f2a9b1c0d4e.ip4.labelsync.internal.`), with the container's short id in it,
so that a container that gets a dead one's IP does not get its passive-health record in
Caddy (`member_target`). Go refuses SRV targets that look like IP
addresses (`10.0.0.5.`), so the IP cannot be the target itself. A member given by host
name (`address=backend.example.com:443`) keeps its name as the target; the resolver
looks such names up in the system resolver for Caddy.

How a pool's policy is carried by the records (see notes/dynamic-upstreams.md for the
measurements behind each rule):

- `first`: one record per member, priority = position (0, 1, 2 ...). Go sorts the
  answer by priority and Caddy's `first` takes the first available one.
- weighted pools (`weighted_round_robin`, canary splits): Caddy cannot hold weights
  for members it does not know, so the route uses `round_robin` and each member's
  record is repeated in proportion to its weight (reduced by their gcd, apportioned
  down to `MAX_WEIGHTED_RECORDS` when the sum is larger), interleaved smoothly.
- every other policy: one record per member, in member order.

Unhealthy members are withheld, and so are new members whose first check has not
passed yet (pending: `membership/health.py`). When no member is healthy, the replicas
that are draining (told to stop, still running) are answered: a roll that stops the old
replica as its successor starts keeps being served until the successor answers. When
there are none, all members are answered, so clients get the backends' own errors
instead of Caddy's "no upstreams"; the caller detects that case with
`no_healthy_member` to log it.

A pool without members is never answered empty: Go reports an empty answer as a failed
lookup, and Caddy then dials the route's fallback member list (or, with a
`grace_period`, its last answer), even after those IPs went to other containers. It
gets one record for `NO_MEMBERS_TARGET`, a name the resolver does not
resolve, so Caddy answers 502 at once and logs the name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from labelsync.core.model import Member, Pool
from labelsync.core.names import ZONE, is_weighted, member_target

# The target of the one record of a pool without members: NXDOMAIN in the resolver.
NO_MEMBERS_TARGET = f"no-members.{ZONE}."
NO_MEMBERS_PORT = 9  # "discard"; never dialled, the name does not resolve

# Upper bound on the records of a weighted pool: split is a whole percent, so 100 slots
# carry any split of one stable and one canary member exactly. Over UDP (Caddy's
# default) an answer of more than ~55 records does not fit Go's 1232-byte buffer; the
# resolver then answers a random window of the records with TC set, which keeps the
# shares right on average over refreshes. Over TCP the whole list is answered.
MAX_WEIGHTED_RECORDS = 100

FIRST_POLICY = "first"


@dataclass(frozen=True)
class SrvAnswer:
    """One SRV record: `target` is an absolute name (trailing dot)."""

    priority: int
    weight: int
    port: int
    target: str


def no_healthy_member(members: Sequence[Member], *, healthy: Callable[[Member], bool]) -> bool:
    """True when there are members and none is healthy (answered all the same)."""
    return bool(members) and not any(healthy(m) for m in members)


def serving_members(pool: Pool, *, healthy: Callable[[Member], bool]) -> tuple[Member, ...]:
    """The members a pool is answered with: those that pass their checks; when none does,
    the replicas still draining (told to stop, still serving); when there are none
    either, every member. The resolver's records and the JSON of a pool outside the
    dynamic budget both come from this."""
    live = tuple(m for m in pool.members if healthy(m))
    return live or pool.draining or pool.members


def srv_answers(
    pool: Pool,
    *,
    healthy: Callable[[Member], bool],
    max_records: int = MAX_WEIGHTED_RECORDS,
) -> list[SrvAnswer]:
    """The SRV records of a pool's `serving_members`, in the order Caddy should see
    them; never empty."""
    live = serving_members(pool, healthy=healthy)
    if not live:
        return [SrvAnswer(priority=0, weight=0, port=NO_MEMBERS_PORT, target=NO_MEMBERS_TARGET)]
    policy = pool.shape.settings.lb_policy
    if policy == FIRST_POLICY and not is_weighted(pool.shape.settings):
        return [_record(member, priority=index) for index, member in enumerate(live)]
    if is_weighted(pool.shape.settings):
        counts = apportion([m.weight for m in live], max_records)
        return [_record(live[index]) for index in interleave(counts)]
    return [_record(member) for member in live]


def _record(member: Member, *, priority: int = 0) -> SrvAnswer:
    target, port = member_target(member.address, member.container_id)
    # Weight 0 everywhere: Go shuffles records of equal priority by SRV weight, and
    # only all-zero weights keep the order labelsync chose.
    return SrvAnswer(priority=min(priority, 65535), weight=0, port=port, target=target)


def apportion(weights: Sequence[int], total_bound: int) -> list[int]:
    """How many records each weight gets: the weights reduced by their gcd, or
    apportioned to `total_bound` records (largest remainders) when they sum to more.

    A weight of 0 gets no record unless every weight is 0 (then all count the same).
    Every positive weight keeps at least one record, so with more positive weights than
    `total_bound` the result sums to more than the bound. When every exact share is at
    least one record, each count is within one record of its share.
    """
    positive = [w if w > 0 else 0 for w in weights]
    if not any(positive):
        return [1] * len(weights)
    divisor = math.gcd(*(w for w in positive if w))
    reduced = [w // divisor for w in positive]
    total = sum(reduced)
    if total <= total_bound:
        return reduced
    quotas = [w * total_bound / total for w in reduced]
    counts = [max(1, math.floor(q)) if w else 0 for w, q in zip(reduced, quotas, strict=True)]
    # The minimum of one may overshoot: take back from the most over-served first.
    while sum(counts) > total_bound:
        over = [i for i, count in enumerate(counts) if count > 1]
        if not over:
            break
        counts[max(over, key=lambda i: (counts[i] - quotas[i], -i))] -= 1
    positive = [i for i, w in enumerate(reduced) if w]
    while sum(counts) < total_bound:
        counts[max(positive, key=lambda i: (quotas[i] - counts[i], -i))] += 1
    return counts


def interleave(counts: Sequence[int]) -> list[int]:
    """Indexes repeated `counts[i]` times, spread evenly (smooth weighted round robin):
    [3, 1] gives [0, 0, 1, 0] rather than [0, 0, 0, 1]."""
    total = sum(counts)
    current = [0] * len(counts)
    order: list[int] = []
    for _ in range(total):
        for index, count in enumerate(counts):
            current[index] += count
        chosen = max(range(len(counts)), key=lambda i: (current[i], -i))
        current[chosen] -= total
        order.append(chosen)
    return order
