"""SRV answers for a pool: order for `first`, repetition for weights, health fallback."""

from __future__ import annotations

import dataclasses
import ipaddress
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from labelsync.core.model import Member, Pool, PoolSettings, PoolShape, Track
from labelsync.core.names import member_address_of, member_target, target_ip
from labelsync.membership.srv_records import (
    MAX_WEIGHTED_RECORDS,
    NO_MEMBERS_TARGET,
    SrvAnswer,
    apportion,
    interleave,
    no_healthy_member,
    srv_answers,
)


def make_pool(
    *members: Member, policy: str = "random", split: int = 0, pool_id: str = "labelsync-a"
) -> Pool:
    settings = PoolSettings(lb_policy=policy, split=split)
    shape = PoolShape(id=pool_id, hosts=("a.test",), path=None, settings=settings, retries=None)
    return Pool(shape=shape, members=members)


def member(address: str, weight: int = 1, track: Track = Track.STABLE) -> Member:
    return Member(
        address=address, container_id=address, container_name=address, weight=weight, track=track
    )


def everyone(_: Member) -> bool:
    return True


def targets(answers: list[SrvAnswer]) -> list[str]:
    return [member_address_of(a.target, a.port) for a in answers]


# -- target names --------------------------------------------------------------------------


def test_a_member_target_names_its_container() -> None:
    """Caddy keys passive health by dial address: two containers that had the same IP, one
    after the other, are two names, so the second never inherits the first's failures."""
    dead = member_target("172.18.0.5:8080", "3f2a9b1c0d4e" + "0" * 52)
    successor = member_target("172.18.0.5:8080", "9c1d" + "1" * 60)
    assert dead == ("172-18-0-5.3f2a9b1c0d4e.ip4.labelsync.internal.", 8080)
    assert successor[0] != dead[0]
    assert target_ip(dead[0]) == target_ip(successor[0]) == ipaddress.IPv4Address("172.18.0.5")
    assert target_ip("172-18-0-5.ip4.labelsync.internal.") == target_ip(dead[0])  # old names
    assert member_address_of(*dead) == "172.18.0.5:8080"
    v6, _ = member_target("[fd00::9]:80", "static:route-a")  # not hex: hashed to 12 digits
    assert target_ip(v6) == ipaddress.IPv6Address("fd00::9")
    assert len(v6.split(".")[1]) == 12


def test_srv_records_name_the_members_containers() -> None:
    pool = make_pool(Member(address="10.0.0.5:80", container_id="ab" * 32, container_name="w"))
    (record,) = srv_answers(pool, healthy=everyone)
    assert record.target == "10-0-0-5.abababababab.ip4.labelsync.internal."


def test_with_no_healthy_member_the_draining_replicas_are_answered() -> None:
    """A roll that stopped the old replica as its successor started: the successor does not
    answer yet (pending), the old one still drains; it serves until the new one passes."""
    new, old = member("10.0.0.7:80"), member("10.0.0.5:80")
    pool = dataclasses.replace(make_pool(new), draining=(old,))
    assert targets(srv_answers(pool, healthy=lambda m: False)) == ["10.0.0.5:80"]
    assert targets(srv_answers(pool, healthy=everyone)) == ["10.0.0.7:80"]
    alone = make_pool(new)
    assert targets(srv_answers(alone, healthy=lambda m: False)) == ["10.0.0.7:80"]


def test_ipv4_member_target_is_a_name_in_labelsyncs_zone() -> None:
    assert member_target("10.0.0.5:8080") == ("10-0-0-5.ip4.labelsync.internal.", 8080)


def test_ipv6_member_target_spells_all_32_hex_digits() -> None:
    target, port = member_target("[fd00::1]:443")
    assert target == "fd000000000000000000000000000001.ip6.labelsync.internal."
    assert port == 443
    assert target_ip(target) == ipaddress.IPv6Address("fd00::1")


def test_host_name_member_keeps_its_name_as_target() -> None:
    assert member_target("Backend.Example.com:443") == ("backend.example.com.", 443)
    assert target_ip("backend.example.com.") is None


@pytest.mark.parametrize("address", ["10.0.0.5", "10.0.0.5:http", "fd00::1:80", ":80", "a:0"])
def test_address_without_a_valid_port_is_refused(address: str) -> None:
    with pytest.raises(ValueError):
        member_target(address)


@pytest.mark.parametrize("address", ["172.18.0.23:8080", "[2001:db8::7]:80", "db.internal:5432"])
def test_member_address_of_inverts_member_target(address: str) -> None:
    assert member_address_of(*member_target(address)) == address


@pytest.mark.parametrize(
    "name",
    [
        "10-0-0.ip4.labelsync.internal",
        "1-2-3-999.ip4.labelsync.internal",
        "abc.ip6.labelsync.internal",
        "10-0-0-5.pool.labelsync.internal",
        "10-0-0-5",
    ],
)
def test_names_that_spell_no_ip_give_none(name: str) -> None:
    assert target_ip(name) is None


# -- policies ------------------------------------------------------------------------------


def test_first_gives_distinct_priorities_in_member_order() -> None:
    pool = make_pool(
        member("10.0.0.3:80"), member("10.0.0.1:80"), member("10.0.0.2:80"), policy="first"
    )
    answers = srv_answers(pool, healthy=everyone)
    assert [a.priority for a in answers] == [0, 1, 2]
    assert targets(answers) == ["10.0.0.3:80", "10.0.0.1:80", "10.0.0.2:80"]
    assert {a.weight for a in answers} == {0}


def test_first_skips_an_unhealthy_member_and_keeps_the_order_of_the_rest() -> None:
    sick = member("10.0.0.1:80")
    pool = make_pool(sick, member("10.0.0.2:80"), member("10.0.0.3:80"), policy="first")
    answers = srv_answers(pool, healthy=lambda m: m != sick)
    assert targets(answers) == ["10.0.0.2:80", "10.0.0.3:80"]
    assert [a.priority for a in answers] == [0, 1]


def test_split_of_ten_percent_repeats_the_stable_member_nine_times() -> None:
    # pools.split_weights gives 1 stable + 1 canary at 10%: weights 9 and 1.
    pool = make_pool(
        member("10.0.0.1:80", weight=9),
        member("10.0.0.2:80", weight=1, track=Track.CANARY),
        policy="weighted_round_robin",
        split=10,
    )
    answers = srv_answers(pool, healthy=everyone)
    assert Counter(targets(answers)) == {"10.0.0.1:80": 9, "10.0.0.2:80": 1}
    assert {(a.priority, a.weight) for a in answers} == {(0, 0)}


def test_weights_are_reduced_by_their_gcd() -> None:
    pool = make_pool(
        member("10.0.0.1:80", weight=20),
        member("10.0.0.2:80", weight=40),
        policy="weighted_round_robin",
    )
    answers = srv_answers(pool, healthy=everyone)
    assert Counter(targets(answers)) == {"10.0.0.1:80": 1, "10.0.0.2:80": 2}


def test_repeated_records_are_interleaved() -> None:
    assert interleave([3, 1]) == [0, 0, 1, 0]
    assert interleave([1, 1, 1]) == [0, 1, 2]


def test_a_one_percent_split_still_fits_the_record_bound() -> None:
    pool = make_pool(
        member("10.0.0.1:80", weight=99),
        member("10.0.0.2:80", weight=1, track=Track.CANARY),
        policy="weighted_round_robin",
        split=1,
    )
    counts = Counter(targets(srv_answers(pool, healthy=everyone)))
    assert counts == {"10.0.0.1:80": 99, "10.0.0.2:80": 1}


def test_weights_beyond_the_bound_are_apportioned_and_keep_every_member() -> None:
    counts = apportion([997, 2, 1], MAX_WEIGHTED_RECORDS)
    assert sum(counts) == MAX_WEIGHTED_RECORDS
    assert counts[1] >= 1 and counts[2] >= 1


def test_a_member_of_weight_zero_gets_no_record() -> None:
    pool = make_pool(
        member("10.0.0.1:80", weight=0),
        member("10.0.0.2:80", weight=3),
        policy="weighted_round_robin",
    )
    assert targets(srv_answers(pool, healthy=everyone)) == ["10.0.0.2:80"]


def test_all_weights_zero_count_the_same() -> None:
    pool = make_pool(
        member("10.0.0.1:80", weight=0),
        member("10.0.0.2:80", weight=0),
        policy="weighted_round_robin",
    )
    assert targets(srv_answers(pool, healthy=everyone)) == ["10.0.0.1:80", "10.0.0.2:80"]


def test_unhealthy_canary_leaves_all_traffic_to_stable() -> None:
    canary = member("10.0.0.2:80", weight=1, track=Track.CANARY)
    pool = make_pool(
        member("10.0.0.1:80", weight=9), canary, policy="weighted_round_robin", split=10
    )
    assert set(targets(srv_answers(pool, healthy=lambda m: m != canary))) == {"10.0.0.1:80"}


@pytest.mark.parametrize("policy", ["random", "round_robin", "least_conn", "ip_hash", "cookie"])
def test_other_policies_get_one_record_per_member(policy: str) -> None:
    pool = make_pool(member("10.0.0.1:80", weight=5), member("10.0.0.2:80"), policy=policy)
    answers = srv_answers(pool, healthy=everyone)
    assert targets(answers) == ["10.0.0.1:80", "10.0.0.2:80"]
    assert {(a.priority, a.weight) for a in answers} == {(0, 0)}


# -- health --------------------------------------------------------------------------------


def test_unhealthy_members_are_withheld() -> None:
    sick = member("10.0.0.2:80")
    pool = make_pool(member("10.0.0.1:80"), sick, member("10.0.0.3:80"))
    answers = srv_answers(pool, healthy=lambda m: m != sick)
    assert targets(answers) == ["10.0.0.1:80", "10.0.0.3:80"]
    assert not no_healthy_member(pool.members, healthy=lambda m: m != sick)


def test_when_no_member_is_healthy_all_are_answered_and_the_caller_can_tell() -> None:
    pool = make_pool(member("10.0.0.1:80"), member("10.0.0.2:80"), policy="first")

    def nobody(_: Member) -> bool:
        return False

    answers = srv_answers(pool, healthy=nobody)
    assert targets(answers) == ["10.0.0.1:80", "10.0.0.2:80"]
    assert no_healthy_member(pool.members, healthy=nobody)


def test_a_pool_without_members_answers_one_record_that_does_not_resolve() -> None:
    # Never empty: Caddy would keep the last members of a pool answered empty.
    pool = make_pool()
    answers = srv_answers(pool, healthy=everyone)
    assert [a.target for a in answers] == [NO_MEMBERS_TARGET]
    assert target_ip(NO_MEMBERS_TARGET) is None
    assert not no_healthy_member(pool.members, healthy=everyone)


# -- apportioning, for any weights ---------------------------------------------------------


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=40))
def test_apportion_keeps_every_positive_weight_and_respects_the_bound(weights: list[int]) -> None:
    counts = apportion(weights, MAX_WEIGHTED_RECORDS)
    positive = sum(1 for w in weights if w > 0)
    assert len(counts) == len(weights)
    if positive == 0:
        assert counts == [1] * len(weights)
        return
    assert all((c >= 1) == (w > 0) for c, w in zip(counts, weights, strict=True))
    assert sum(counts) <= max(MAX_WEIGHTED_RECORDS, positive)
    total = sum(weights)
    records = sum(counts)
    shares = [w * records / total for w in weights]
    if all(share >= 1 for share, w in zip(shares, weights, strict=True) if w):
        assert all(abs(c - share) < 1 for c, share in zip(counts, shares, strict=True))
