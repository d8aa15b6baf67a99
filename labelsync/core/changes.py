"""What changed between two desired states, in words an operator reads in one log line."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields

from labelsync.core.model import DesiredState, Pool


def _label(pool: Pool) -> str:
    hosts = ",".join(pool.shape.hosts)
    return f"{hosts}{pool.shape.path or ''}"


def _member_names(pool: Pool) -> dict[str, str]:
    return {m.address: m.container_name for m in pool.members}


def _shape_changes(old: Pool, new: Pool) -> list[str]:
    before, after = old.shape.settings, new.shape.settings
    changed = [f.name for f in fields(before) if getattr(before, f.name) != getattr(after, f.name)]
    if old.shape.retries != new.shape.retries:
        changed.append("retries")
    return changed


def describe_changes(
    old: DesiredState | None, new: DesiredState, in_caddy: Collection[str] = ()
) -> list[str]:
    """One phrase per pool that changed: added, removed, members +/-, settings changed.

    `in_caddy`: the ids of the pools whose routes Caddy held before `new`. A pool waiting
    for its first start (`Pool.awaiting_start`) is written only then, so one Caddy does
    not hold is no pool yet: it is told as added at its start, with its first member.
    One Caddy holds (a service recreated: its old container went before the new one
    started) is kept there, and told by its members as any other.
    """
    old_pools = old.pools if old else ()
    if old_pools is new.pools:
        return []
    # Pools not rebuilt are the very objects of the last build (the incremental core
    # shares them): unchanged, and left out before the comparison.
    shared = set(map(id, old_pools)).intersection(map(id, new.pools))

    def told(pool: Pool) -> bool:
        return id(pool) not in shared and (not pool.awaiting_start or pool.id in in_caddy)

    previous = {p.id: p for p in old_pools if told(p)}
    current = {p.id: p for p in new.pools if told(p)}
    phrases: list[str] = []
    for pool_id, pool in current.items():
        before = previous.get(pool_id)
        if before is None:
            names = ", ".join(m.container_name for m in pool.members) or "no members yet"
            phrases.append(f"pool {_label(pool)} added ({pool.shape.settings.lb_policy}: {names})")
            continue
        settings = _shape_changes(before, pool)
        if settings:
            phrases.append(f"pool {_label(pool)} changed {', '.join(settings)}")
        old_members, new_members = _member_names(before), _member_names(pool)
        added = [f"+{new_members[a]}" for a in new_members if a not in old_members]
        removed = [f"-{old_members[a]}" for a in old_members if a not in new_members]
        if added or removed:
            phrases.append(f"pool {_label(pool)} members {' '.join(added + removed)}")
        elif [m.address for m in before.members] != [m.address for m in pool.members] or [
            m.weight for m in before.members
        ] != [m.weight for m in pool.members]:
            phrases.append(f"pool {_label(pool)} member order or weights changed")
    for pool_id, pool in previous.items():
        if pool_id not in current:
            phrases.append(f"pool {_label(pool)} removed")
    return phrases
