"""The hash cache's own bookkeeping, on a real SQLite file."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.config import parse_config
from agent.verify.cache import HashCache
from agent.verify.helper import row_from_entries
from agent.verify.runner import run_verification

from .conftest import write_tree

DAY = 86400


def row(entries: dict[int, list]) -> bytes:
    return row_from_entries({ino: (*stats, "ab" * 16) for ino, stats in entries.items()})


def test_rows_round_trip_and_are_keyed_by_device_and_algorithm(tmp_path: Path) -> None:
    cache = HashCache(tmp_path)
    cache.save_row("local", b"/d", "xxh3-128", 7, row({11: [5, 100, 200]}))
    cache.commit()
    # The device goes with the row: the helper ignores a row made on another filesystem.
    assert cache.load_row("local", b"/d", "xxh3-128") == (7, row({11: [5, 100, 200]}))
    assert cache.load_row("local", b"/d", "blake2b") is None
    assert cache.load_row("ssh://h", b"/d", "xxh3-128") is None
    cache.save_row("local", b"/e", "xxh3-128", 7, row({}))  # no entries: no row
    assert cache.load_row("local", b"/e", "xxh3-128") is None
    cache.close()
    reopened = HashCache(tmp_path)
    assert reopened.count() == 1
    assert reopened.clear() == 1 and reopened.count() == 0
    reopened.close()


def test_size_is_bounded_by_dropping_the_least_recently_seen(tmp_path: Path) -> None:
    now = time.time()
    for age_days, path in ((10, b"/old"), (5, b"/mid"), (0, b"/new")):
        cache = HashCache(tmp_path, max_entries=1000, clock=lambda a=age_days: now - a * DAY)
        cache.save_row("local", path, "xxh3-128", 1, row({i: [1, 1, 1] for i in range(600)}))
        cache.close()
    cache = HashCache(tmp_path, max_entries=1000, clock=lambda: now)
    assert cache.count() == 1800
    assert cache.prune() == 2
    assert cache.count() == 600
    assert cache.load_row("local", b"/new", "xxh3-128") is not None
    assert cache.load_row("local", b"/old", "xxh3-128") is None
    cache.close()


def test_directories_unseen_for_a_month_are_dropped(tmp_path: Path) -> None:
    now = time.time()
    cache = HashCache(tmp_path, clock=lambda: now - 40 * DAY)
    cache.save_row("local", b"/gone", "xxh3-128", 1, row({1: [1, 1, 1]}))
    cache.close()
    cache = HashCache(tmp_path, clock=lambda: now)
    assert cache.prune() == 1 and cache.count() == 0
    cache.close()


def test_a_deleted_file_leaves_the_cache_when_its_directory_is_seen_again(tmp_path: Path) -> None:
    old = 1_600_000_000
    spec = {"a": "alpha", "b": "bravo", "c": "charl"}
    for side in ("src", "tgt"):
        write_tree(tmp_path / side, spec)
        for name in spec:
            os.utime(tmp_path / side / name, (old, old))
    time.sleep(2.2)  # past the racy window for the ctime set just now
    config = parse_config({"directories": [{"path": str(tmp_path / "src"),
                                            "target": str(tmp_path / "tgt")}],
                           "state_dir": str(tmp_path / "state")})  # fmt: skip
    run_verification(config, config.directories)
    cache = HashCache(tmp_path / "state")
    assert cache.count() == 6  # three files on each side
    cache.close()
    for side in ("src", "tgt"):
        os.unlink(tmp_path / side / "c")
    [result] = run_verification(config, config.directories)
    assert result.counts.cache_hits == 4 and result.counts.files_hashed == 0
    cache = HashCache(tmp_path / "state")
    assert cache.count() == 4
    cache.close()
    # A directory whose files are all gone leaves no row behind.
    for side in ("src", "tgt"):
        for name in ("a", "b"):
            os.unlink(tmp_path / side / name)
    [result] = run_verification(config, config.directories)
    assert result.counts.total == 0
    cache = HashCache(tmp_path / "state")
    assert cache.count() == 0
    cache.close()
