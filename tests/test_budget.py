"""The dynamic budget: which pools the resolver serves once there are too many for
Caddy's SRV cache, and what it costs in admin writes (real Caddy, real resolver)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from labelsync.caddy.admin import CaddyAdmin
from labelsync.caddy.render import RenderOptions, render_route
from labelsync.core.model import (
    ActiveHealth,
    DesiredState,
    Member,
    Pool,
    PoolSettings,
    PoolShape,
)
from labelsync.loop.reconcile import Reconciler
from labelsync.membership.budget import Budget
from labelsync.membership.channel import DynamicMembership
from labelsync.membership.health import ActiveChecker
from labelsync.membership.resolver import Resolver
from labelsync.settings import Settings
from tests.support.caddy import CaddyProcess, free_port
from tests.support.containers import short_uuid
from tests.support.daemon import free_udp_port
from tests.test_reconcile import ListedContainers, container

ASYNC = pytest.mark.asyncio(loop_scope="session")


# -- the decision (pure) ---------------------------------------------------------------------


def test_within_the_budget_every_pool_is_served_by_the_resolver() -> None:
    budget = Budget(size=3, hold=10)
    assert budget.assign({"a", "b", "c"}, [], now=0) == frozenset()
    assert budget.assign({"a", "b", "c"}, ["a", "b"], now=1) == frozenset()
    assert not budget.over and budget.next_change() is None


def test_past_the_budget_only_changing_pools_hold_it_until_quiet() -> None:
    pools = {f"p{i}" for i in range(5)}
    budget = Budget(size=2, hold=10)
    assert budget.assign(pools, [], now=0) == pools  # a new or quiet pool starts in the JSON
    assert budget.over
    assert budget.assign(pools, ["p1"], now=1) == pools - {"p1"}
    assert budget.next_change() == 11
    assert budget.assign(pools, ["p1"], now=5) == pools - {"p1"}  # a rollout's next step
    assert budget.assign(pools, ["p2", "p3"], now=6) == pools - {"p2", "p3"}  # newest win
    assert budget.assign(pools, [], now=15.5) == pools - {"p2", "p3"}  # p1 quiet, not back
    assert budget.assign(pools, [], now=16) == pools
    assert budget.next_change() is None


def test_a_removed_pool_leaves_the_budget() -> None:
    budget = Budget(size=1, hold=10)
    budget.assign({"a", "b", "c"}, ["a"], now=0)
    assert budget.assign({"b", "c"}, [], now=1) == {"b", "c"}
    assert budget.assign({"b"}, [], now=2) == frozenset()


def test_a_pool_outside_the_budget_carries_its_members_like_static_mode() -> None:
    shape = PoolShape(
        id="labelsync-x",
        hosts=("x.test",),
        path=None,
        settings=PoolSettings(lb_policy="round_robin"),
        retries=2,
    )
    members = tuple(Member(f"10.0.0.{i}:80", str(i), f"m{i}") for i in (1, 2))
    pool = Pool(shape=shape, members=members)
    inside = render_route(pool, RenderOptions())
    outside = render_route(pool, RenderOptions(json_pools=frozenset({pool.id})))
    handler = outside["handle"][0]
    assert "dynamic_upstreams" not in handler
    assert "resolver" not in handler["transport"]
    assert handler["upstreams"] == [{"dial": "10.0.0.1:80"}, {"dial": "10.0.0.2:80"}]
    # The same policy and retries; only a lookup has a reason to pause before a retry.
    inside_balancing = dict(inside["handle"][0]["load_balancing"])
    assert inside_balancing.pop("try_interval") == "50ms"
    assert handler["load_balancing"] == inside_balancing
    assert "dynamic_upstreams" in inside["handle"][0]


# -- the loop, with a real Caddy and resolver --------------------------------------------------


@contextlib.asynccontextmanager
async def dynamic_loop(
    caddy: CaddyProcess, listing: ListedContainers, budget: int
) -> AsyncIterator[tuple[Reconciler, DynamicMembership]]:
    settings = Settings(
        caddy_server=f"budget-{short_uuid()}",
        listen=f"127.0.0.1:{free_port()}",
        auto_https="off",
        upstreams="dynamic",
        resolver_listen=f"127.0.0.1:{free_udp_port()}",
        dynamic_budget=budget,
    )
    admin = CaddyAdmin(caddy.admin_url, timeout=10)
    async with DynamicMembership.running(settings) as membership:
        loop = Reconciler(settings, listing, admin, membership=membership)
        try:
            yield loop, membership
        finally:
            await admin.aclose()
            loop.close()
            with contextlib.suppress(AssertionError):
                caddy.admin("DELETE", f"/config/apps/http/servers/{settings.caddy_server}")


def owned(caddy: CaddyProcess, settings: Settings) -> list[dict[str, Any]]:
    routes = caddy.get_config(f"apps/http/servers/{settings.caddy_server}/routes") or []
    return [r for r in routes if str(r.get("@id", "")).startswith("labelsync-")]


def dynamic_ids(routes: list[dict[str, Any]]) -> set[str]:
    return {r["@id"] for r in routes if "dynamic_upstreams" in r["handle"][0]}


@ASYNC
async def test_a_rollout_past_the_budget_writes_twice(caddy: CaddyProcess) -> None:
    listing = ListedContainers()
    listing.containers = [
        container(f"web{i}-{n}", f"pool{i}.budget.test", ip=f"127.0.0.{2 + n}")
        for i in range(4)
        for n in range(2)
    ]
    async with dynamic_loop(caddy, listing, budget=2) as (loop, membership):
        membership.budget.hold = 60.0
        assert (await loop.sync_once()).ok
        loop.state.admin_writes = 0
        server = loop.settings.caddy_server
        assert dynamic_ids(owned(caddy, loop.settings)) == set()  # 4 pools, budget 2: all quiet
        assert all(len(r["handle"][0]["upstreams"]) == 2 for r in owned(caddy, loop.settings))

        # A rolling update of pool 1: one replica at a time is replaced.
        for n in range(2):
            old = next(c for c in listing.containers if c.name == f"web1-{n}")
            listing.containers.append(replace(old, id=f"{old.id}-new", name=f"{old.name}-new"))
            assert (await loop.sync_once()).ok
            listing.containers.remove(old)
            assert (await loop.sync_once()).ok
        routes = owned(caddy, loop.settings)
        pool1 = next(r["@id"] for r in routes if r["match"][0]["host"] == ["pool1.budget.test"])
        assert dynamic_ids(routes) == {pool1}
        assert loop.state.admin_writes == 1, server

        # Quiet for `hold`: back into the JSON with the members it has now.
        membership.budget.hold = 0.0
        assert (await loop.sync_once()).ok
        routes = owned(caddy, loop.settings)
        assert dynamic_ids(routes) == set()
        assert loop.state.admin_writes == 2
        back = next(r for r in routes if r["@id"] == pool1)
        assert len(back["handle"][0]["upstreams"]) == 2


@ASYNC
async def test_within_the_budget_membership_changes_write_nothing(caddy: CaddyProcess) -> None:
    listing = ListedContainers()
    listing.containers = [container(f"in{i}", f"in{i}.budget.test") for i in range(3)]
    async with dynamic_loop(caddy, listing, budget=3) as (loop, _membership):
        assert (await loop.sync_once()).ok
        assert len(dynamic_ids(owned(caddy, loop.settings))) == 3
        writes = loop.state.admin_writes
        listing.containers.append(container("in0-b", "in0.budget.test", ip="127.0.0.3"))
        assert (await loop.sync_once()).ok
        assert loop.state.admin_writes == writes


# -- what the outside sees -------------------------------------------------------------------


def test_the_state_file_says_how_each_pool_learns_its_members() -> None:
    from labelsync.core.pools import build_desired
    from labelsync.loop.reconcile import SyncState
    from labelsync.report.snapshot import Snapshot, build_snapshot
    from tests.support.snapshots import FakeLoop

    state = SyncState()
    state.containers = tuple(container(f"s{i}", f"s{i}.budget.test") for i in range(2))
    state.desired = build_desired(state.containers)
    loop = FakeLoop(state)
    quiet = state.desired.pools[0].id
    loop.json_pools = frozenset({quiet})
    snapshot = build_snapshot([loop], settings=Settings(upstreams="dynamic"))
    channels = {pool.id: pool.membership for pool in snapshot.pools}
    assert channels == {quiet: "json", state.desired.pools[1].id: "resolver"}
    again = Snapshot.from_json(snapshot.to_json())
    assert {pool.id: pool.membership for pool in again.pools} == channels
    static = build_snapshot([loop], settings=Settings(upstreams="static"))
    assert {pool.membership for pool in static.pools} == {"json"}


async def test_a_pool_outside_the_budget_carries_the_members_the_resolver_would_answer() -> None:
    """Outside the budget a pool's members are in the JSON: the same choice as the SRV
    answer. A new replica still pending is left out; with no member passing, the replica
    still draining is written rather than one that does not listen yet."""
    settings = PoolSettings(active=ActiveHealth(path="/health", interval="30s"))
    shape = PoolShape(id="labelsync-b", hosts=("b.test",), path=None, settings=settings, retries=2)
    old = Member(address="127.0.0.1:9", container_id="old", container_name="old")
    new = Member(address="127.0.0.1:10", container_id="new", container_name="new")
    pool = Pool(shape=shape, members=(new,), draining=(old,))
    checker = ActiveChecker()
    channel = DynamicMembership(Resolver(), checker, Budget(size=0))
    try:
        channel.publish(DesiredState(()))  # labelsync's first listing
        desired = DesiredState((pool,))
        channel.publish(desired)  # then the pool: its new member is pending
        assert checker.is_starting(pool.id, new)
        rendered, json_pools, _ = channel.channels(desired, 0.0)
        assert json_pools == {"labelsync-b"}
        assert rendered.pools[0].members == (old,)
    finally:
        await checker.aclose()
