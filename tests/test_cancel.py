"""The cancel handle: a stop ends a run between requests, and terminate() ends its helpers even
while they hash a large file, so the daemon never has to look for its children in /proc."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.model import DirResult
from agent.verify.cancel import Cancel
from agent.verify.runner import run_verification

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def child_pids() -> set[int]:
    children: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/children") as fh:
            children |= {int(x) for x in fh.read().split()}
    return children


def test_terminate_ends_helpers_busy_with_a_large_file(tmp_path: Path) -> None:
    big = os.urandom(1 << 20) * 30  # 30 MB at 1 MB/s: half a minute per side
    for side in ("src", "tgt"):
        (tmp_path / side).mkdir()
        (tmp_path / side / "big.bin").write_bytes(big)
    config = parse_config({
        "directories": [{"path": str(tmp_path / "src"), "target": str(tmp_path / "tgt")}],
        "state_dir": str(tmp_path / "state"), "limits": {"read_mb_per_s": 1, "workers": 1},
    })  # fmt: skip
    before = child_pids()
    cancel = Cancel()
    results: list[DirResult] = []
    run = threading.Thread(
        target=lambda: results.extend(run_verification(config, config.directories, stop=cancel))
    )
    run.start()
    deadline = time.monotonic() + 10
    while len(child_pids() - before) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    helpers = child_pids() - before
    assert len(helpers) >= 2, "the helpers never started"
    time.sleep(1.0)  # both are now reading the large file, slowly
    asked = time.monotonic()
    cancel.terminate()
    run.join(10)
    assert not run.is_alive()
    assert time.monotonic() - asked < 5  # not the half minute the hashing would take
    assert cancel.is_set()
    assert not (child_pids() & helpers), "a helper outlived the run"
    assert len(results) == 1 and results[0].error and not results[0].uploadable  # never "same"


def test_helpers_started_after_terminate_are_ended_at_once() -> None:
    class Process:
        def __init__(self) -> None:
            self.pid, self.ended = 4242, False

        def poll(self) -> int | None:
            return 0 if self.ended else None

        def terminate(self) -> None:
            self.ended = True

    class Helper:
        def __init__(self) -> None:
            self.process = Process()

    cancel = Cancel()
    first = Helper()
    cancel.adopt([first])  # type: ignore[list-item]
    assert not first.process.ended and not cancel.is_set()
    cancel.terminate()
    assert first.process.ended and cancel.is_set()
    late = Helper()
    cancel.adopt([late])  # type: ignore[list-item]
    assert late.process.ended


def test_a_stopped_run_starts_no_helper_for_the_directories_left(tmp_path: Path) -> None:
    config = parse_config({
        # Nothing answers there: a helper started for it would wait for the connect timeout.
        "directories": [{"path": str(tmp_path), "target": "ssh://root@192.0.2.1/srv"},
                        {"path": "/srv", "target": str(tmp_path)}],
        "state_dir": str(tmp_path / "state"), "ssh": {"connect_timeout": 30},
    })  # fmt: skip
    cancel = Cancel()
    cancel.set()
    asked = time.monotonic()
    results = run_verification(config, config.directories, stop=cancel)
    assert time.monotonic() - asked < 5
    assert [r.error for r in results] == ["interrupted before the directory was verified"] * 2
    assert not any(r.uploadable for r in results)
