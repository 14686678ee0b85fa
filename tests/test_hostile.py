"""Hostile trees: directories that cannot be listed, paths deeper than PATH_MAX and
directories that vanish mid-run, locally and over SSH, checked against the brute-force
reference. What was not verified is never counted as consistent, and nothing prints a
traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import parse_config
from agent.verify import helper
from agent.verify.runner import run_verification

from .conftest import empty_files, smsagent_command, write_tree
from .reference import expected_counts
from .sshd import Sshd, sshd_server  # noqa: F401 - the `sshd` fixture

DROP_CAPS = [
    "setpriv",
    "--inh-caps=-dac_override,-dac_read_search",
    "--bounding-set=-dac_override,-dac_read_search",
]
needs_setpriv = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop the capability to read every file",
)
OUTPUTS: list[str] = []  # every stdout and stderr of this module, checked for tracebacks
COUNTS = ("total", "identical", "different", "missing", "more")


def run_json(tmp_path: Path, src: Path, target: str, *, ssh: dict[str, Any] | None = None,
             drop_caps: bool = False) -> tuple[int, dict[str, Any]]:  # fmt: skip
    """`smsagent verify --json` of one directory: the exit status and its directory entry."""
    config: dict[str, Any] = {"directories": [{"path": str(src), "target": target}]}
    if ssh is not None:
        config["ssh"] = ssh
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(config))
    argv = [*smsagent_command(), "verify", "--config", str(config_file), "--no-upload",
            "--no-cache", "--json", "--state-dir", str(tmp_path / "state")]  # fmt: skip
    if drop_caps:
        argv = DROP_CAPS + argv
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SMSAGENT_")}
    done = subprocess.run(argv, capture_output=True, timeout=120, env=environ, cwd=tmp_path)
    OUTPUTS.extend([done.stdout.decode("utf-8", "replace"), done.stderr.decode("utf-8", "replace")])
    assert b"Traceback" not in done.stderr, done.stderr.decode("utf-8", "replace")
    document = json.loads(done.stdout.decode("utf-8"))  # strict: valid UTF-8 always
    return done.returncode, document["directories"][0]


def as_counts(detail: dict[str, Any], errors: bool = False) -> dict[str, int]:
    out = {
        "total": detail["num_total_files"],
        "identical": detail["num_identical_files"],
        "different": detail["num_different_files"],
        "missing": detail["num_target_miss_files"],
        "more": detail["num_target_more_files"],
    }
    if errors:
        out["errors"] = detail["num_error_files"]
    return out


def exit_for(counts: dict[str, int]) -> int:
    return 0 if counts["different"] == counts["missing"] == counts["more"] == 0 else 1


# --- paths longer than PATH_MAX ------------------------------------------------------------


def deep_chain(root: Path, depth: int, files: dict[str, bytes], name: str = "d" * 20) -> None:
    """`depth` nested directories under root with `files` at the bottom, made relative to
    each parent's descriptor (the whole path is too long for one system call)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        for file_name, data in files.items():
            handle = os.open(file_name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.write(handle, data)
            os.close(handle)
    finally:
        os.close(fd)


BOTTOM = {f"f{i}": b"same %d" % i for i in range(5)}
# Large enough to be digested on request (not during the scan), in a separate open.
BOTTOM["large"] = b"L" * (300 << 10)


@pytest.mark.parametrize("transport", ["local", "ssh"])
@pytest.mark.parametrize("layout", ["both sides", "target only", "source only", "one differs"])
def test_paths_longer_than_path_max_are_walked(
    request: pytest.FixtureRequest, tmp_path: Path, layout: str, transport: str
) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    src.mkdir()
    tgt.mkdir()
    write_tree(src, {"top": "t"})
    write_tree(tgt, {"top": "t"})
    if layout in ("both sides", "source only", "one differs"):
        deep_chain(src, 300, BOTTOM)  # 300 x 21 bytes: 6,300 bytes of path
    if layout in ("both sides", "target only"):
        deep_chain(tgt, 300, BOTTOM)
    if layout == "one differs":
        deep_chain(tgt, 300, {**BOTTOM, "f3": b"other", "large": b"M" * (300 << 10)})
    ssh = None
    target = str(tgt)
    if transport == "ssh":
        sshd = request.getfixturevalue("sshd")
        target, ssh = sshd.url(tgt), sshd.ssh_section(python=sys.executable)
    status, detail = run_json(tmp_path, src, target, ssh=ssh)
    expected = expected_counts(os.fsencode(src), os.fsencode(tgt))
    assert as_counts(detail) == expected
    assert detail["num_error_files"] == 0, detail["error_samples"]
    assert status == exit_for(expected)
    if layout == "both sides":
        assert expected["identical"] == 7 and status == 0


def test_a_deep_report_line_shows_the_full_escaped_path(tmp_path: Path) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    deep_chain(src, 250, {"new\nline": b"a"}, name="e" * 19 + "\xe9")
    deep_chain(tgt, 250, {"new\nline": b"b"}, name="e" * 19 + "\xe9")
    report = tmp_path / "report"
    done = subprocess.run(
        [*smsagent_command(), "verify", "--dir", str(src), "--target", str(tmp_path / "root"),
         "--no-upload", "--state-dir", str(tmp_path / "state"), "--report", str(report)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    OUTPUTS.extend([done.stdout, done.stderr])
    # The target root lacks the directory: everything is missing, reported in full.
    assert done.returncode == 1, done.stderr
    line = report.read_text().strip()
    assert line == f"+ {src}/" + ("e" * 19 + "\xe9/") * 250 + "new\\nline"


# --- directories that cannot be listed ----------------------------------------------------


@pytest.fixture
def locked() -> Iterator[list[Path]]:
    """Directories a test made unreadable, given their mode back afterwards."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        os.chmod(path, 0o755)


# Each case: source tree, target tree, directories to lock (side, rel, mode), and the
# unlistable directories the reference is told about.
UNLISTABLE = {
    "target-only directory, mode 000": (
        {"a": "1"}, {"a": "1", "extra/x": "2", "extra/y/z": "3"},
        [("tgt", "extra", 0)], (), (b"extra",),
    ),
    "target-only directory, write and search only": (
        {"a": "1"}, {"a": "1", "extra/x": "2"},
        [("tgt", "extra", 0o311)], (), (b"extra",),
    ),
    "target directory of an empty source directory": (
        {"a": "1", "empty/": ("dir",)}, {"a": "1", "empty/x": "2"},
        [("tgt", "empty", 0)], (), (b"empty",),
    ),
    "target directory with source files under it": (
        {"d/a": "1", "d/e/b": "2"}, {"d/a": "1", "d/e/b": "2", "d/c": "3"},
        [("tgt", "d", 0)], (), (b"d",),
    ),
    "the target root itself": (
        {"a": "1"}, {"a": "1", "b": "2"},
        [("tgt", "", 0)], (), (b"",),
    ),
    "source directory with target files under it": (
        {"a": "1", "d/b": "2"}, {"a": "1", "d/b": "2", "d/c": "3", "d/e/f": "4"},
        [("src", "d", 0)], (b"d",), (),
    ),
    "source directory, write and search only": (
        {"a": "1", "d/b": "2"}, {"a": "1", "d/b": "2"},
        [("src", "d", 0o333)], (b"d",), (),
    ),
    "both sides": (
        {"a": "1", "d/b": "2"}, {"a": "1", "d/b": "2"},
        [("src", "d", 0), ("tgt", "d", 0)], (b"d",), (),
    ),
}  # fmt: skip


def build_locked(tmp_path: Path, case: tuple, locked: list[Path]) -> tuple[Path, Path, tuple]:
    src_spec, tgt_spec, locks, hidden_src, blind_tgt = case
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_tree(src, {k.rstrip("/"): v for k, v in src_spec.items()})
    write_tree(tgt, tgt_spec)
    expected = expected_counts(
        os.fsencode(src), os.fsencode(tgt), unlistable_src=hidden_src, unlistable_tgt=blind_tgt
    )
    for side, rel, mode in locks:
        path = (src if side == "src" else tgt) / rel
        os.chmod(path, mode)
        locked.append(path)
    return src, tgt, expected


@needs_setpriv
@pytest.mark.parametrize("case", list(UNLISTABLE))
def test_what_cannot_be_listed_is_an_error_never_consistent(
    tmp_path: Path, case: str, locked: list[Path]
) -> None:
    src, tgt, expected = build_locked(tmp_path, UNLISTABLE[case], locked)
    status, detail = run_json(tmp_path, src, str(tgt), drop_caps=True)
    assert as_counts(detail, errors=True) == expected
    assert detail["num_error_files"] >= 1 and status == 1
    assert any("cannot list: Permission denied" in s for s in detail["error_samples"])


@needs_setpriv
def test_a_huge_target_directory_under_an_unlistable_source_one(
    tmp_path: Path, locked: list[Path]
) -> None:
    # The target's listing of d comes in chunks (more entries than a helper's run holds);
    # the source's d cannot be listed, so nothing under it is compared and the rest of the
    # target's listing is dropped, not asked for.
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_tree(src, {"a": "1", "d/b": "2"})
    write_tree(tgt, {"a": "1", "d/b": "2"})
    empty_files(tgt / "d", helper.RUN_ENTRIES + helper.CHUNK_ENTRIES // 2)
    expected = expected_counts(os.fsencode(src), os.fsencode(tgt), unlistable_src=(b"d",))
    os.chmod(src / "d", 0)
    locked.append(src / "d")
    status, detail = run_json(tmp_path, src, str(tgt), drop_caps=True)
    assert as_counts(detail, errors=True) == expected and status == 1


@needs_setpriv
@pytest.mark.parametrize(
    "case", ["target-only directory, mode 000", "target directory with source files under it",
             "source directory with target files under it"],
)  # fmt: skip
def test_what_cannot_be_listed_over_ssh(
    sshd: Sshd, tmp_path: Path, case: str, locked: list[Path]
) -> None:
    src, tgt, expected = build_locked(tmp_path, UNLISTABLE[case], locked)
    # The helper on the target runs without the capabilities too.
    python = tmp_path / "python-nocaps"
    python.write_text(f'#!/bin/sh\nexec {" ".join(DROP_CAPS)} "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    status, detail = run_json(
        tmp_path, src, sshd.url(tgt), ssh=sshd.ssh_section(python=str(python)), drop_caps=True
    )
    assert as_counts(detail, errors=True) == expected
    assert status == 1


@needs_setpriv
def test_entries_that_cannot_be_examined_are_counted_once(
    tmp_path: Path, locked: list[Path]
) -> None:
    # Mode 444: the names can be read, but nothing under them can be looked at.
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_tree(src, {"d/file": "1", "d/sub/inner": "2"})
    write_tree(tgt, {"d/file": "1", "d/sub/inner": "2", "d/more": "3"})
    os.chmod(tgt / "d", 0o444)
    locked.append(tgt / "d")
    status, detail = run_json(tmp_path, src, str(tgt), drop_caps=True)
    counts = as_counts(detail, errors=True)
    # d/file and d/sub/inner cannot be compared (different); d/more, d/sub and d/file on the
    # target are things that could not be examined (more, each an error).
    assert counts["total"] == 2 and counts["identical"] == 0 and counts["different"] == 2
    assert counts["missing"] == 0 and status == 1
    samples = " ".join(detail["error_samples"])
    assert "d/sub/inner: target: Permission denied" in samples


# --- directories that vanish mid-run ------------------------------------------------------


def verify_vanishing(tmp_path: Path, src: Path, tgt: Path, doomed: Path) -> dict[str, int]:
    """Verify in process, removing `doomed` once the root directory is settled, after its
    listing named it and before it is listed itself."""
    config = parse_config({"directories": [{"path": str(src), "target": str(tgt)}],
                           "state_dir": str(tmp_path / "state")})  # fmt: skip
    removed = threading.Event()

    def progress(_dir: str, _files: int, _bytes: int) -> None:
        if not removed.is_set():
            shutil.rmtree(doomed)
            removed.set()

    (result,) = run_verification(config, config.directories, use_cache=False, progress=progress)
    assert removed.is_set() and result.error is None
    c = result.counts
    return {"total": c.total, "identical": c.identical, "different": c.different,
            "missing": c.missing, "more": c.more, "errors": c.errors}  # fmt: skip


@pytest.mark.parametrize("target_has_it", [True, False])
def test_a_source_directory_that_vanishes_is_one_different_entry(
    tmp_path: Path, target_has_it: bool
) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_tree(src, {"a": "1", "gone/x": "2", "gone/deep/y": "3"})
    write_tree(tgt, {"a": "1", "gone/x": "2", "gone/deep/y": "3", "gone/z": "4"}
               if target_has_it else {"a": "1"})  # fmt: skip
    counts = verify_vanishing(tmp_path, src, tgt, src / "gone")
    # Counted once: not also as three or four files more at the target.
    assert counts == {"total": 2, "identical": 1, "different": 1, "missing": 0, "more": 0,
                      "errors": 1}  # fmt: skip


@pytest.mark.parametrize("source_files", [True, False])
def test_a_target_directory_that_vanishes_is_not_consistent(
    tmp_path: Path, source_files: bool
) -> None:
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_tree(src, {"a": "1", "gone/x": "2"} if source_files else {"a": "1", "gone/": ("dir",)})
    write_tree(tgt, {"a": "1", "gone/x": "2"})
    counts = verify_vanishing(tmp_path, src, tgt, tgt / "gone")
    if source_files:
        assert counts == {"total": 2, "identical": 1, "different": 1, "missing": 0, "more": 1,
                          "errors": 2}  # fmt: skip
    else:
        assert counts == {"total": 1, "identical": 1, "different": 0, "missing": 0, "more": 1,
                          "errors": 1}  # fmt: skip


def test_no_output_of_this_module_holds_a_traceback() -> None:
    assert OUTPUTS, "the module's runs recorded no output"
    for text in OUTPUTS:
        assert "Traceback" not in text, text
