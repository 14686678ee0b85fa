"""A persistent cache of file digests, so unchanged files are not read again.

A digest is valid only while the file's device, inode, size, mtime_ns and ctime_ns are what
they were when it was hashed. ctime cannot be set from user space, so rewriting a file and
restoring its mtime (`touch -d`) still invalidates the entry. The entries of one directory
are stored together in one row, so a directory costs one look-up and at most one write, and
a rewritten row keeps only the files the directory still holds.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Tuple

from ..errors import StateError
from .compare import Side
from .helper import ROW_ITEM, row_entries, row_from_entries

log = logging.getLogger(__name__)

CACHE_FILE = "hashcache.db"
_DAY = 86400
_KEEP_UNSEEN_DAYS = 30  # directories not verified for this long are dropped

# A row holds one directory's entries in the binary format of helper.pack_row, with the
# device it was made on beside it.


class HashCache:
    def __init__(self, state_dir: Path, *, max_entries: int = 5_000_000, clock=time.time):
        self.path = state_dir / CACHE_FILE
        self.max_entries = max_entries
        self._today = int(clock()) // _DAY
        self._writes = 0
        self._closed = False
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            # Rows are kilobytes: large pages keep most rows out of overflow pages (this
            # applies when the file is created).
            self._db.execute("PRAGMA page_size=65536")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            # Rows are kilobytes: a rowid table with a separate key index stores them more
            # cheaply than a WITHOUT ROWID one. The tables of earlier versions, whose rows
            # were JSON, are simply dropped.
            self._db.execute("DROP TABLE IF EXISTS directories")
            self._db.execute("DROP TABLE IF EXISTS dir_rows")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS digest_rows ("
                " scope TEXT NOT NULL, path BLOB NOT NULL, dev INTEGER NOT NULL,"
                " algorithm TEXT NOT NULL, entries BLOB NOT NULL, count INTEGER NOT NULL,"
                " seen_day INTEGER NOT NULL, UNIQUE (scope, path))"
            )
            self._db.execute("BEGIN")
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{self.path}: cannot open the hash cache: {exc}") from None

    def load_row(self, scope: str, path: bytes, algorithm: str) -> tuple[int, bytes] | None:
        """One directory's row as (device, its entries), None when unknown. The entries go to
        the helper unparsed, which checks the device against its own."""
        row = self._db.execute(
            "SELECT dev, algorithm, entries, seen_day FROM digest_rows WHERE scope=? AND path=?",
            (scope, path),
        ).fetchone()
        if row is None or row[1] != algorithm:
            return None
        if row[3] != self._today:
            # Marked as seen at most once a day, so a warm run does not rewrite every row.
            self._db.execute(
                "UPDATE digest_rows SET seen_day=? WHERE scope=? AND path=?",
                (self._today, scope, path),
            )
            self._note_write()
        return int(row[0]), bytes(row[2])

    def holds(self, scope: str) -> bool:
        """Whether any row belongs to this scope: on a first run none does, and the walk
        need not ask for each directory's."""
        found = self._db.execute("SELECT 1 FROM digest_rows WHERE scope=? LIMIT 1", (scope,))
        return found.fetchone() is not None

    def save_row(self, scope: str, path: bytes, algorithm: str, dev: int, entries: bytes) -> None:
        """Replace one directory's row; a row with no entries is dropped."""
        count = len(entries) // ROW_ITEM
        if not count:
            self._db.execute("DELETE FROM digest_rows WHERE scope=? AND path=?", (scope, path))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO digest_rows VALUES (?,?,?,?,?,?,?)",
                (scope, path, dev, algorithm, entries, count, self._today),
            )
        self._note_write()

    def _note_write(self) -> None:
        self._writes += 1
        if self._writes >= 500:
            self.commit()

    def commit(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._writes = 0
        self._db.execute("BEGIN")

    def prune(self) -> int:
        """Drop directories not seen for a month, then the least recently seen ones while
        the cache holds more than `max_entries` files."""
        cutoff = self._today - _KEEP_UNSEEN_DAYS
        dropped = self._db.execute("DELETE FROM digest_rows WHERE seen_day < ?", (cutoff,)).rowcount
        total = self.count()
        if total > self.max_entries:
            rows = self._db.execute(
                "SELECT scope, path, count FROM digest_rows ORDER BY seen_day"
            ).fetchall()
            for scope, path, count in rows:
                if total <= self.max_entries:
                    break
                self._db.execute("DELETE FROM digest_rows WHERE scope=? AND path=?", (scope, path))
                total -= count
                dropped += 1
        self.commit()
        return dropped

    def clear(self) -> int:
        dropped = self.count()
        self._db.execute("DELETE FROM digest_rows")
        self.commit()
        return dropped

    def count(self) -> int:
        """How many file digests the cache holds."""
        (total,) = self._db.execute("SELECT coalesce(sum(count), 0) FROM digest_rows").fetchone()
        return int(total)

    def close(self) -> None:
        """Commit and close; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        finally:
            self._db.close()


Row = Tuple[int, bytes]  # the device it was made on, the packed entries
_Key = Tuple[Side, bytes]  # a side and a directory's path on it


class RowBook:
    """The hash cache rows of the directories in flight, per side: the row sent with a
    scan, the row the scan says to store, and the digests of large files read since. A
    directory's rows are saved when it settles, once every digest is in."""

    def __init__(self, cache: HashCache, scopes: dict[Side, tuple[str, str]]):
        self.cache = cache
        self.scopes = scopes  # per side: its scope in the cache and its hash algorithm
        # The sides whose scope has rows at all: on a first run there is nothing to look up.
        self._lookup = {side: cache.holds(scope) for side, (scope, _) in scopes.items()}
        self._sent: dict[_Key, Row] = {}
        self._new: dict[_Key, Row] = {}
        self._more: dict[_Key, dict[int, tuple[Any, ...]]] = {}
        self._devs: dict[_Key, int] = {}

    def load(self, side: Side, path: bytes) -> Row | None:
        """The row to send with the scan of `path`, None when there is none."""
        if not self._lookup[side]:
            return None
        scope, algorithm = self.scopes[side]
        row = self.cache.load_row(scope, path, algorithm)
        if row is not None:
            self._sent[(side, path)] = row
        return row

    def scanned(self, side: Side, path: bytes, dev: int, new_row: bytes | None) -> None:
        """A scan's device, and the row it made when it differs from the one sent."""
        self._devs[(side, path)] = dev
        if new_row is not None:
            self._new[(side, path)] = (dev, new_row)

    def hashed(self, side: Side, path: bytes, digests: list[Any], stats: list[Any]) -> None:
        """Digests read on request, with the stats the helper gave for each file."""
        more = self._more.setdefault((side, path), {})
        for digest, st in zip(digests, stats):
            if digest is not None and st is not None and st[4]:  # not modified too recently
                more[st[0]] = (st[1], st[2], st[3], digest)

    def save(self, side: Side, path: bytes) -> None:
        """Store the row the scan sent, with the digests of large files read since."""
        key = (side, path)
        row = self._new.pop(key, None)
        sent = self._sent.pop(key, None)
        dev = self._devs.pop(key, None)
        more = self._more.pop(key, None)
        if more:
            base = row or sent
            entries = row_entries(base[1]) if base and base[0] == dev else {}
            entries.update(more)
            row = (dev or 0, row_from_entries(entries))
        if row is not None:
            scope, algorithm = self.scopes[side]
            self.cache.save_row(scope, path, algorithm, row[0], row[1])
