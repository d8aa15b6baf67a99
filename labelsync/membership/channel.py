"""Dynamic membership: the resolver answers each pool's SRV name from live state.

Caddy's JSON holds only the pool's shape and the pool's SRV name; which replicas
serve, in which order and with which weight is published here, together with
labelsync's own active health checks, so that scaling, crashes, rolling updates and
health flips never write Caddy's config (each write reloads Caddy and drops some
connections).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import replace
from typing import NamedTuple

from loguru import logger

from labelsync.core.durations import parse_duration
from labelsync.core.endpoints import is_unix
from labelsync.core.model import DesiredState, HealthStatus, Member, MemberHealth, Pool
from labelsync.core.names import pool_dns_name
from labelsync.errors import ConfigError
from labelsync.membership.budget import Budget
from labelsync.membership.health import ActiveChecker
from labelsync.membership.resolver import Resolver
from labelsync.membership.srv_records import (
    SrvAnswer,
    no_healthy_member,
    serving_members,
    srv_answers,
)
from labelsync.settings import Settings

# The drain on the way out lasts Caddy's refresh plus this margin, and at most DRAIN_MAX.
DRAIN_MARGIN = 0.25
DRAIN_MAX = 5.0


async def _drain(resolver: Resolver, settings: Settings) -> None:
    """Refuse pool lookups, keep answering member names for one `refresh`, then go.

    Caddy keeps an SRV answer for `refresh` and resolves its member names when it dials;
    after this no cached answer is fresh, and every lookup falls back to the route's
    member IPs (written as the fallback just before). SIGTERM thus fails no request.
    """
    seconds = min(parse_duration(settings.resolver_refresh) + DRAIN_MARGIN, DRAIN_MAX)
    resolver.refuse_pools()
    logger.info(f"resolver: refusing pool lookups for {seconds:.2f}s before stopping")
    await asyncio.sleep(seconds)


class _PoolAnswer(NamedTuple):
    """What one pool was last published as: `republish` computes records again only for
    pools that changed or whose members' health did."""

    pool: Pool
    verdicts: tuple[bool, ...]  # its members' health, in member order (with checks)
    records: tuple[SrvAnswer, ...]
    dns_name: str


class _LiveView(NamedTuple):
    """A pool outside the dynamic budget and the view of it Caddy's JSON carries."""

    pool: Pool
    view: Pool  # `pool` with the members the resolver would answer (`_live_view`)


class DynamicMembership:
    """Publishes membership to the resolver; re-publishes when a health check flips."""

    def __init__(
        self, resolver: Resolver, checker: ActiveChecker, budget: Budget | None = None
    ) -> None:
        self.resolver = resolver
        self.checker = checker
        self.budget = budget or Budget()
        self._changed: set[str] = set()  # pools whose answer changed since `channels`
        self._json_views: dict[str, _LiveView] = {}  # pool id -> its pool and live view
        self._desired: DesiredState | None = None
        self._all_down: set[str] = set()
        self._answers: dict[str, _PoolAnswer] = {}  # pool id -> as last published
        self._served: dict[str, tuple[SrvAnswer, ...]] = {}  # DNS name -> records, as given
        self._republished: tuple[Pool, ...] | None = None  # the pools of the last republish
        self._checked: dict[str, Pool] = {}  # the pools with active checks, as last given
        # Called after each health flip, once the new membership is published.
        self.on_health_change: list[Callable[[str, str, bool, str], None]] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls, settings: Settings) -> AsyncIterator[DynamicMembership]:
        resolver = Resolver(settings.resolver_listen)
        try:
            await resolver.start()
        except OSError as exc:
            raise ConfigError(
                f"the resolver cannot listen on {settings.resolver_listen}: {exc.strerror}; "
                "set LABELSYNC_RESOLVER_LISTEN to a free address"
            ) from exc
        membership: DynamicMembership | None = None

        def on_change(pool_id: str, address: str, healthy: bool, reason: str) -> None:
            state = HealthStatus.HEALTHY if healthy else f"{HealthStatus.UNHEALTHY} ({reason})"
            who = membership.describe(pool_id, address) if membership is not None else address
            logger.bind(pool=pool_id, member=address).info(f"member {who} is {state}")
            if membership is not None:
                membership.republish()
                for listener in membership.on_health_change:
                    listener(pool_id, address, healthy, reason)

        checker = ActiveChecker(on_change=on_change)
        membership = cls(resolver, checker, Budget(size=settings.dynamic_budget))
        how = "" if is_unix(resolver.bound_address) else " (udp)"
        logger.info(f"resolver answering on {resolver.bound_address}{how}")
        try:
            yield membership
        finally:
            try:
                await checker.aclose()
                await _drain(resolver, settings)
            finally:
                await resolver.stop()

    def describe(self, pool_id: str, address: str) -> str:
        """`web-1 (172.17.0.5:8080) of app.localhost`: the member as an operator knows it."""
        for pool in self._desired.pools if self._desired is not None else ():
            if pool.id != pool_id:
                continue
            where = ",".join(pool.shape.hosts) + (pool.shape.path or "")
            names = sorted({m.container_name for m in pool.members if m.address == address})
            if names:
                return f"{', '.join(names)} ({address}) of {where}"
            return f"{address} of {where}"
        return address

    def states(self) -> Mapping[tuple[str, str], MemberHealth]:
        """The active checks' verdicts by (pool id, member address)."""
        return self.checker.states()

    @property
    def probes(self) -> int:
        """Active checks run so far."""
        return self.checker.probes

    def publish(self, desired: DesiredState) -> None:
        """Serve `desired`'s members from now on; start or stop probes to match."""
        self._desired = desired
        pools = desired.pools
        shared, fresh, stale = self._since_last(pools)
        if self._republished is None:  # the first listing: its members were up already
            checked = {p.shape.id: p for p in pools if p.shape.settings.active is not None}
            self.checker.update(pools, initial=True)
        else:
            changed = {p.shape.id: p for p in fresh if p.shape.settings.active is not None}
            if changed or any(pool_id in self._checked for pool_id in stale):
                checked = {
                    pool_id: pool for pool_id, pool in self._checked.items() if pool_id not in stale
                }
                checked.update(changed)
            else:
                checked = self._checked
            # The checker's work is per member: skip it when no pool with a check changed.
            if checked is not self._checked and (
                checked.keys() != self._checked.keys()
                or any(pool is not self._checked[pool_id] for pool_id, pool in checked.items())
            ):
                self.checker.update(pools)
        self._checked = checked
        self._republish(shared, fresh, stale)

    def republish(self) -> None:
        """Hand the resolver the answers of the pools as last published.

        Only pools that are not the very objects of the last call are looked at again,
        and those whose answers depend on health (active checks) or were all down; the
        resolver is given the names whose answers changed.
        """
        if self._desired is None:
            return
        self._republish(*self._since_last(self._desired.pools))

    def _since_last(self, pools: tuple[Pool, ...]) -> tuple[set[int], list[Pool], set[str]]:
        """`pools` against the last republish: the id()s of the pools that are its very
        objects (as they were), the other pools, and the ids of its pools not here as
        they were (rebuilt or gone)."""
        previous = self._republished or ()
        shared = set(map(id, previous)).intersection(map(id, pools))
        fresh = [pool for pool in pools if id(pool) not in shared]
        stale = {pool.shape.id for pool in previous if id(pool) not in shared}
        return shared, fresh, stale

    def _republish(self, shared: set[int], fresh: list[Pool], stale: set[str]) -> None:
        """`republish`, given the id()s of the pools that are the very objects of the
        last call (`shared`), the others (`fresh`) and the ids of the last call's pools
        that are not here as they were (`stale`: rebuilt or gone)."""
        assert self._desired is not None
        pools = self._desired.pools
        entries, served = self._answers, self._served
        changed: set[str] = set()
        if self._republished is None:
            work: Iterable[Pool] = pools
        else:
            # The pools not seen as they are, those whose answer follows their health
            # (with checks, or all down), each once.
            by_id = {p.shape.id: p for p in fresh}
            for pool_id in stale:
                if pool_id not in by_id and pool_id in entries:  # gone
                    name = entries.pop(pool_id).dns_name
                    del served[name]
                    changed.add(name)
            for pool in self._checked.values():
                by_id.setdefault(pool.shape.id, pool)
            for pool_id in self._all_down:
                entry = entries.get(pool_id)
                if entry is not None and id(entry.pool) in shared:
                    by_id.setdefault(pool_id, entry.pool)
            work = by_id.values()
        for pool in work:
            pool_id = pool.shape.id
            checked = pool.shape.settings.active is not None
            verdicts = (
                tuple(self.checker.is_healthy(pool_id, m) for m in pool.members) if checked else ()
            )
            entry = entries.get(pool_id)
            if (
                entry is None
                or entry.verdicts != verdicts
                or (entry.pool is not pool and entry.pool != pool)
            ):

                def healthy(member: Member, pool_id: str = pool_id) -> bool:
                    return self.checker.is_healthy(pool_id, member)

                records = tuple(srv_answers(pool, healthy=healthy))
                if entry is not None and entry.records != records:
                    self._changed.add(pool_id)
                entry = _PoolAnswer(pool, verdicts, records, pool_dns_name(pool_id))
                entries[pool_id] = entry
            name, records = entry.dns_name, entry.records
            if served.get(name) is not records:
                served[name] = records
                changed.add(name)
            if checked or pool_id in self._all_down:
                self._note_all_down(pool_id, pool.members)
        if self._republished is None:
            self.resolver.update(served)
        elif changed:
            self.resolver.update(served, changed=changed)
        self._republished = pools

    def channels(
        self, desired: DesiredState, now: float
    ) -> tuple[DesiredState, frozenset[str], float | None]:
        """The pools as Caddy's JSON carries them, the ids of those outside the dynamic
        budget (members in the JSON: only those the resolver would answer), and when
        the budget next lets a pool go (`Budget.next_change`).

        Call after `publish(desired)`; `now` is monotonic seconds.
        """
        changed, self._changed = self._changed, set()
        ids = {pool.shape.id for pool in desired.pools}
        was_over = self.budget.over
        json_pools = self.budget.assign(ids, changed & ids, now)
        if self.budget.over != was_over:
            self._log_budget(len(ids))
        if not json_pools:
            self._json_views.clear()
            return desired, json_pools, None
        views: dict[str, _LiveView] = {}
        pools = []
        for pool in desired.pools:
            pool_id = pool.shape.id
            if pool_id in json_pools and pool.shape.settings.active is not None:
                view = self._live_view(pool)
                views[pool_id] = _LiveView(pool, view)
                pool = view
            pools.append(pool)
        self._json_views = views
        rendered = DesiredState(tuple(pools), desired.problems)
        return rendered, json_pools, self.budget.next_change()

    def _live_view(self, pool: Pool) -> Pool:
        """`pool` with the members the resolver answers (`serving_members`): the same
        object as last time while nothing changed."""
        if pool.shape.settings.active is None and not pool.draining:
            return pool  # no check: every member is live
        live = serving_members(pool, healthy=lambda m: self.checker.is_healthy(pool.id, m))
        cached = self._json_views.get(pool.id)
        if cached is not None and cached.pool is pool and cached.view.members == live:
            return cached.view
        return pool if live == pool.members else replace(pool, members=live)

    def _log_budget(self, pools: int) -> None:
        budget = self.budget
        if budget.over:
            logger.warning(
                f"{pools} pools exceed LABELSYNC_DYNAMIC_BUDGET={budget.size}: quiet pools "
                "carry their members in Caddy's JSON, and at most "
                f"{budget.size} pools whose membership is changing are served by the "
                "resolver. A membership change of a quiet pool costs one admin write "
                f"(it joins the budget), and one more when it leaves after "
                f"{budget.hold:g}s without changes"
            )
        else:
            logger.info(
                f"{pools} pools fit LABELSYNC_DYNAMIC_BUDGET={budget.size}: every pool's "
                "membership is served by the resolver again"
            )

    def _note_all_down(self, pool_id: str, members: tuple[Member, ...]) -> None:
        # Members still starting (pending, and not for long) are no alarm.
        down = no_healthy_member(
            members, healthy=lambda m: self.checker.is_healthy(pool_id, m)
        ) and not all(self.checker.is_starting(pool_id, m) for m in members)
        if down and pool_id not in self._all_down:
            logger.bind(pool=pool_id).warning(
                f"pool {pool_id}: no member passes its health check; answering with the "
                "replicas still draining, if any, else with all members so clients get the "
                "backends' own errors"
            )
            self._all_down.add(pool_id)
        elif not down:
            self._all_down.discard(pool_id)
