"""The log lines a newcomer reads first: each says what happened to what, and no more."""

from __future__ import annotations

import dataclasses

from labelsync.caddy.operations import DeleteRoute, Operation
from labelsync.core.changes import describe_changes
from labelsync.core.labels import parse_container
from labelsync.core.model import ContainerInfo, DesiredState
from labelsync.core.pools import build_desired
from labelsync.loop.reconcile import _stale_removals


def container(**labels: str) -> ContainerInfo:
    return ContainerInfo(
        id="c1",
        name="web-1",
        created=1.0,
        labels={"labelsync.host": "app.localhost", "labelsync.address": "10.0.0.5:80", **labels},
    )


def test_an_invalid_boolean_is_one_error_without_a_no_effect_warning() -> None:
    _, problems = parse_container(container(**{"labelsync.tls.skip_verify": "maybe"}))
    assert [str(p) for p in problems] == [
        "container 'web-1': labelsync.tls.skip_verify='maybe': not a boolean "
        "(true/false, yes/no, on/off, 1/0)"
    ]
    # A valid value that has no effect is still said.
    _, problems = parse_container(container(**{"labelsync.tls.skip_verify": "true"}))
    assert any("has no effect" in str(p) for p in problems)


def test_a_pool_added_without_members_says_so() -> None:
    stopped = dataclasses.replace(
        container(**{"labelsync.lb.policy": "round_robin"}), state="exited"
    )
    desired = build_desired([stopped])
    assert describe_changes(None, desired) == [
        "pool app.localhost added (round_robin: no members yet)"
    ]


def test_a_pool_waiting_for_its_first_start_is_told_when_it_is_written() -> None:
    """`docker run` creates, then starts: nothing is written at the create, so no
    "applied" line says the pool was added then; the start adds it with its member."""
    created = dataclasses.replace(container(), state="created")
    waiting = build_desired([created])
    assert waiting.pools[0].awaiting_start
    assert describe_changes(None, waiting) == []
    started = build_desired([container()])
    assert describe_changes(waiting, started) == ["pool app.localhost added (random: web-1)"]
    assert describe_changes(waiting, build_desired([])) == []  # removed before it started


def test_a_recreated_service_is_told_by_its_members_not_as_removed_and_added() -> None:
    """`compose up` recreating a service: the old container goes before the new one
    starts, and Caddy keeps the pool's route meanwhile."""
    old = dataclasses.replace(container(), id="c-old", name="web-old")
    new = dataclasses.replace(container(), id="c-new", name="web-new")
    running = build_desired([old])
    waiting = build_desired([dataclasses.replace(new, state="created")])
    started = build_desired([new])
    in_caddy = {pool.id for pool in running.pools}
    assert describe_changes(running, waiting, in_caddy) == ["pool app.localhost members -web-old"]
    assert describe_changes(waiting, started, in_caddy) == ["pool app.localhost members +web-new"]


def test_a_route_removed_at_start_up_is_named() -> None:
    desired = build_desired([container()])
    (pool,) = desired.pools
    operations: list[Operation] = [DeleteRoute("labelsync-gone-0123abcd")]
    assert _stale_removals(None, operations) == [
        "route labelsync-gone-0123abcd removed (in Caddy, but nothing labelled gives it now)"
    ]
    # A pool of the last build that goes away is described by describe_changes instead.
    assert _stale_removals(desired, [DeleteRoute(pool.id)]) == []
    assert describe_changes(desired, DesiredState((), ())) == ["pool app.localhost removed"]


def test_a_health_change_names_the_container_then_its_address() -> None:
    from labelsync.membership.channel import DynamicMembership

    desired = build_desired([container()])
    (pool,) = desired.pools
    membership = DynamicMembership.__new__(DynamicMembership)
    membership._desired = desired
    assert membership.describe(pool.id, "10.0.0.5:80") == "web-1 (10.0.0.5:80) of app.localhost"
    assert membership.describe(pool.id, "10.0.0.9:80") == "10.0.0.9:80 of app.localhost"
