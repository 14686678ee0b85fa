"""The helper's answers decoded into typed values, from frames as the helper writes them."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from agent.verify import helper
from agent.verify.channel import Channel
from agent.verify.compare import Entry, Kind
from agent.verify.wire import (
    DirScan,
    Reply,
    ScanFailure,
    digests_of,
    entries_of,
    same_files,
    scans_of,
)

NOBODY = cast(Channel, None)  # decoding never touches the channel


def reply(*message: Any) -> Reply:
    """A Reply from the frame the helper would send for `message`."""
    frame = helper.encode_frame(list(message))
    return Reply(NOBODY, helper.decode_payload(frame[helper.FRAME_HEADER.size :]))


def test_a_reply_is_read_by_name() -> None:
    ok = reply("ok", 7, {"algorithm": "xxh3-128"})
    assert (ok.ident, ok.error, ok.values) == (7, None, [{"algorithm": "xxh3-128"}])
    failed = reply("err", 8, "No such file or directory")
    assert (failed.ident, failed.error, failed.values) == (8, "No such file or directory", [])
    died = Reply(NOBODY, None)
    assert died.ident is None and died.error is None


SUMMARY = {"complete": False, "dev": 42, "read": 2, "bytes": 300, "hits": 1, "files": "a/b",
           "subdirs": ["d"], "specials": 1, "new_row": True}  # fmt: skip


def test_a_scan_batch_decodes_per_directory() -> None:
    failures = [
        {"error": "Permission denied"},
        {"error": "No such file or directory", "gone": True},
    ]
    answer = reply("ok", 1, [SUMMARY, *failures], b"[]", b"ROW", b"", b"", b"", b"")
    scan, failed, gone = scans_of(answer, 3)
    assert scan == DirScan(complete=False, dev=42, files_read=2, bytes_read=300, cache_hits=1,
                           files="a/b", subdirs=["d"], specials=1, new_row=True, listing=b"[]",
                           row=b"ROW")  # fmt: skip
    assert failed == ScanFailure("Permission denied", gone=False)
    assert gone == ScanFailure("No such file or directory", gone=True)


def test_a_failed_scan_request_fails_each_of_its_directories() -> None:
    assert scans_of(reply("err", 1, "unknown request"), 3) == [ScanFailure("unknown request")] * 3


def test_hash_errors_are_keyed_by_position() -> None:
    answer = digests_of(reply("ok", 1, [None, "ab"], {"0": "vanished"}, [], 2))
    assert answer.digests == [None, "ab"] and answer.errors == {0: "vanished"}
    assert answer.stats == [] and answer.bytes_read == 2


@pytest.mark.parametrize(
    ("raw", "entry"),
    [
        (["f", "f", 3, "ab"], Entry("f", Kind.FILE, 3, "ab", 0)),
        (["big", "f", 9, None, 123], Entry("big", Kind.FILE, 9, None, 123)),
        (["l", "l", 0, "to"], Entry("l", Kind.LINK, 0, "to")),
        (["d", "d", 0, None], Entry("d", Kind.DIR, 0, None)),
        (["s", "s", 0, None], Entry("s", Kind.SPECIAL, 0, None)),
        (["p", "p", 0, None], Entry("p", Kind.NOT_ENTERED, 0, None)),
        (["e", "e", 0, "why"], Entry("e", Kind.UNREADABLE, 0, "why")),
        (["g", "gone", 0, None], Entry("g", Kind.GONE, 0, None)),
        (["\xff\n", "f", 0, ""], Entry("\xff\n", Kind.FILE, 0, "")),
    ],
)
def test_entries_are_typed(raw: list, entry: Entry) -> None:
    [decoded] = entries_of(json.dumps([raw]).encode("ascii"))
    assert decoded == entry and type(decoded) is Entry
    assert decoded.kind is entry.kind


def test_equal_runs_of_files_settle_without_typing_each_entry() -> None:
    files = [["a", "f", 0, ""], ["b\xff", "f", 3, "ab" * 16], ["c", "l", 0, "to"]]
    assert same_files(files, [list(e) for e in files], False) == "a/b\xff/c"
    assert same_files(files, files[:2], False) is None  # not equal
    changed = files[:2] + [["c", "l", 0, "elsewhere"]]
    assert same_files(files, changed, False) is None
    unread = files + [["d", "f", 9, None, 123]]
    assert same_files(unread, unread, False) is None  # still to be read
    assert same_files(unread, unread, True) == "a/b\xff/c/d"  # quick: size and mtime equal
    for odd in (["d", "d", 0, None], ["e", "e", 0, "why"], ["s", "s", 0, None]):
        assert same_files(files + [odd], files + [odd], True) is None  # decided one by one
