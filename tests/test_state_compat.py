"""A state file another labelsync version wrote, with a value this one does not know,
is skipped with a note: `status` says so instead of failing with a traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

from labelsync.app.status import live_state
from labelsync.core.model import ContainerInfo
from labelsync.core.pools import build_desired
from labelsync.loop.reconcile import SyncState
from labelsync.settings import Settings
from tests.support.snapshots import snapshot_of


def test_an_unknown_value_in_a_live_daemons_state_file_is_a_note(tmp_path: Path) -> None:
    web = ContainerInfo(
        id="c1",
        name="web-1",
        created=1.0,
        labels={"labelsync.host": "app.test", "labelsync.address": "10.0.0.5:80"},
    )
    state = SyncState()
    state.desired = build_desired([web])
    payload = snapshot_of([state]).to_json()
    payload["pid"] = os.getpid()  # a daemon that runs
    for pool in payload["pools"]:
        pool["membership"] = "carrier-pigeon"  # a channel a later version may add
    path = tmp_path / "state.json"
    path.write_text(json.dumps(payload))
    snapshot, notes = live_state(Settings(state_file=path))
    assert snapshot is None
    assert len(notes) == 1 and "not a state file this labelsync reads" in notes[0], notes
