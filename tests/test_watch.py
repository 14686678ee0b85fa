"""The watcher against real inotify on trees in tmp_path, and its pure path logic."""

from __future__ import annotations

import fnmatch
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from agent.config import parse_config
from agent.service.watch import (
    Debouncer,
    WatchControl,
    WatchedDir,
    Watcher,
    affected,
    excluded_path,
)

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def globs(*patterns: str):
    def excluded(rel: bytes, is_dir: bool) -> bool:
        name = os.fsdecode(rel)
        return any(
            fnmatch.fnmatch(name, p) or fnmatch.fnmatch(name.rsplit("/", 1)[-1], p)
            for p in patterns
        )

    return excluded


DIRS = [
    WatchedDir("/srv", globs("cache", "*.tmp")),
    WatchedDir("/srv/www"),
    WatchedDir("/", globs("proc")),
]


@pytest.mark.parametrize(
    ("path", "is_dir", "expected"),
    [
        (b"/srv/a.txt", False, ["/srv", "/"]),
        (b"/srv/www/index.html", False, ["/srv", "/srv/www", "/"]),
        (b"/srv/x.tmp", False, ["/"]),
        (b"/srv/cache/deep/file", False, ["/"]),  # under an excluded directory
        (b"/srv/cache", True, ["/"]),
        (b"/srvother/a", False, ["/"]),  # a sibling with the same prefix
        (b"/proc/1/stat", False, []),
        (b"/var/lib/smsagent/agent.db", False, []),  # the state dir never counts
        (b"/var/lib/smsagent", True, []),
    ],
)
def test_affected(path: bytes, is_dir: bool, expected: list[str]) -> None:
    assert affected(path, is_dir, DIRS, [b"/var/lib/smsagent"]) == expected


def test_excluded_path_checks_every_parent() -> None:
    seen: list[tuple[bytes, bool]] = []

    def record(rel: bytes, is_dir: bool) -> bool:
        seen.append((rel, is_dir))
        return False

    assert not excluded_path(b"a/b/c", False, record)
    assert seen == [(b"a", True), (b"a/b", True), (b"a/b/c", False)]


def test_debouncer_fires_once_after_quiet() -> None:
    fired: list[tuple[str, float]] = []
    debouncer = Debouncer(0.3, lambda key: fired.append((key, time.monotonic())))
    debouncer.start()
    try:
        start = time.monotonic()
        for _ in range(5):
            last = time.monotonic()
            debouncer.touch("/srv")
            time.sleep(0.1)
        deadline = time.monotonic() + 3
        while not fired and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.4)
    finally:
        debouncer.stop()
    assert [key for key, _ in fired] == ["/srv"]
    assert fired[0][1] - last >= 0.29 and fired[0][1] - start < 2


def test_debouncer_caps_the_wait_for_endless_changes() -> None:
    fired = threading.Event()
    debouncer = Debouncer(0.3, lambda key: fired.set(), max_wait=0.6)
    debouncer.start()
    try:
        start = time.monotonic()
        while not fired.is_set() and time.monotonic() - start < 3:
            debouncer.touch("/busy")
            time.sleep(0.05)
    finally:
        debouncer.stop()
    assert fired.is_set() and time.monotonic() - start < 1.5


class Collector:
    def __init__(self) -> None:
        self.changed: list[str] = []
        self.event = threading.Event()

    def __call__(self, path: str) -> None:
        self.changed.append(path)
        self.event.set()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    (root / "cache").mkdir()
    (root / "sub" / "file.txt").write_text("one")
    (root / "state").mkdir()
    return root


def test_changes_are_reported_after_debounce(tree: Path) -> None:
    seen = Collector()
    watcher = Watcher([WatchedDir(str(tree), globs("cache", "*.tmp"))], debounce=0.3,
                      on_change=seen, ignored=[str(tree / "state")])  # fmt: skip
    assert watcher.start()
    try:
        # Reading, excluded paths and the state dir must stay silent.
        (tree / "sub" / "file.txt").read_text()
        (tree / "cache" / "x").write_text("ignored")
        (tree / "sub" / "y.tmp").write_text("ignored")
        (tree / "state" / "agent.db").write_text("ignored")
        assert not seen.event.wait(1.0), seen.changed
        (tree / "sub" / "new").mkdir()
        (tree / "sub" / "new" / "file").write_text("two")  # in a directory created after start
        assert seen.event.wait(3)
        time.sleep(0.5)
        assert seen.changed == [str(tree)]
        assert watcher.check()
    finally:
        watcher.stop()


def test_the_state_dir_is_ignored_through_a_symlink(tree: Path) -> None:
    real = tree / "private" / "smsagent"
    real.mkdir(parents=True)
    link = tree / "state-link"
    link.symlink_to(real)
    watcher = Watcher([WatchedDir(str(tree))], debounce=0.1, on_change=print,
                      ignored=[str(link)])  # fmt: skip
    assert os.fsencode(real) in watcher.ignored
    assert affected(os.fsencode(real / "agent.db"), False, watcher.dirs, watcher.ignored) == []


def test_a_watcher_that_cannot_start_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = Watcher([WatchedDir(str(tmp_path / "missing"))], debounce=0.1, on_change=print)
    assert not watcher.start()
    assert not watcher.check()  # for good: no observer is left running (no_leaked_threads)
    watcher.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "schedule.interval" in warnings[0].getMessage()


def test_a_watcher_whose_root_vanishes_reports_it_once(
    tree: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watcher = Watcher([WatchedDir(str(tree))], debounce=0.1, on_change=lambda p: None)
    assert watcher.start()
    try:
        shutil.rmtree(tree)
        deadline = time.monotonic() + 5
        while watcher.check() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not watcher.check()
    finally:
        watcher.stop()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "stopped" in warnings[0].getMessage()


PROBE = """
import logging, sys
from agent.service.watch import WatchedDir, Watcher
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
open("/proc/sys/user/max_inotify_watches", "w").write("20")
w = Watcher([WatchedDir(sys.argv[1])], debounce=0.1, on_change=print)
print("started", w.start(), "check", w.check(), flush=True)
w.stop()
"""


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare(1) is not installed")
def test_running_out_of_inotify_watches_is_detected(tmp_path: Path) -> None:
    """A user namespace gets its own small watch limit, so the host's stays untouched."""
    import subprocess
    import sys

    for i in range(40):
        (tmp_path / f"d{i}").mkdir()
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-c", PROBE, str(tmp_path)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip(f"user namespaces are not available here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert "started False check False" in proc.stdout
    assert proc.stderr.count("WARNING") == 1
    assert "max_user_watches" in proc.stderr


# --- the daemon's watcher across reloads ---


def watching(tree: Path, **schedule: object):
    return parse_config({"target": "/t", "directories": [str(tree)], "state_dir": str(tree / "st"),
                         "schedule": {"watch": True, "debounce": 0.1, **schedule}})  # fmt: skip


def adopted(control: WatchControl, woke: threading.Semaphore, starts: int = 1) -> Watcher | None:
    for _ in range(starts):
        assert woke.acquire(timeout=10), "a watcher start never finished"
    control.adopt()
    return control.current


def test_watch_control_keeps_only_the_newest_watcher(tree: Path) -> None:
    woke = threading.Semaphore(0)
    control = WatchControl(wake=woke.release)
    try:
        first = watching(tree)
        control.follow(first)
        kept = adopted(control, woke)
        assert kept is not None and kept.debouncer.quiet == 0.1
        assert kept.ignored and os.fsencode(tree / "st") in kept.ignored
        control.follow(first, old=first)  # a reload that changes nothing the watcher uses
        assert control.current is kept
        # Two reloads in a row: the watcher made for the first is stopped, not adopted.
        control.follow(watching(tree, debounce=0.2), old=first)
        assert control.current is None
        control.follow(watching(tree, debounce=0.3), old=first)
        newest = adopted(control, woke, starts=2)
        assert newest is not None and newest.debouncer.quiet == 0.3
        control.follow(watching(tree, watch=False), old=first)  # watching switched off
        assert control.current is None
    finally:
        control.close()


def test_watch_control_drops_a_watcher_that_fails(tmp_path: Path) -> None:
    woke = threading.Semaphore(0)
    control = WatchControl(wake=woke.release)
    try:
        control.follow(watching(tmp_path / "missing"))
        assert adopted(control, woke) is None
    finally:
        control.close()


def test_watch_control_hands_back_settled_changes(tree: Path) -> None:
    woke = threading.Semaphore(0)
    control = WatchControl(wake=woke.release)
    try:
        control.follow(watching(tree))
        assert adopted(control, woke) is not None
        assert control.take_changed() == []
        (tree / "sub" / "new.txt").write_text("new")
        assert woke.acquire(timeout=10), "the change never settled"
        assert control.take_changed() == [str(tree)]
        assert control.take_changed() == []  # each change is handed back once
    finally:
        control.close()
