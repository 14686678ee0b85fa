"""The report's lines (one escaping rule, one by one or in bulk) and the result sink's counts."""

from __future__ import annotations

import io

import pytest

from agent.model import Verdict
from agent.verify.report import MAX_ERROR_SAMPLES, ReportWriter, ResultSink, escape

from .conftest import ReportLines


@pytest.mark.parametrize(
    ("name", "shown"),
    [
        (b"plain.txt", "plain.txt"),
        (b"caf\xc3\xa9", "café"),  # valid UTF-8 stays readable
        (b"caf\xe9", "caf\\xe9"),  # a byte that is not UTF-8
        (b"new\nline", "new\\nline"),
        (b"tab\there", "tab\\there"),
        (b"back\\slash", "back\\\\slash"),
        (b"\xc2\x85", "\\u0085"),  # a control character that is valid UTF-8
    ],
)
def test_escape(name: bytes, shown: str) -> None:
    assert escape(name) == shown


@pytest.mark.parametrize(
    ("dir_check", "folder", "names"),
    [
        ("/srv", b"", [b"a", b"b.txt"]),
        ("/srv/", b"sub/deeper", [b"x"]),
        ("/", b"etc", [b"passwd", b"group"]),
        ("/", b"", [b"top"]),
        ("/srv", b"caf\xe9", [b"plain", b"new\nline", b"back\\slash", b"\xff"]),
        ("/srv", b"d", [b"caf\xc3\xa9", b"ok"]),
    ],
)
def test_bulk_lines_match_single_lines(dir_check: str, folder: bytes, names: list[bytes]) -> None:
    one_by_one, bulk = io.StringIO(), io.StringIO()
    single = ReportWriter(one_by_one)
    for name in names:
        single(dir_check, Verdict.IDENTICAL, (folder + b"/" if folder else b"") + name, None)
    many = ReportWriter(bulk)
    many.many(dir_check, Verdict.IDENTICAL, folder, "/".join(n.decode("latin-1") for n in names))
    assert bulk.getvalue() == one_by_one.getvalue()
    assert bulk.getvalue().count("\n") == len(names)
    assert all(line.startswith("= /") and "//" not in line for line in bulk.getvalue().splitlines())


def test_the_result_sink_counts_reports_and_keeps_the_first_reasons() -> None:
    lines = ReportLines()
    told: list[tuple[str, int, int]] = []
    sink = ResultSink("/srv", lines, lambda *progress: told.append(progress))
    assert sink.identical(b"d", "a/b/c") == 3 and sink.identical(b"d", "") == 0
    sink.verdict(Verdict.MORE, b"x", None)
    sink.verdict(Verdict.MORE, b"y", "target: Permission denied")  # an extra not examined
    for i in range(MAX_ERROR_SAMPLES + 5):
        sink.verdict(Verdict.ERROR, f"e{i}".encode(), "source: vanished")
    sink.verdict(Verdict.MISSING, b"m", None)
    sink.read(2, 300, hits=4)
    sink.settled(7)
    sink.tell_progress()
    c = sink.tally.freeze()
    assert (c.total, c.identical, c.different, c.missing, c.more, c.errors) == (
        3 + MAX_ERROR_SAMPLES + 5 + 1,
        3,
        MAX_ERROR_SAMPLES + 5,
        1,
        2,
        MAX_ERROR_SAMPLES + 6,
    )
    assert (c.files_hashed, c.bytes_hashed, c.cache_hits) == (2, 300, 4)
    assert len(sink.tally.samples) == MAX_ERROR_SAMPLES
    assert sink.tally.samples[0] == "y: target: Permission denied"
    assert told == [("/srv", 7, 300)]
    assert lines[:3] == [(Verdict.IDENTICAL, b"d/a", None), (Verdict.IDENTICAL, b"d/b", None),
                         (Verdict.IDENTICAL, b"d/c", None)]  # fmt: skip
    assert len(lines) == 3 + 2 + MAX_ERROR_SAMPLES + 5 + 1 and lines.dir_checks == {"/srv"}
