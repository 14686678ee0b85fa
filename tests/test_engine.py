"""The engine on real trees: every counting rule, checked against what is on disk."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.config import parse_config
from agent.model import DirResult, Verdict
from agent.verify import helper
from agent.verify.excludes import ExcludeRules
from agent.verify.runner import run_verification

from .conftest import ReportLines, empty_files, write_tree
from .reference import expected_counts


def verify(src: Path, tgt: Path, state: Path, **options) -> tuple[DirResult, list[tuple]]:
    raw = {"directories": [{"path": str(src), "target": str(tgt)}], "state_dir": str(state)}
    raw.update(options.pop("config", {}))
    config = parse_config(raw)
    lines = ReportLines()
    results = run_verification(config, config.directories, report=lines, **options)
    assert len(results) == 1
    return results[0], lines


def counts(result: DirResult) -> dict[str, int]:
    c = result.counts
    return {"total": c.total, "identical": c.identical, "different": c.different,
            "missing": c.missing, "more": c.more}  # fmt: skip


def check_invariant(result: DirResult) -> None:
    c = result.counts
    assert c.total == c.identical + c.different + c.missing


def test_identical_trees_are_consistent(tmp_path: Path) -> None:
    spec = {"a": "one", "d/b": "two", "d/e/c": b"\x00" * 5000, "l": ("link", "a")}
    write_tree(tmp_path / "src", spec)
    write_tree(tmp_path / "tgt", spec)
    result, lines = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert result.error is None
    assert counts(result) == {"total": 4, "identical": 4, "different": 0, "missing": 0, "more": 0}
    assert result.counts.consistent
    assert {v for v, _, _ in lines} == {Verdict.IDENTICAL}


def test_each_verdict(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {
        "same": "x", "changed": "abc", "resized": "abc", "only-src": "s",
        "link-same": ("link", "t"), "link-changed": ("link", "t1"),
        "file-vs-link": "f", "file-vs-dir": "f", "dir-vs-file/inner": "i",
    })  # fmt: skip
    write_tree(tmp_path / "tgt", {
        "same": "x", "changed": "abd", "resized": "abcd", "only-tgt": "t",
        "link-same": ("link", "t"), "link-changed": ("link", "t2"),
        "file-vs-link": ("link", "f"), "file-vs-dir/x": "x", "dir-vs-file": "i",
    })  # fmt: skip
    result, lines = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    marks = {rel: verdict for verdict, rel, _ in lines}
    assert marks == {
        b"same": Verdict.IDENTICAL,
        b"link-same": Verdict.IDENTICAL,
        b"changed": Verdict.DIFFERENT,
        b"resized": Verdict.DIFFERENT,
        b"link-changed": Verdict.DIFFERENT,
        b"file-vs-link": Verdict.DIFFERENT,
        b"file-vs-dir": Verdict.DIFFERENT,
        b"file-vs-dir/x": Verdict.MORE,  # under a directory the source does not have
        b"only-src": Verdict.MISSING,
        b"dir-vs-file/inner": Verdict.MISSING,  # the target's parent is not a directory
        b"dir-vs-file": Verdict.MORE,  # no file at this path on the source
        b"only-tgt": Verdict.MORE,
    }
    check_invariant(result)
    assert counts(result) == expected_counts(
        os.fsencode(tmp_path / "src"), os.fsencode(tmp_path / "tgt")
    )


def test_size_difference_decides_without_reading_large_files(tmp_path: Path) -> None:
    big = helper.SMALL_FILE + 1  # above this, a file is read only when its pair needs it
    write_tree(tmp_path / "src", {"a": "x" * big, "b": "y" * big, "c": "small"})
    write_tree(tmp_path / "tgt", {"a": "x" * (big + 1), "b": "y" * big, "c": "small"})
    result, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state", use_cache=False)
    assert result.counts.different == 1 and result.counts.identical == 2
    # "b" once per side, and "c", which the scan reads on the spot, once per side.
    assert result.counts.files_hashed == 4
    assert result.counts.bytes_hashed == 2 * big + 10


def test_files_without_counterpart_directory_are_never_read(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"only-src/a": "aaaa", "both/b": "bb"})
    write_tree(tmp_path / "tgt", {"only-tgt/c": "cccccc", "both/b": "bb"})
    result, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state", use_cache=False)
    assert counts(result) == {"total": 2, "identical": 1, "different": 0, "missing": 1, "more": 1}
    assert result.counts.files_hashed == 2 and result.counts.bytes_hashed == 4


def test_non_utf8_newline_and_space_names(tmp_path: Path) -> None:
    names = [b"caf\xe9", b"new\nline", b"with space", b"\xff\xfe/inner", "日本".encode()]
    write_tree(tmp_path / "src", {n: n for n in names})
    write_tree(tmp_path / "tgt", {**{n: n for n in names[:3]}, b"caf\xe9": b"other!"[:5]})
    result, lines = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    marks = {rel: verdict for verdict, rel, _ in lines}
    assert marks[b"new\nline"] is Verdict.IDENTICAL
    assert marks[b"with space"] is Verdict.IDENTICAL
    assert marks[b"caf\xe9"] is Verdict.DIFFERENT
    assert marks[b"\xff\xfe/inner"] is Verdict.MISSING
    assert marks["日本".encode()] is Verdict.MISSING
    check_invariant(result)


def test_empty_and_nested_missing_directories(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"empty": ("dir",), "deep/a/b/c/file": "f", "deep/a/x": "x"})
    write_tree(tmp_path / "tgt", {"extra/a/b/more": "m", "empty2": ("dir",)})
    result, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert counts(result) == {"total": 2, "identical": 0, "different": 0, "missing": 2, "more": 1}


def test_missing_target_root_counts_everything_missing(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"a": "1", "b/c": "2"})
    result, _ = verify(tmp_path / "src", tmp_path / "nowhere", tmp_path / "state")
    assert result.error is None
    assert counts(result) == {"total": 2, "identical": 0, "different": 0, "missing": 2, "more": 0}


def test_missing_source_is_an_error_not_a_result(tmp_path: Path) -> None:
    (tmp_path / "tgt").mkdir()
    result, _ = verify(tmp_path / "nosuch", tmp_path / "tgt", tmp_path / "state")
    assert result.error is not None and "does not exist" in result.error
    assert not result.uploadable


def test_special_files_are_skipped_and_counted_locally(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"fifo": ("fifo",), "a": "a"})
    write_tree(tmp_path / "tgt", {"a": "a", "fifo2": ("fifo",)})
    result, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert counts(result) == {"total": 1, "identical": 1, "different": 0, "missing": 0, "more": 0}
    assert result.counts.skipped_special == 1


def test_excludes_apply_to_both_sides(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"keep": "k", "log/a.log": "1", "x.tmp": "t", "sub/cache/z": "z"})
    write_tree(tmp_path / "tgt", {"keep": "k", "log/b.log": "2", "y.tmp": "t", "sub/cache/w": "w"})
    result, _ = verify(
        tmp_path / "src", tmp_path / "tgt", tmp_path / "state",
        config={"exclude": ["*.tmp", "cache/"],
                "directories": [{"path": str(tmp_path / "src"), "target": str(tmp_path / "tgt"),
                                 "exclude": ["/log"]}]},
    )  # fmt: skip
    assert counts(result) == {"total": 1, "identical": 1, "different": 0, "missing": 0, "more": 0}


def test_absolute_exclude_under_the_directory(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, {"keep": "k", "log/a.log": "1"})
    write_tree(tmp_path / "tgt", {"keep": "k"})
    result, _ = verify(src, tmp_path / "tgt", tmp_path / "state",
                       config={"exclude": [f"{src}/log"]})  # fmt: skip
    assert result.counts.consistent


def test_state_dir_inside_the_tree_is_never_compared(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"a": "a"})
    write_tree(tmp_path / "tgt", {"a": "a"})
    result, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "src" / "state")
    assert (tmp_path / "src" / "state").is_dir()  # the cache was written there
    assert result.counts.consistent


@pytest.fixture
def mount(tmp_path: Path):
    """Mount a filesystem for the test, or skip where this machine does not allow it."""
    mounted: list[Path] = []

    def do(fstype: str, where: Path) -> None:
        where.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", fstype, fstype, str(where)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount {fstype} here: {done.stderr.decode().strip()}")
        mounted.append(where)

    yield do
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_one_file_system_stays_on_the_starting_device(tmp_path: Path, mount) -> None:
    write_tree(tmp_path / "tgt", {"a": "a", "other/inside": "i"})
    write_tree(tmp_path / "src", {"a": "a"})
    mount("tmpfs", tmp_path / "src" / "other")
    (tmp_path / "src" / "other" / "elsewhere").write_text("e")
    crossing, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert counts(crossing) == {"total": 2, "identical": 1, "different": 0, "missing": 1,
                                "more": 1}  # fmt: skip
    staying, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state",
                        config={"one_file_system": True})  # fmt: skip
    assert counts(staying) == {"total": 1, "identical": 1, "different": 0, "missing": 0,
                               "more": 0}  # fmt: skip


def test_pseudo_filesystems_are_never_entered(tmp_path: Path, mount) -> None:
    write_tree(tmp_path / "src", {"a": "a"})
    write_tree(tmp_path / "tgt", {"a": "a"})
    mount("proc", tmp_path / "src" / "proc")
    result, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert counts(result) == {"total": 1, "identical": 1, "different": 0, "missing": 0, "more": 0}


def test_clamping_to_an_injected_limit(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {f"f{i}": str(i) for i in range(7)})
    (tmp_path / "tgt").mkdir()
    result, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    entry = result.entry(limit=5)
    assert entry.num_total_files == 5 and entry.num_target_miss_files == 5
    assert result.counts.total == 7  # the true figure stays in the local result
    assert result.clamped_fields(limit=5) == ["num_total_files", "num_target_miss_files"]


def test_cache_hits_and_touch_d_does_not_fool_it(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"a": "alpha", "b": "bravo"})
    write_tree(tmp_path / "tgt", {"a": "alpha", "b": "bravo"})
    old = 1_600_000_000
    for side in ("src", "tgt"):
        for name in ("a", "b"):
            os.utime(tmp_path / side / name, (old, old))
    # Only the ctime is recent now, and files changed this recently are not cached.
    first, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert first.counts.consistent and first.counts.cache_hits == 0
    import time

    time.sleep(2.2)  # let ctime age past the racy window
    second, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    third, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert second.counts.files_hashed == 4 and third.counts.cache_hits == 4
    assert third.counts.files_hashed == 0 and third.counts.consistent
    # Same size, same mtime, other content: only the ctime tells, and it must.
    with open(tmp_path / "tgt" / "b", "r+b") as handle:
        handle.write(b"BRAVO")
    os.utime(tmp_path / "tgt" / "b", (old, old))
    fourth, lines = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state")
    assert fourth.counts.different == 1
    assert (Verdict.DIFFERENT, b"b", None) in lines
    nocache, _ = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state", use_cache=False)
    assert nocache.counts.cache_hits == 0 and nocache.counts.different == 1


# --- the property: random trees against the brute-force reference ----------------------

NAMES = [b"a", b"b", b"\xff", b"n\nl", b"s p", "é".encode()]
CONTENTS = [b"", b"x", b"y", b"xy", b"yx", b"x" * 70_000]
ENTRY = st.one_of(
    st.sampled_from(CONTENTS).map(lambda c: ("f", c)),
    st.sampled_from([b"t1", b"t2"]).map(lambda t: ("l", t)),
    st.just(("d", None)),
)
PATH = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map(b"/".join)
TREE = st.dictionaries(PATH, ENTRY, max_size=12)


def materialise(root: bytes, tree: dict[bytes, tuple]) -> None:
    os.makedirs(root, exist_ok=True)
    for rel, (kind, value) in sorted(tree.items()):
        path = os.path.join(root, rel)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if kind == "f":
                with open(path, "wb") as handle:
                    handle.write(value)
            elif kind == "l":
                os.symlink(value, path)
            else:
                os.makedirs(path, exist_ok=True)
        except OSError:
            pass  # a file already stands where this path needs a directory: skip it


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(src_tree=TREE, tgt_tree=TREE, shared=st.booleans(), patterns=st.sampled_from(
    [[], ["b"], ["*.x", "/a/"], ["s p", "!b"]]))  # fmt: skip
def test_counts_match_brute_force(tmp_path_factory, src_tree, tgt_tree, shared, patterns) -> None:
    base = os.fsencode(tmp_path_factory.mktemp("prop"))
    src, tgt = base + b"/src", base + b"/tgt"
    materialise(src, src_tree)
    # Often start the target as a copy of the source so that identical files occur.
    materialise(tgt, {**src_tree, **tgt_tree} if shared else tgt_tree)
    result, _ = verify(Path(os.fsdecode(src)), Path(os.fsdecode(tgt)), Path(os.fsdecode(base + b"/state")),
                       config={"exclude": patterns})  # fmt: skip
    rules = ExcludeRules(patterns, base=os.fsdecode(src))
    assert result.error is None
    assert counts(result) == expected_counts(src, tgt, rules.excluded)
    check_invariant(result)


def test_empty_files_are_identical_without_reading(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"e1": "", "e2": "", "x": "x"})
    write_tree(tmp_path / "tgt", {"e1": "", "e2": "y", "x": "x"})
    result, lines = verify(tmp_path / "src", tmp_path / "tgt", tmp_path / "state", use_cache=False)
    assert counts(result) == {"total": 3, "identical": 2, "different": 1, "missing": 0, "more": 0}
    # "x" on each side, and the target's "y"; never an empty file.
    assert result.counts.files_hashed == 3 and result.counts.bytes_hashed == 3


def test_huge_directories_stream_from_the_helper_that_listed_them(tmp_path: Path) -> None:
    # A streamed listing lives in the helper that scanned the directory: with several
    # helpers a side and other directories keeping them busy, each next chunk must still be
    # asked of that helper (any other knows nothing of the stream).
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    for root in (src, tgt):
        for name in ("huge1", "huge2"):
            empty_files(root / name, helper.RUN_ENTRIES + 50, skip=4001 if root == tgt else 0)
        write_tree(root, {f"small{i}/f": str(i) for i in range(40)})
    result, _lines = verify(src, tgt, tmp_path / "state", config={"limits": {"workers": 3}})
    assert result.error is None
    assert counts(result) == expected_counts(bytes(src), bytes(tgt))
    assert result.counts.missing == 2 * len(range(5, helper.RUN_ENTRIES + 50, 4001))


def test_a_huge_directory_streamed_counts_every_verdict(tmp_path: Path) -> None:
    # Listings longer than a helper's run are merged chunk by chunk: every kind of verdict,
    # files to hash on request and subdirectories still come out as in a small directory.
    count = helper.RUN_ENTRIES + 50
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    big = helper.SMALL_FILE + 1
    written = time.time()
    write_tree(src, {b"caf\xe9": "a", "zz-big": b"1" * big, "sub/x": "x", "e000007": "sz"})
    write_tree(tgt, {b"caf\xe9": "b", "zz-big": b"2" * big, "sub/x": "x", "more": "m"})
    for root in (src, tgt):
        # "same" is as large and identical on both sides: its first chunks are equal, and
        # still not the whole listing.
        for folder, skip in ((root, 9973 if root == tgt else 0), (root / "same", 0)):
            empty_files(folder, count, skip)  # with skip: some missing at the target
    time.sleep(max(0.0, written + helper.RACY_SECONDS + 0.1 - time.time()))  # cacheable
    result, lines = verify(src, tgt, tmp_path / "state")
    assert result.error is None
    assert counts(result) == expected_counts(bytes(src), bytes(tgt))
    odd = {(verdict, rel) for verdict, rel, _ in lines if verdict is not Verdict.IDENTICAL}
    missing = {(Verdict.MISSING, f"e{i:06d}".encode()) for i in range(5, count, 9973)}
    assert odd == missing | {
        (Verdict.DIFFERENT, b"caf\xe9"), (Verdict.DIFFERENT, b"zz-big"),
        (Verdict.DIFFERENT, b"e000007"), (Verdict.MORE, b"more"),
    }  # fmt: skip
    assert (Verdict.IDENTICAL, b"sub/x", None) in lines
    assert result.counts.files_hashed >= 2
    # Quick mode merges the same chunks by size and mtime: the empty files written a moment
    # apart may differ by a second, so only the verdicts it cannot get wrong are checked.
    quick, quick_lines = verify(src, tgt, tmp_path / "state", config={"mode": "quick"})
    assert quick.error is None and quick.counts.files_hashed == 0
    assert (quick.counts.total, quick.counts.missing, quick.counts.more) == (
        result.counts.total, result.counts.missing, result.counts.more)  # fmt: skip
    assert (Verdict.DIFFERENT, b"e000007", None) in quick_lines
    # The cache rows of the huge directory were packed as its runs spilled: nothing is read.
    again, _ = verify(src, tgt, tmp_path / "state")
    assert counts(again) == counts(result)
    assert again.counts.files_hashed == 0 and again.counts.cache_hits == 8  # 4 a side
