"""The hash cache's own bookkeeping, on a real SQLite file."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent.config import parse_config
from agent.verify.cache import HashCache, RowBook
from agent.verify.compare import Side
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


def test_the_row_book_saves_what_scans_and_later_reads_found(tmp_path: Path) -> None:
    cache = HashCache(tmp_path)
    scopes = {Side.SOURCE: ("local", "xxh3-128"), Side.TARGET: ("ssh://h", "xxh3-128")}
    first = RowBook(cache, scopes)
    assert first.load(Side.SOURCE, b"/d") is None  # nothing of this scope yet
    first.scanned(Side.SOURCE, b"/d", 7, row({1: [5, 10, 11]}))
    first.scanned(Side.TARGET, b"/t/d", 9, None)  # the scan made no row here
    # Digests read on request join the row; one modified too recently does not.
    first.hashed(Side.TARGET, b"/t/d", ["ab" * 16, "cd" * 16], [[2, 6, 20, 21, True],
                                                                [3, 6, 20, 21, False]])  # fmt: skip
    first.save(Side.SOURCE, b"/d")
    first.save(Side.TARGET, b"/t/d")
    assert cache.load_row("local", b"/d", "xxh3-128") == (7, row({1: [5, 10, 11]}))
    assert cache.load_row("ssh://h", b"/t/d", "xxh3-128") == (9, row({2: [6, 20, 21]}))
    # A later run sends the stored row with the scan, and adds what it reads to it...
    second = RowBook(cache, scopes)
    assert second.load(Side.TARGET, b"/t/d") == (9, row({2: [6, 20, 21]}))
    second.scanned(Side.TARGET, b"/t/d", 9, None)
    second.hashed(Side.TARGET, b"/t/d", ["ab" * 16], [[4, 1, 2, 3, True]])
    second.save(Side.TARGET, b"/t/d")
    assert cache.load_row("ssh://h", b"/t/d", "xxh3-128") == (9, row({2: [6, 20, 21],
                                                                      4: [1, 2, 3]}))  # fmt: skip
    # ...unless the directory is now on another device: the old entries cannot be trusted.
    third = RowBook(cache, scopes)
    assert third.load(Side.TARGET, b"/t/d") is not None
    third.scanned(Side.TARGET, b"/t/d", 10, None)
    third.hashed(Side.TARGET, b"/t/d", ["ab" * 16], [[5, 1, 2, 3, True]])
    third.save(Side.TARGET, b"/t/d")
    assert cache.load_row("ssh://h", b"/t/d", "xxh3-128") == (10, row({5: [1, 2, 3]}))
    cache.close()
