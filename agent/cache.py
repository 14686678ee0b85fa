"""A persistent cache of file digests, so unchanged files are not read again.

An entry is keyed by where the file lives (`scope`: this machine, or an SSH host), its device
and inode, and is valid only while size, mtime_ns and ctime_ns are what they were when it was
hashed. ctime cannot be set from user space, so rewriting a file and restoring its mtime
(`touch -d`) still invalidates the entry. Look-ups are batched per directory.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .errors import StateError

log = logging.getLogger(__name__)

CACHE_FILE = "hashcache.db"
_BATCH = 500  # bound parameters per query, well under SQLite's limit
_DAY = 86400
_KEEP_UNSEEN = 30 * _DAY  # entries of files not seen for this long are dropped

Key = tuple[int, int, int, int, int]  # dev, ino, size, mtime_ns, ctime_ns


class HashCache:
    def __init__(self, state_dir: Path, *, max_entries: int = 5_000_000, clock=time.time):
        self.path = state_dir / CACHE_FILE
        self.max_entries = max_entries
        self._clock = clock
        self._today = int(clock()) // _DAY
        self._dirty = 0
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS digests ("
                " scope TEXT NOT NULL, dev INTEGER NOT NULL, ino INTEGER NOT NULL,"
                " size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,"
                " algorithm TEXT NOT NULL, digest TEXT NOT NULL, seen_day INTEGER NOT NULL,"
                " PRIMARY KEY (scope, dev, ino)) WITHOUT ROWID"
            )
            self._db.execute("BEGIN")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{self.path}: cannot open the hash cache: {exc}") from None

    def lookup(self, scope: str, algorithm: str, keys: Sequence[Key]) -> list[str | None]:
        """The cached digest for each key, or None where it is unknown or stale."""
        found: list[str | None] = [None] * len(keys)
        by_dev: dict[int, list[int]] = defaultdict(list)
        for index, key in enumerate(keys):
            by_dev[key[0]].append(index)
        stale_seen: list[tuple[int, str, int, int]] = []
        for dev, indexes in by_dev.items():
            for start in range(0, len(indexes), _BATCH):
                part = indexes[start : start + _BATCH]
                wanted = {keys[i][1]: i for i in part}
                marks = ",".join("?" * len(wanted))
                rows = self._db.execute(
                    f"SELECT ino, size, mtime_ns, ctime_ns, algorithm, digest, seen_day"
                    f" FROM digests WHERE scope=? AND dev=? AND ino IN ({marks})",
                    (scope, dev, *wanted),
                ).fetchall()
                for ino, size, mtime, ctime, algo, digest, seen in rows:
                    i = wanted[ino]
                    if keys[i][2:] == (size, mtime, ctime) and algo == algorithm:
                        found[i] = digest
                        if seen != self._today:
                            stale_seen.append((self._today, scope, dev, ino))
        if stale_seen:
            # Mark entries as seen at most once a day, so a warm run does not rewrite them.
            self._db.executemany(
                "UPDATE digests SET seen_day=? WHERE scope=? AND dev=? AND ino=?", stale_seen
            )
            self._note_writes(len(stale_seen))
        return found

    def store(self, scope: str, algorithm: str, rows: Sequence[tuple[Key, str]]) -> None:
        if not rows:
            return
        self._db.executemany(
            "INSERT OR REPLACE INTO digests VALUES (?,?,?,?,?,?,?,?,?)",
            [(scope, *key, algorithm, digest, self._today) for key, digest in rows],
        )
        self._note_writes(len(rows))

    def _note_writes(self, count: int) -> None:
        self._dirty += count
        if self._dirty >= 20_000:
            self.commit()

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._dirty = 0
        self._db.execute("BEGIN")

    def prune(self) -> int:
        """Drop entries not seen for a month, then the oldest beyond the size bound."""
        cutoff = self._today - _KEEP_UNSEEN // _DAY
        dropped = self._db.execute("DELETE FROM digests WHERE seen_day < ?", (cutoff,)).rowcount
        (count,) = self._db.execute("SELECT count(*) FROM digests").fetchone()
        if count > self.max_entries:
            excess = count - self.max_entries
            dropped += self._db.execute(
                "DELETE FROM digests WHERE (scope, dev, ino) IN (SELECT scope, dev, ino"
                " FROM digests ORDER BY seen_day LIMIT ?)",
                (excess,),
            ).rowcount
        self.commit()
        return dropped

    def clear(self) -> int:
        dropped = self._db.execute("DELETE FROM digests").rowcount
        self.commit()
        return dropped

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM digests").fetchone()[0])

    def close(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        finally:
            self._db.close()
