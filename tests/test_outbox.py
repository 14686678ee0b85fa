"""The SQLite outbox: replacement, version-guarded removal, stored backoff, expiry, dead letters."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from agent.errors import StateError, ValidationError
from agent.sms.outbox import Outbox

from .sms_helpers import entry


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_files_are_private_and_wal(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with Outbox(state) as box:
        box.add("T", [entry()])
    assert stat.S_IMODE(os.stat(state).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(state / "agent.db").st_mode) == 0o600
    with sqlite3.connect(state / "agent.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_an_entry_outside_the_limits_is_refused_before_anything_is_queued(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        with pytest.raises(ValidationError, match="num_total_files is 1000001"):
            box.add("T", [entry("/ok"), entry("/big", 1_000_001)])
        assert box.pending() == [] and box.last_results() == []


def test_newer_result_replaces_pending_and_its_backoff(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path, clock) as box:
        box.add("T", [entry("/a", 1), entry("/b", 1)])
        sent = box.due()
        box.defer("T", sent, clock.now + 100, "503")
        assert box.due() == []
        box.add("T", [entry("/a", 2)])
        due = box.due()
        assert [p.entry for p in due] == [entry("/a", 2)]
        assert due[0].attempts == 0
        assert len(box.pending()) == 2


def test_delivered_keeps_a_result_replaced_in_flight(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.add("T", [entry("/a", 1), entry("/b", 1)])
        in_flight = box.due()
        box.add("T", [entry("/a", 2)])  # a newer verification while the POST was out
        assert box.delivered("T", in_flight) == 1
        assert [p.entry for p in box.pending()] == [entry("/a", 2)]
        states = {r.dir_check: r.state for r in box.last_results()}
        assert states == {"/a": "pending", "/b": "delivered"}


def test_backoff_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path, clock) as box:
        box.add("T", [entry("/a"), entry("/b")])
        box.defer("T", box.due()[:1], clock.now + 60, "SMS answered 503")
    clock.now += 30
    with Outbox(tmp_path, clock) as box:
        assert box.due() == []  # the whole task waits: no stampede after restart
        assert box.next_try() == 1060.0
        counts = box.counts()
        assert counts.pending == 2 and counts.last_pending_error == "SMS answered 503"
        clock.now += 31
        due = box.due()
        assert {p.entry.dir_check: p.attempts for p in due} == {"/a": 1, "/b": 0}


def test_kill_moves_to_dead_letters_with_server_answer(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.add("T", [entry("/a")])
        assert box.kill("T", box.due(), "rejected", 400, "SMS.0205", "bad value") == 1
        counts = box.counts()
        assert counts.pending == 0 and counts.dead == 1
        assert counts.last_dead_error == "rejected 400 SMS.0205: bad value"
        assert box.last_results()[0].state == "dead"


def test_expire_after_max_age(tmp_path: Path) -> None:
    clock = Clock()
    with Outbox(tmp_path, clock) as box:
        box.add("T", [entry("/old")])
        clock.now += 100
        box.add("T", [entry("/new")])
        clock.now += 50
        expired = box.expire(max_age=120)
        assert [p.entry.dir_check for p in expired] == ["/old"]
        assert [p.entry.dir_check for p in box.pending()] == ["/new"]
        assert box.counts().dead == 1


def test_tasks_are_kept_apart(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.add("T1", [entry("/a", 1)])
        box.add("T2", [entry("/a", 2)])
        assert [(p.task_id, p.entry.num_total_files) for p in box.due()] == [("T1", 1), ("T2", 2)]


def test_record_not_uploaded(tmp_path: Path) -> None:
    with Outbox(tmp_path) as box:
        box.record("/a", entry("/a"), "not-uploaded", "endpoint not set")
        box.record("/b", None, "error", "target unreachable")
        rows = {r.dir_check: (r.state, r.detail, r.entry) for r in box.last_results()}
    assert rows == {
        "/a": ("not-uploaded", "endpoint not set", entry("/a")),
        "/b": ("error", "target unreachable", None),
    }


def test_unusable_state_dir_is_a_state_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match=str(blocker)):
        Outbox(blocker / "state")
