"""A persistent cache of file digests, so unchanged files are not read again.

A digest is valid only while the file's device, inode, size, mtime_ns and ctime_ns are what
they were when it was hashed. ctime cannot be set from user space, so rewriting a file and
restoring its mtime (`touch -d`) still invalidates the entry. The entries of one directory
are stored together in one row, so a directory costs one look-up and at most one write, and
a rewritten row keeps only the files the directory still holds.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Tuple

from ..errors import StateError
from ..names import escape
from .compare import Side
from .helper import ROW_ITEM, row_with

log = logging.getLogger(__name__)

CACHE_FILE = "hashcache.db"
_DAY = 86400
_KEEP_UNSEEN_DAYS = 30  # directories not verified for this long are dropped

# A row holds one directory's entries in the binary format of helper.pack_row, with the
# device it was made on beside it.


class HashCache:
    """The cache for one run. Writes are kept in memory and stored in short transactions, so
    two runs on one state directory take turns instead of locking each other out; and a
    cache that fails (locked too long, damaged, disk full) is given up with a warning: the
    run goes on reading every file, since a cache is never worth a wrong or failed run."""

    def __init__(self, state_dir: Path, *, max_entries: int = 5_000_000, clock=time.time):
        self.path = state_dir / CACHE_FILE
        self.max_entries = max_entries
        self._today = int(clock()) // _DAY
        # Rows to store, by (scope, path): (dev, algorithm, entries), or None to delete.
        self._unsaved: dict[tuple[str, bytes], tuple[int, str, bytes] | None] = {}
        self._seen: set[tuple[str, bytes]] = set()  # rows whose seen_day is to be today
        self._db: sqlite3.Connection | None = None
        self._damaged_rows = 0
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            try:
                self._db = _open(self.path)
            except sqlite3.DatabaseError as exc:
                if type(exc) is not sqlite3.DatabaseError:
                    raise  # locked, read-only, ...: not a damaged file
                # Not a database, or a damaged one: a cache is rebuilt, never repaired.
                log.warning("%s is damaged (%s): it is dropped and rebuilt", self.path, exc)
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                self._db = _open(self.path)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"{self.path}: cannot open the hash cache: {exc}") from None

    def _give_up(self, exc: Exception) -> None:
        log.warning("hash cache %s: %s; going on without it for this run", self.path, exc)
        db, self._db = self._db, None
        self._unsaved.clear()
        self._seen.clear()
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def load_row(self, scope: str, path: bytes, algorithm: str) -> tuple[int, bytes] | None:
        """One directory's row as (device, its entries), None when unknown. The entries go to
        the helper unparsed, which checks the device against its own."""
        key = (scope, path)
        if key in self._unsaved:
            kept = self._unsaved[key]
            return (kept[0], kept[2]) if kept is not None and kept[1] == algorithm else None
        if self._db is None:
            return None
        try:
            row = self._db.execute(
                "SELECT dev, algorithm, entries, seen_day FROM digest_rows "
                "WHERE scope=? AND path=?",
                key,
            ).fetchone()
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None
        if row is None:
            return None
        dev, stored_algorithm, entries, seen_day = row
        if not (isinstance(dev, int) and isinstance(entries, bytes) and entries
                and len(entries) % ROW_ITEM == 0):  # fmt: skip
            self._drop_damaged(key)
            return None
        if stored_algorithm != algorithm:
            return None
        if seen_day != self._today:
            # Marked as seen at most once a day, so a warm run does not rewrite every row.
            self._seen.add(key)
            self._note_write()
        return dev, entries

    def _drop_damaged(self, key: tuple[str, bytes]) -> None:
        self._damaged_rows += 1
        if self._damaged_rows == 1:
            log.warning("hash cache %s: a damaged row (for %s) is dropped; its files are read "
                        "again", self.path, escape(key[1]))  # fmt: skip
        self._unsaved[key] = None
        self._note_write()

    def holds(self, scope: str) -> bool:
        """Whether any row belongs to this scope: on a first run none does, and the walk
        need not ask for each directory's."""
        if any(k[0] == scope and row is not None for k, row in self._unsaved.items()):
            return True
        if self._db is None:
            return False
        try:
            found = self._db.execute("SELECT 1 FROM digest_rows WHERE scope=? LIMIT 1", (scope,))
            return found.fetchone() is not None
        except sqlite3.Error as exc:
            self._give_up(exc)
            return False

    def save_row(self, scope: str, path: bytes, algorithm: str, dev: int, entries: bytes) -> None:
        """Replace one directory's row; a row with no entries is dropped."""
        if self._db is None:
            return
        self._unsaved[(scope, path)] = (dev, algorithm, entries) if entries else None
        self._note_write()

    def _note_write(self) -> None:
        if len(self._unsaved) + len(self._seen) >= 500:
            self.commit()

    def commit(self) -> None:
        """Store what this run learnt since the last commit, in one short transaction."""
        if self._db is None or not (self._unsaved or self._seen):
            return
        unsaved, seen = self._unsaved, self._seen
        self._unsaved, self._seen = {}, set()

        def store(db: sqlite3.Connection) -> None:
            for (scope, path), row in unsaved.items():
                if row is None:
                    db.execute("DELETE FROM digest_rows WHERE scope=? AND path=?", (scope, path))
                else:
                    dev, algorithm, entries = row
                    db.execute(
                        "INSERT OR REPLACE INTO digest_rows VALUES (?,?,?,?,?,?,?)",
                        (scope, path, dev, algorithm, entries, len(entries) // ROW_ITEM,
                         self._today),
                    )  # fmt: skip
            db.executemany(
                "UPDATE digest_rows SET seen_day=? WHERE scope=? AND path=?",
                [(self._today, scope, path) for scope, path in seen],
            )

        self._transaction(store)

    def _transaction(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        db = self._db
        if db is None:
            return None
        try:
            db.execute("BEGIN IMMEDIATE")  # waits for the other run's write (the timeout)
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None

    def prune(self) -> int:
        """Drop directories not seen for a month, then the least recently seen ones while
        the cache holds more than `max_entries` files."""
        self.commit()
        cutoff = self._today - _KEEP_UNSEEN_DAYS

        def drop(db: sqlite3.Connection) -> int:
            dropped = db.execute("DELETE FROM digest_rows WHERE seen_day < ?", (cutoff,)).rowcount
            (total,) = db.execute("SELECT coalesce(sum(count), 0) FROM digest_rows").fetchone()
            if total > self.max_entries:
                rows = db.execute(
                    "SELECT scope, path, count FROM digest_rows ORDER BY seen_day"
                ).fetchall()
                for scope, path, count in rows:
                    if total <= self.max_entries:
                        break
                    db.execute("DELETE FROM digest_rows WHERE scope=? AND path=?", (scope, path))
                    total -= count
                    dropped += 1
            return int(dropped)

        return int(self._transaction(drop) or 0)

    def clear(self) -> int:
        self._unsaved.clear()
        self._seen.clear()

        def drop(db: sqlite3.Connection) -> int:
            (total,) = db.execute("SELECT coalesce(sum(count), 0) FROM digest_rows").fetchone()
            db.execute("DELETE FROM digest_rows")
            return int(total)

        if self._db is None:
            raise StateError(f"{self.path}: the hash cache cannot be used")
        return int(self._transaction(drop) or 0)

    def count(self) -> int:
        """How many file digests the cache holds."""
        self.commit()
        if self._db is None:
            return 0
        try:
            (total,) = self._db.execute(
                "SELECT coalesce(sum(count), 0) FROM digest_rows"
            ).fetchone()
        except sqlite3.Error as exc:
            self._give_up(exc)
            return 0
        return int(total)

    def close(self) -> None:
        """Store what is left and close; closing again does nothing."""
        self.commit()
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()


def _open(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        # Rows are kilobytes: large pages keep most rows out of overflow pages (this
        # applies when the file is created).
        db.execute("PRAGMA page_size=65536")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        # Rows are kilobytes: a rowid table with a separate key index stores them more
        # cheaply than a WITHOUT ROWID one. The tables of earlier versions, whose rows
        # were JSON, are simply dropped.
        db.execute("DROP TABLE IF EXISTS directories")
        db.execute("DROP TABLE IF EXISTS dir_rows")
        db.execute(
            "CREATE TABLE IF NOT EXISTS digest_rows ("
            " scope TEXT NOT NULL, path BLOB NOT NULL, dev INTEGER NOT NULL,"
            " algorithm TEXT NOT NULL, entries BLOB NOT NULL, count INTEGER NOT NULL,"
            " seen_day INTEGER NOT NULL, UNIQUE (scope, path))"
        )
        # A damaged file may open and only fail when read.
        db.execute("SELECT count(*) FROM digest_rows").fetchone()
    except BaseException:
        db.close()
        raise
    return db


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
            kept = base[1] if base and base[0] == dev else b""
            row = (dev or 0, row_with(kept, more))
        if row is not None:
            scope, algorithm = self.scopes[side]
            self.cache.save_row(scope, path, algorithm, row[0], row[1])
