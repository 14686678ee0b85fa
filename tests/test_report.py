"""The report's lines: one escaping rule, whether lines are written one by one or in bulk."""

from __future__ import annotations

import io

import pytest

from agent.model import Verdict
from agent.verify.report import ReportWriter, escape


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
