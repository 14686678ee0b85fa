"""One directory in flight: scans in, verdicts, subdirectories and digest requests out."""

from __future__ import annotations

import json

from agent.model import Verdict
from agent.verify.compare import Side
from agent.verify.excludes import ExcludeRules
from agent.verify.folder import Folder
from agent.verify.report import ResultSink
from agent.verify.wire import Digests, DirScan, ScanFailure

from .conftest import ReportLines

NO_RULES = ExcludeRules([])


def scan(entries: list[list], *, complete: bool = True) -> DirScan:
    files = "/".join(e[0] for e in entries if e[1] in ("f", "l"))
    subdirs = [e[0] for e in entries if e[1] == "d"]
    listing = json.dumps(entries).encode()
    return DirScan(complete, 1, 0, 0, 0, files, subdirs, 0, False, listing, b"")


def sink() -> tuple[ResultSink, ReportLines]:
    lines = ReportLines()
    return ResultSink("/srv", lines, None), lines


def test_equal_complete_scans_settle_from_the_summary() -> None:
    folder = Folder(b"top", True, True)
    same = scan([["a", "f", 1, "x" * 32], ["sub", "d", 0, None]])
    folder.scans = {Side.SOURCE: same, Side.TARGET: same._replace(listing=same.listing)}
    out, lines = sink()
    children = folder.merge(NO_RULES, out)
    assert [(c.rel, c.on_src, c.on_tgt) for c in children] == [(b"top/sub", True, True)]
    assert lines == [(Verdict.IDENTICAL, b"top/a", None)]
    assert (out.tally.total, out.files_done, folder.pairs) == (1, 1, [])


def test_pairs_wait_for_digests_then_are_judged() -> None:
    folder = Folder(b"d", True, True)
    unread = [["big", "f", 9, None, 5], ["bad", "f", 9, None, 5], ["gone", "f", 9, None, 5]]
    folder.scans = {Side.SOURCE: scan(sorted(unread), complete=False),
                    Side.TARGET: scan(sorted(unread), complete=False)}  # fmt: skip
    out, lines = sink()
    assert folder.merge(NO_RULES, out) == [] and lines == []
    assert [s.name for s, _ in folder.pairs] == ["bad", "big", "gone"]
    assert folder.unread(Side.SOURCE) == folder.unread(Side.TARGET) == [0, 1, 2]
    folder.record(Side.SOURCE, [0, 1], Digests(["1" * 32, "2" * 32], {}, [], 18))
    folder.record(Side.SOURCE, [2], "vanished before it was read")
    folder.record(Side.TARGET, [0, 1, 2], Digests(["0" * 32, "2" * 32, None], {2: "x"}, [], 18))
    folder.judge(out)
    assert {rel: (verdict, reason) for verdict, rel, reason in lines} == {
        b"d/bad": (Verdict.DIFFERENT, None),
        b"d/big": (Verdict.IDENTICAL, None),
        b"d/gone": (Verdict.ERROR, "source: vanished before it was read"),
    }
    assert len(lines) == 3
    c = out.tally.freeze()
    assert (c.total, c.identical, c.different, c.errors) == (3, 1, 2, 1)
    assert folder.pairs == [] and out.files_done == 3


def test_an_unlisted_source_is_an_error_and_an_unlisted_target_is_inherited() -> None:
    out, lines = sink()
    unlisted = Folder(b"x", True, True)
    unlisted.unlisted(Side.SOURCE, ScanFailure("Permission denied"), out)
    assert lines == [(Verdict.ERROR, b"x", "source: cannot list: Permission denied")]
    # Its error entry stands for everything under it: the target's side is not counted.
    unlisted.scans = {Side.TARGET: scan([["f", "f", 1, "a" * 32], ["sub", "d", 0, None]])}
    assert unlisted.merge(NO_RULES, out) == [] and len(lines) == 1
    folder = Folder(b"y", True, True)
    folder.unlisted(Side.TARGET, ScanFailure("No such file or directory", gone=True), out)
    folder.scans = {Side.SOURCE: scan([["f", "f", 1, "a" * 32], ["sub", "d", 0, None]])}
    children = folder.merge(NO_RULES, out)
    assert lines[1:] == [(Verdict.MORE, b"y", "target: vanished before it was listed"),
                         (Verdict.ERROR, b"y/f", "target: vanished before it was listed")]  # fmt: skip
    assert [c.target_unreadable for c in children] == ["vanished before it was listed"]
    assert not children[0].target_unlisted  # the entry more was counted here, once


def test_excluded_entries_are_dropped_on_both_sides() -> None:
    folder = Folder(b"", True, True)
    folder.scans = {Side.SOURCE: scan([["a.tmp", "f", 1, "a" * 32], ["keep", "f", 1, "b" * 32]]),
                    Side.TARGET: scan([["b.tmp", "f", 1, "c" * 32], ["keep", "f", 1, "b" * 32]])}  # fmt: skip
    out, lines = sink()
    folder.merge(ExcludeRules(["*.tmp"]), out)
    assert lines == [(Verdict.IDENTICAL, b"keep", None)]


def test_a_stream_of_a_directory_whose_source_cannot_be_listed_is_not_followed() -> None:
    folder = Folder(b"d", True, True)
    out, lines = sink()
    folder.unlisted(Side.SOURCE, ScanFailure("Permission denied", gone=False), out)
    folder.scans = {Side.TARGET: scan([["a", "f", 1, "x" * 32]])._replace(stream=7)}
    assert folder.merge(NO_RULES, out) == []
    assert folder.wanted() == []  # nothing more of it is asked for
    assert folder.streams == {}  # the engine drops it in its helper instead
    assert lines == [(Verdict.ERROR, b"d", "source: cannot list: Permission denied")]
