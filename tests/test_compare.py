"""The counting rules, one table row per case: two listings in, verdicts and counts out."""

from __future__ import annotations

import pytest

from agent.model import Verdict
from agent.verify.compare import Entry, Kind, judge_digests, merge, quick_merge
from agent.verify.report import Tally

D1, D2 = "a" * 32, "b" * 32  # two digests


def f(name: str, size: int = 5, digest: str | None = D1, mtime: int = 0) -> Entry:
    return Entry(name, Kind.FILE, size, digest, mtime)


def link(name: str, to: str) -> Entry:
    return Entry(name, Kind.LINK, 0, to)


def other(name: str, kind: Kind, value: str | None = None) -> Entry:
    return Entry(name, kind, 0, value)


def d(name: str) -> Entry:
    return other(name, Kind.DIR)


SAME, DIFF, MISS, MORE, ERR = (Verdict.IDENTICAL, Verdict.DIFFERENT, Verdict.MISSING,
                               Verdict.MORE, Verdict.ERROR)  # fmt: skip

# (source, target, verdicts by name (with reasons), subdirs, names left to hash, specials)
CASES = {
    "same digest": ([f("a")], [f("a")], {"a": (SAME, None)}, [], [], 0),
    "other digest": ([f("a")], [f("a", digest=D2)], {"a": (DIFF, None)}, [], [], 0),
    "other size": ([f("a", 5)], [f("a", 6, D1)], {"a": (DIFF, None)}, [], [], 0),
    "empty files": ([f("a", 0, "")], [f("a", 0, "")], {"a": (SAME, None)}, [], [], 0),
    "not read yet": ([f("a", 9, None, 7)], [f("a", 9, D1)], {}, [], ["a"], 0),
    "other size unread": ([f("a", 9, None, 7)], [f("a", 8, None, 7)], {"a": (DIFF, None)}, [], [], 0),
    "only at source": ([f("a")], [], {"a": (MISS, None)}, [], [], 0),
    "only at target": ([], [f("a")], {"a": (MORE, None)}, [], [], 0),
    "link only at source": ([link("l", "x")], [], {"l": (MISS, None)}, [], [], 0),
    "same link": ([link("l", "x")], [link("l", "x")], {"l": (SAME, None)}, [], [], 0),
    "other link": ([link("l", "x")], [link("l", "y")], {"l": (DIFF, None)}, [], [], 0),
    "file vs link": ([f("a")], [link("a", "x")], {"a": (DIFF, None)}, [], [], 0),
    "file vs dir": ([f("a")], [d("a")], {"a": (DIFF, None)}, [("a", False, True)], [], 0),
    "dir vs file": ([d("a")], [f("a")], {"a": (MORE, None)}, [("a", True, False)], [], 0),
    "dir vs dir": ([d("a")], [d("a")], {}, [("a", True, True)], [], 0),
    "dir only at source": ([d("a")], [], {}, [("a", True, False)], [], 0),
    "dir only at target": ([], [d("a")], {}, [("a", False, True)], [], 0),
    "special at source": ([other("s", Kind.SPECIAL)], [], {}, [], [], 1),
    "special vs special": ([other("s", Kind.SPECIAL)], [other("s", Kind.SPECIAL)], {}, [], [], 1),
    "special vs file": ([other("s", Kind.SPECIAL)], [f("s")], {"s": (MORE, None)}, [], [], 1),
    "special vs dir": ([other("s", Kind.SPECIAL)], [d("s")], {}, [("s", False, True)], [], 1),
    "special only at target": ([], [other("s", Kind.SPECIAL)], {}, [], [], 0),
    "unreadable at source": ([other("e", Kind.UNREADABLE, "why")], [f("e")],
                             {"e": (ERR, "source: why")}, [], [], 0),
    "unreadable only at source": ([other("e", Kind.UNREADABLE, "why")], [],
                                  {"e": (ERR, "source: why")}, [], [], 0),
    "unreadable at target": ([f("e")], [other("e", Kind.UNREADABLE, "why")],
                             {"e": (ERR, "target: why")}, [], [], 0),
    "unreadable only at target": ([], [other("e", Kind.UNREADABLE, "why")],
                                  {"e": (MORE, "target: why")}, [], [], 0),
    "dir vs unreadable": ([d("e")], [other("e", Kind.UNREADABLE, "why")],
                          {"e": (MORE, "target: why")}, [("e", True, False)], [], 0),
    # One entry for whatever is there: the target's directory is not entered and counted.
    "unreadable vs dir": ([other("e", Kind.UNREADABLE, "why")], [d("e")],
                          {"e": (ERR, "source: why")}, [], [], 0),
    "gone at source": ([other("g", Kind.GONE)], [f("g")], {"g": (MORE, None)}, [], [], 0),
    "gone at target": ([f("g")], [other("g", Kind.GONE)], {"g": (MISS, None)}, [], [], 0),
    "gone on both": ([other("g", Kind.GONE)], [other("g", Kind.GONE)], {}, [], [], 0),
    "not entered": ([other("p", Kind.NOT_ENTERED)], [f("p")], {}, [], [], 0),
    "not entered at target": ([d("p")], [other("p", Kind.NOT_ENTERED)], {}, [], [], 0),
    "interleaved names": ([f("a"), f("c"), f("e")], [f("b"), f("c", digest=D2), f("d")],
                          {"a": (MISS, None), "b": (MORE, None), "c": (DIFF, None),
                           "d": (MORE, None), "e": (MISS, None)}, [], [], 0),
    "byte order": ([f("Z"), f("a"), f("\xe9")], [f("Z"), f("a"), f("\xe9")],
                   {"Z": (SAME, None), "a": (SAME, None), "\xe9": (SAME, None)}, [], [], 0),
}  # fmt: skip


@pytest.mark.parametrize(
    ("src", "tgt", "verdicts", "subdirs", "to_hash", "specials"),
    list(CASES.values()),
    ids=list(CASES),
)
def test_merge(src, tgt, verdicts, subdirs, to_hash, specials) -> None:
    merged = merge(src, tgt)
    found = {name: (Verdict.IDENTICAL, None) for name in merged.identical}
    found.update({name: (verdict, reason) for verdict, name, reason in merged.verdicts})
    assert len(found) == len(merged.identical) + len(merged.verdicts)  # one verdict a name
    assert found == verdicts
    assert merged.subdirs == subdirs
    assert [s.name for s, _ in merged.to_hash] == to_hash
    assert all(s.name == t.name for s, t in merged.to_hash)
    assert merged.specials == specials


# (source, target) -> counts as SMS gets them, and errors
COUNTS = {
    # "e" still has to be read: it is counted once its digests are in, not here.
    "one of each": ([f("diff"), f("e", digest=None, mtime=1), f("miss"), f("same")],
                    [f("diff", digest=D2), f("e", digest=D2), f("more"), f("same")],
                    {"total": 3, "identical": 1, "different": 1, "missing": 1, "more": 1,
                     "errors": 0}),
    "errors count as different": ([other("x", Kind.UNREADABLE, "why"), f("y")],
                                  [f("x"), other("y", Kind.UNREADABLE, "why")],
                                  {"total": 2, "identical": 0, "different": 2, "missing": 0,
                                   "more": 0, "errors": 2}),
    "an unexaminable extra is more and an error": ([], [other("x", Kind.UNREADABLE, "why")],
                                                   {"total": 0, "identical": 0, "different": 0,
                                                    "missing": 0, "more": 1, "errors": 1}),
    "directories and specials are not counted": ([d("d"), other("s", Kind.SPECIAL)], [d("d")],
                                                 {"total": 0, "identical": 0, "different": 0,
                                                  "missing": 0, "more": 0, "errors": 0}),
}  # fmt: skip


@pytest.mark.parametrize(("src", "tgt", "counts"), list(COUNTS.values()), ids=list(COUNTS))
def test_counts(src, tgt, counts) -> None:
    tally = Tally()
    merged = merge(src, tgt)
    for _ in merged.identical:
        tally.add(Verdict.IDENTICAL)
    for verdict, _, reason in merged.verdicts:
        tally.add(verdict, reason)
    got = {key: getattr(tally, key) for key in counts}
    assert got == counts
    assert tally.total == tally.identical + tally.different + tally.missing


def test_a_source_directory_the_target_cannot_examine_is_walked_blind() -> None:
    merged = merge([d("a"), d("b")], [other("a", Kind.UNREADABLE, "Permission denied"), d("b")])
    assert merged.blind == {"a": "Permission denied"}
    assert merged.subdirs == [("a", True, False), ("b", True, True)]
    assert merged.verdicts == [(Verdict.MORE, "a", "target: Permission denied")]


def test_an_unlistable_target_makes_source_files_errors_not_missing() -> None:
    merged = merge([f("a"), link("l", "x"), d("sub")], [], target_unreadable="cannot list: EIO")
    assert merged.verdicts == [
        (Verdict.ERROR, "a", "target: cannot list: EIO"),
        (Verdict.ERROR, "l", "target: cannot list: EIO"),
    ]
    assert merged.subdirs == [("sub", True, False)]


@pytest.mark.parametrize(
    ("src", "tgt", "verdict"),
    [
        ((D1, None), (D1, None), (Verdict.IDENTICAL, None)),
        ((D1, None), (D2, None), (Verdict.DIFFERENT, None)),
        ((None, "gone"), (D1, None), (Verdict.ERROR, "source: gone")),
        ((D1, None), (None, "changed"), (Verdict.ERROR, "target: changed")),
        ((None, "a"), (None, "b"), (Verdict.ERROR, "source: a")),
    ],
)
def test_judge_digests(src, tgt, verdict) -> None:
    assert judge_digests(*src, *tgt) == verdict


S = 1_000_000_000  # a second in nanoseconds


# Quick mode: (source, target, window in seconds, verdict of "a"); digests never matter.
QUICK = {
    "same second": ([f("a", 9, None, 5 * S)], [f("a", 9, None, 5 * S + S // 2)], 0, SAME),
    "next second": ([f("a", 9, None, 5 * S)], [f("a", 9, None, 6 * S)], 0, DIFF),
    "within the window": ([f("a", 9, None, 5 * S)], [f("a", 9, None, 7 * S)], 2, SAME),
    "outside the window": ([f("a", 9, None, 5 * S)], [f("a", 9, None, 8 * S)], 2, DIFF),
    "other size, same time": ([f("a", 9, None, 5 * S)], [f("a", 8, None, 5 * S)], 9, DIFF),
    "empty, same time": ([f("a", 0, "", 5 * S)], [f("a", 0, "", 5 * S)], 0, SAME),
    "empty, other time": ([f("a", 0, "", 5 * S)], [f("a", 0, "", 9 * S)], 0, DIFF),
    "before 1970": ([f("a", 9, None, -S - 1)], [f("a", 9, None, -S - 1)], 0, SAME),
    "links compare their text": ([link("a", "x")], [link("a", "y")], 9, DIFF),
    "file against link": ([f("a", 1, None, 0)], [link("a", "x")], 9, DIFF),
}


@pytest.mark.parametrize(("src", "tgt", "window", "verdict"), QUICK.values(), ids=list(QUICK))
def test_quick_merge(src: list[Entry], tgt: list[Entry], window: int, verdict: Verdict) -> None:
    merged = quick_merge(src, tgt, window)
    assert merged.to_hash == []  # nothing is ever left to read
    got = SAME if "a" in merged.identical else next(v for v, n, _ in merged.verdicts if n == "a")
    assert got is verdict
    assert len(merged.identical) + len(merged.verdicts) == 1


def test_quick_merge_keeps_every_other_rule() -> None:
    src = [f("empty", 0, "", S), f("gone", 3, None, S), d("sub"), f("z", 4, None, S)]
    tgt = [f("empty", 0, "", 2 * S), f("new", 3, None, S), d("sub"), f("z", 4, None, S)]
    merged = quick_merge(src, tgt, 0)
    assert merged.identical == ["z"] and merged.subdirs == [("sub", True, True)]
    assert sorted((n, v) for v, n, _ in merged.verdicts) == [
        ("empty", DIFF), ("gone", MISS), ("new", MORE)]  # fmt: skip
