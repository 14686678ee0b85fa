"""Handing a `verify` run's results to SMS: queued, delivered once, and said in a note; never
raising, whatever the state directory or SMS does."""

from __future__ import annotations

from pathlib import Path

from agent.publish import upload
from agent.sms.emulator import Emulator
from agent.sms.outbox import Outbox

from .sms_helpers import make_config, results


def queued(state: Path) -> list[str]:
    with Outbox(state) as box:
        return sorted(p.entry.dir_check for p in box.pending())


def test_no_upload_sends_and_queues_nothing(tmp_path: Path, emu: Emulator) -> None:
    note, report = upload(make_config(tmp_path / "state", emu.url), results(2), no_upload=True)
    assert report is None and emu.received == []
    assert note == {"uploaded": False, "delivered": 0, "pending": 0, "dead": 0,
                    "message": "Nothing uploaded (--no-upload)."}  # fmt: skip


def test_without_an_endpoint_the_results_are_kept_for_status(tmp_path: Path) -> None:
    state = tmp_path / "state"
    note, report = upload(make_config(state, None), results(2), no_upload=False)
    assert report is None
    assert note["message"] == "Nothing uploaded: no SMS endpoint is configured."
    assert queued(state) == []  # nowhere to send them
    with Outbox(state) as box:
        assert [(r.dir_check, r.state) for r in box.last_results()] == [
            ("/d000", "not-uploaded"), ("/d001", "not-uploaded")]  # fmt: skip


def test_results_are_delivered_once(tmp_path: Path, emu: Emulator) -> None:
    state = tmp_path / "state"
    note, report = upload(make_config(state, emu.url), results(3), no_upload=False)
    assert report is not None and report.delivered == 3
    assert (note["uploaded"], note["delivered"], note["pending"]) == (True, 3, 0)
    assert note["message"].startswith("Uploaded 3 result(s) to SMS task T")
    assert sorted(e["dir_check"] for batch in emu.received for e in batch) == [
        "/d000", "/d001", "/d002"]  # fmt: skip
    assert queued(state) == []


def test_a_failed_delivery_leaves_the_results_queued(tmp_path: Path, emu: Emulator) -> None:
    emu.fail_next(10, status=503)
    state = tmp_path / "state"
    note, _ = upload(make_config(state, emu.url), results(2), no_upload=False)
    assert not note["uploaded"] and note["pending"] == 2
    assert queued(state) == ["/d000", "/d001"]


def test_a_state_directory_that_cannot_be_written_is_said_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    note, report = upload(make_config(blocker / "state", "http://127.0.0.1:9"), results(2), False)
    assert report is None and note["pending"] == 2
    assert note["message"].startswith("Nothing uploaded: the results could not be queued:")
