"""What the commands show, as data: the verify table, the JSON document, delivery messages."""

from __future__ import annotations

import pytest

from agent.model import ENTRY_FIELDS, MAX_COUNT, DirCounts, DirResult
from agent.output import (
    clamp_warnings,
    flush_message,
    human_bytes,
    json_text,
    table,
    verify_document,
    verify_table,
)
from agent.sms.delivery import FlushReport

SAME = DirResult("/srv", "/mnt/t/srv", DirCounts(total=3, identical=3, bytes_hashed=1500), 1.25)
DIFF = DirResult("/var", "/mnt/t/var", DirCounts(total=4, identical=2, different=1, missing=1,
                                                  more=2), 0.5)  # fmt: skip
FAILED = DirResult("/opt", "ssh://h/opt", DirCounts(), 0.1, hash_algorithm="", error="no route")


@pytest.mark.parametrize(("n", "shown"), [
    (0, "0 B"), (999, "999 B"), (1000, "1.0 KB"), (1_500_000, "1.5 MB"), (10**13, "10.0 TB"),
    (10**16, "10000.0 TB")])  # fmt: skip
def test_human_bytes(n: int, shown: str) -> None:
    assert human_bytes(n) == shown


def test_table_aligns_names_left_and_numbers_right() -> None:
    assert table(("NAME", "N"), [("a", "1"), ("bbb", "100")], left={0}) == [
        "NAME    N", "a       1", "bbb   100"]  # fmt: skip


def test_verify_table_rows_and_verdict() -> None:
    lines = verify_table([SAME, DIFF, FAILED], 2.0)
    assert lines[1].split() == ["/srv", "3", "0", "0", "0", "0", "1.5", "KB", "1.2s"]
    assert lines[2].split()[:6] == ["/var", "4", "1", "1", "2", "0"]
    assert lines[3].split()[:2] == ["/opt", "-"]
    assert "/opt: NOT VERIFIED: no route" in lines
    assert lines[-1] == "some directories could not be verified; 1.5 KB hashed in 2.0s"
    assert verify_table([SAME], 1.0)[-1].startswith("consistent;")
    assert verify_table([SAME, DIFF], 1.0)[-1].startswith("differences found;")


def test_the_json_document_posts_only_what_was_verified() -> None:
    document = verify_document([SAME, FAILED], {"queued": 1}, 1.0)
    assert document["consistency_result"] == [SAME.entry().to_api()]
    assert tuple(document["consistency_result"][0]) == ENTRY_FIELDS
    assert [d["dir_check"] for d in document["directories"]] == ["/srv", "/opt"]
    assert document["consistent"] is False  # a directory not verified is never "consistent"
    assert document["directories"][1]["error"] == "no route"


@pytest.mark.parametrize(("report", "words"), [
    (FlushReport(), ["Nothing to deliver."]),
    (FlushReport(delivered=3, requests=1), ["Uploaded 3 result(s) to SMS task T in 1 request(s)."]),
    (FlushReport(dead=1), ["1 result(s) rejected for good", "dead letters"]),
    (FlushReport(requests=1, pending=2, errors=("SMS answered 503",)),
     ["2 result(s) queued but not delivered: SMS answered 503."]),
])  # fmt: skip
def test_flush_message(report: FlushReport, words: list[str]) -> None:
    text = flush_message(report, "T")
    assert all(w in text for w in words), text


def test_a_count_above_the_limit_is_warned_about_with_the_true_figure_kept() -> None:
    big = DirResult("/big", "/t/big", DirCounts(total=MAX_COUNT + 5, identical=MAX_COUNT + 5), 1.0)
    small = DirResult("/small", "/t/small", DirCounts(total=3, identical=3), 1.0)
    assert clamp_warnings([small, big]) == [
        f"/big: num_total_files is above {MAX_COUNT:,}; {MAX_COUNT:,} is sent, "
        "the true figure is in the local report"
    ]


def test_json_text_is_always_valid_utf8() -> None:
    assert json_text({"name": "caf\u00e9"}) == '{"name": "caf\u00e9"}'
    lone = json_text({"name": "a\udcff"})  # a surrogate no UTF-8 encoder takes
    assert lone == '{"name": "a\\udcff"}'
    lone.encode("utf-8")
