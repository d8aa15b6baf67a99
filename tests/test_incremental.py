"""The incremental core equals the core from scratch, for random change sequences.

A loop keeps one `ParseMemo` and one `RenderMemo` and, after each change, builds,
renders and diffs against what it knows Caddy holds (`adopt_equal`); building,
rendering and diffing everything afresh must give equal pools, problems, routes and
operations at every step, and applying the operations must reach the desired routes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from labelsync.caddy.diff import adopt_equal, diff_routes
from labelsync.caddy.operations import apply_operations
from labelsync.caddy.render import RenderMemo, RenderOptions, render_routes
from labelsync.core.engines import Reach
from labelsync.core.model import ContainerInfo, Pool, PublishedPort
from labelsync.core.pools import ParseMemo, build_desired
from labelsync.membership.channel import DynamicMembership
from labelsync.membership.health import ActiveChecker
from labelsync.membership.resolver import Resolver

HOSTS = ["a.test", "b.test", "c.test", "a.test, b.test"]
PATHS = [None, "/api/*", "/x"]
POLICIES = ["random", "first", "round_robin", "weighted_round_robin", "rond_robin"]
IPS = [f"10.0.0.{i}" for i in range(1, 7)]


@st.composite
def containers(draw: st.DrawFn, index: int) -> ContainerInfo:
    labels = {"labelsync.host": draw(st.sampled_from(HOSTS)), "labelsync.port": "80"}
    if (path := draw(st.sampled_from(PATHS))) is not None:
        labels["labelsync.path"] = path
    if draw(st.booleans()):
        labels["labelsync.lb.policy"] = draw(st.sampled_from(POLICIES))
    if draw(st.booleans()):
        labels["labelsync.weight"] = str(draw(st.integers(0, 3)))
    if draw(st.booleans()):
        labels["labelsync.route.extra.host"] = draw(st.sampled_from(HOSTS))
    if draw(st.booleans()):
        labels["labelsync.split"] = "20"
        labels["labelsync.track"] = draw(st.sampled_from(["stable", "canary"]))
    return ContainerInfo(
        id=f"c{index}",
        name=f"web-{index}",
        created=1000.0 + draw(st.integers(0, 5)),
        labels=labels,
        state=draw(st.sampled_from(["running", "running", "exited", "paused"])),
        health=draw(st.sampled_from([None, None, "healthy", "unhealthy"])),
        networks={"net": draw(st.sampled_from(IPS))},
        exposed_ports=(80,),
        # On an engine reached at published ports, whose host port can move (a restart).
        engine=draw(st.sampled_from([None, "b"])),
        reach=draw(st.sampled_from(list(Reach))),
        host_address=draw(st.sampled_from([None, "10.0.1.2"])),
        published=draw(
            st.sampled_from([(), (PublishedPort(80, "0.0.0.0", 32768),)])
            | st.builds(lambda port: (PublishedPort(80, "0.0.0.0", port),), st.integers(1, 3))
        ),
    )


CHANGES = st.sampled_from(
    ["add", "remove", "relabel", "state", "health", "withdraw", "same", "mode", "republish"]
)


@settings(max_examples=150, deadline=None)
@given(
    data=st.data(),
    steps=st.lists(CHANGES, min_size=1, max_size=12),
    upstreams=st.sampled_from(["dynamic", "static"]),
)
def test_incremental_builds_renders_and_diffs_equal_from_scratch(
    data: st.DataObject, steps: list[str], upstreams: str
) -> None:
    options = RenderOptions(upstreams=upstreams)  # type: ignore[arg-type]
    dynamic = upstreams == "dynamic"
    fleet = {f"c{i}": data.draw(containers(i)) for i in range(data.draw(st.integers(0, 6)))}
    withdrawn: set[str] = set()
    parse_memo, render_memo = ParseMemo(), RenderMemo()
    caddy: list[dict[str, object]] = [{"@id": "user-route", "handle": []}]  # a user's own
    known = caddy
    next_index = 100
    for step in steps:
        ids = sorted(fleet)
        if step == "add" or not ids:
            fleet[f"c{next_index}"] = data.draw(containers(next_index))
            next_index += 1
        elif step == "remove":
            del fleet[data.draw(st.sampled_from(ids))]
        elif step == "relabel":
            victim = data.draw(st.sampled_from(ids))
            fresh = data.draw(containers(0))
            fleet[victim] = replace(fresh, id=victim, name=fleet[victim].name)
        elif step == "state":
            victim = data.draw(st.sampled_from(ids))
            state = data.draw(st.sampled_from(["running", "exited", "paused"]))
            fleet[victim] = replace(fleet[victim], state=state)
        elif step == "health":
            victim = data.draw(st.sampled_from(ids))
            health = data.draw(st.sampled_from([None, "healthy", "unhealthy", "starting"]))
            fleet[victim] = replace(fleet[victim], health=health)
        elif step == "republish":  # a restart that moved the published host port
            victim = data.draw(st.sampled_from(ids))
            port = data.draw(st.integers(1, 3))
            fleet[victim] = replace(
                fleet[victim],
                reach=Reach.PUBLISHED,
                published=(PublishedPort(80, "0.0.0.0", port),),
            )
        elif step == "withdraw":
            victim = data.draw(st.sampled_from(ids))
            withdrawn.symmetric_difference_update({victim})
        elif step == "mode":  # a setting the build depends on (a restart would change it)
            dynamic = not dynamic
        # "same": nothing changed (an event that changed nothing, a resync)
        listing = [fleet[i] for i in sorted(fleet)]
        if data.draw(st.booleans()):  # new objects, as each Docker listing makes
            listing = [replace(c) for c in listing]
        # Any order (Docker lists newest first); now and then one record twice.
        listing = data.draw(st.permutations(listing))
        if listing and data.draw(st.integers(0, 9)) == 0:
            listing = [*listing, listing[0]]

        incremental = build_desired(listing, dynamic=dynamic, withdrawn=withdrawn, memo=parse_memo)
        scratch = build_desired(listing, dynamic=dynamic, withdrawn=withdrawn)
        assert incremental == scratch

        routes = render_routes(incremental, options, memo=render_memo)
        assert routes == render_routes(scratch, options)

        operations = diff_routes(known, routes)
        assert operations == diff_routes(json.loads(json.dumps(caddy)), routes)
        caddy = apply_operations(caddy, operations)
        assert not diff_routes(caddy, routes)
        known = adopt_equal(caddy, routes)
        assert known == caddy


def _web(index: int, host: str, ip: str = "10.0.0.1") -> ContainerInfo:
    return ContainerInfo(
        id=f"w{index}",
        name=f"web-{index}",
        created=1000.0 + index,
        labels={"labelsync.host": host, "labelsync.port": "80"},
        networks={"net": ip},
        exposed_ports=(80,),
    )


def test_a_build_redoes_only_the_pools_a_change_touched() -> None:
    """Nothing changed: the previous result itself. One pool changed: every other pool
    is the very object of the previous build (later stages compare by identity)."""
    memo = ParseMemo()
    listing = [_web(1, "a.test"), _web(2, "b.test"), _web(3, "c.test")]
    first = build_desired(listing, memo=memo)
    assert build_desired(list(listing), memo=memo) is first
    assert build_desired([replace(c) for c in listing], memo=memo) is first  # equal records
    second = build_desired([*listing, _web(4, "b.test", "10.0.0.2")], memo=memo)
    assert [p.id for p in second.pools] == [p.id for p in first.pools]
    assert second.pools[0] is first.pools[0] and second.pools[2] is first.pools[2]
    assert len(second.pools[1].members) == 2
    assert build_desired(listing, memo=memo) == first  # the member left again


@settings(max_examples=100, deadline=None)
@given(data=st.data(), steps=st.lists(CHANGES, min_size=1, max_size=10))
def test_the_resolver_answers_as_if_published_afresh(data: st.DataObject, steps: list[str]) -> None:
    """The membership channel looks again only at pools that are not the very objects
    it was last given: what the resolver serves equals a fresh channel's answers."""
    fleet = {f"c{i}": data.draw(containers(i)) for i in range(data.draw(st.integers(0, 6)))}
    memo = ParseMemo()
    channel = DynamicMembership(Resolver(), ActiveChecker())
    next_index = 100
    for step in steps:
        ids = sorted(fleet)
        if step in ("add", "mode") or not ids:
            fleet[f"c{next_index}"] = data.draw(containers(next_index))
            next_index += 1
        elif step == "remove":
            del fleet[data.draw(st.sampled_from(ids))]
        elif step in ("relabel", "withdraw"):
            victim = data.draw(st.sampled_from(ids))
            fleet[victim] = replace(data.draw(containers(0)), id=victim)
        elif step in ("state", "health"):
            victim = data.draw(st.sampled_from(ids))
            state = data.draw(st.sampled_from(["running", "exited"]))
            fleet[victim] = replace(fleet[victim], state=state)
        listing = [fleet[i] for i in sorted(fleet)]
        desired = build_desired(listing, memo=memo)
        channel.publish(desired)
        fresh = DynamicMembership(Resolver(), ActiveChecker())
        fresh.publish(build_desired(listing))
        assert channel.resolver.answers() == fresh.resolver.answers()


class _RecordingChecker(ActiveChecker):
    """Notes the pools with active checks it was last given; probes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.checked: dict[str, object] = {}

    def update(self, pools: Iterable[Pool], *, initial: bool = False) -> None:
        self.checked = {p.id: p for p in pools if p.shape.settings.active is not None}


def test_the_checker_follows_the_pools_with_checks_as_they_change() -> None:
    """The channel hands the checker the pools whenever a pool with a check is added,
    rebuilt or gone, also when only other pools were rebuilt alongside."""
    checker = _RecordingChecker()
    channel = DynamicMembership(Resolver(), checker)
    memo = ParseMemo()
    checked = {"labelsync.health.path": "/"}
    plain, health = (
        _web(1, "a.test"),
        replace(_web(2, "b.test"), labels={**_web(2, "b.test").labels, **checked}),
    )
    steps = [
        [plain],
        [plain, health],  # a pool with a check added
        [plain, replace(health, networks={"net": "10.0.0.9"})],  # rebuilt
        [
            replace(plain, networks={"net": "10.0.0.8"}),
            replace(health, networks={"net": "10.0.0.9"}),
        ],
        [_web(3, "c.test")],  # both gone
    ]
    for listing in steps:
        desired = build_desired(listing, memo=memo)
        channel.publish(desired)
        expected = {p.id: p for p in desired.pools if p.shape.settings.active is not None}
        assert checker.checked == expected
