"""A run over several directories: helpers opened once per machine, and one directory's
failure never stops the others."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.model import Verdict
from agent.verify.runner import run_verification

from .conftest import ReportLines, write_tree
from .sshd import free_port


def test_a_failed_directory_does_not_stop_the_others(tmp_path: Path) -> None:
    write_tree(tmp_path / "src", {"a": "1", "d/b": "2"})
    write_tree(tmp_path / "tgt", {"a": "1", "d/b": "3"})
    config = parse_config({
        "state_dir": str(tmp_path / "state"),
        "directories": [{"path": str(tmp_path / "nosuch"), "target": str(tmp_path / "tgt")},
                        {"path": str(tmp_path / "src"), "target": str(tmp_path / "tgt")}],
    })  # fmt: skip
    report, progress = ReportLines(), []
    failed, done = run_verification(
        config, config.directories, report=report,
        progress=lambda d, files, nbytes: progress.append((d, files, nbytes)),
    )  # fmt: skip
    assert failed.error is not None and "does not exist" in failed.error
    assert done.error is None and (done.counts.total, done.counts.different) == (2, 1)
    assert done.target == str(tmp_path / "tgt") and done.hash_algorithm == "xxh3-128"
    src = str(tmp_path / "src")
    assert report.dir_checks == {src}
    assert sorted(report, key=lambda r: r[1]) == [(Verdict.IDENTICAL, b"a", None),
                                                  (Verdict.DIFFERENT, b"d/b", None)]  # fmt: skip
    # Progress is told per directory, and ends at every file of it.
    assert progress and {d for d, _, _ in progress} == {src}
    assert progress[-1][1] == 2 and progress[-1][2] == done.counts.bytes_hashed


def test_an_unreachable_machine_is_dialled_once_per_run(tmp_path: Path) -> None:
    write_tree(tmp_path / "a", {"x": "1"})
    write_tree(tmp_path / "b", {"y": "2"})
    port = free_port()  # nothing listens there
    config = parse_config({
        "state_dir": str(tmp_path / "state"),
        "target": f"ssh://127.0.0.1:{port}/mnt",
        "ssh": {"connect_timeout": 5},
        "directories": [{"path": str(tmp_path / "a")}, {"path": str(tmp_path / "b")}],
    })  # fmt: skip
    first, second = run_verification(config, config.directories)
    assert first.error is not None and "cannot connect" in first.error
    assert second.error == first.error  # the first attempt's error, given at once
    assert second.elapsed < first.elapsed
    assert second.target == f"ssh://127.0.0.1:{port}/mnt{tmp_path}/b"
    assert not first.uploadable and not second.uploadable


def _children() -> set[int]:
    """This process's child processes still running (helpers not yet reaped)."""
    mine = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            if int(fields[1]) == os.getpid():
                mine.append(int(entry.name))
    return set(mine)


@pytest.mark.parametrize("remote", ["source", "target"])
def test_local_helpers_started_ahead_end_when_the_other_side_is_unreachable(
    tmp_path: Path, remote: str
) -> None:
    # Each local side's helpers start before any machine is greeted; when the other side
    # cannot be reached they are never taken by a pool, and must not outlive the run.
    write_tree(tmp_path / "a", {"x": "1"})
    local = str(tmp_path / "a")
    directory = {"path": local, "target": local}
    directory[remote] = f"ssh://127.0.0.1:{free_port()}{local}"  # nothing listens there
    config = parse_config({
        "state_dir": str(tmp_path / "state"),
        "ssh": {"connect_timeout": 5},
        "directories": [directory],
    })  # fmt: skip
    before = _children()
    (result,) = run_verification(config, config.directories)
    assert result.error is not None and "cannot connect" in result.error
    assert _children() - before == set()
