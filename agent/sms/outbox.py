"""The durable outbox: results waiting for SMS, dead letters, and the last result per directory.

SQLite in WAL mode at {state_dir}/agent.db. A result is written here before any POST and leaves
only after a 2xx; its next-try time is stored with it so a restart keeps the backoff.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import StateError
from ..model import ConsistencyEntry, validate_entry

DB_NAME = "agent.db"
# How long a write waits for another process's (a daemon's flush, a second verify).
BUSY_TIMEOUT = 30.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    task_id TEXT NOT NULL,
    dir_check TEXT NOT NULL,
    entry TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL,
    last_error TEXT,
    PRIMARY KEY (task_id, dir_check)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL,
    dir_check TEXT NOT NULL,
    entry TEXT NOT NULL,
    created_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    status INTEGER,
    error_code TEXT,
    error_msg TEXT,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS last_results (
    dir_check TEXT PRIMARY KEY,
    task_id TEXT,
    entry TEXT,
    checked_at REAL NOT NULL,
    state TEXT NOT NULL,
    detail TEXT,
    delivered_at REAL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


# Every queued entry gets a new version, so an acknowledgement removes only what was sent.
_NEXT_VERSION = (
    "INSERT INTO counters VALUES ('version', 1) ON CONFLICT(name) "
    "DO UPDATE SET value = value + 1 RETURNING value"
)
_BURY = (
    "INSERT INTO dead_letters (task_id, dir_check, entry, created_at, dead_at, attempts, status, "
    "error_code, error_msg, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class Pending:
    task_id: str
    entry: ConsistencyEntry
    version: int
    created_at: float
    attempts: int
    next_try: float
    last_error: str | None


@dataclass(frozen=True)
class LastResult:
    dir_check: str
    task_id: str | None
    entry: ConsistencyEntry | None
    checked_at: float
    state: str  # pending, delivered, dead, not-uploaded, error
    detail: str | None
    delivered_at: float | None


@dataclass(frozen=True)
class Counts:
    pending: int
    dead: int
    last_pending_error: str | None
    last_dead_error: str | None
    next_try: float | None


def _dump(entry: ConsistencyEntry) -> str:
    return json.dumps(entry.to_api(), ensure_ascii=False, sort_keys=True)


def _load(text: str) -> ConsistencyEntry:
    return ConsistencyEntry(**json.loads(text))


class Outbox:
    """One connection to the state database; use as a context manager."""

    def __init__(
        self, state_dir: Path, clock: Callable[[], float] = time.time, *, read_only: bool = False
    ):
        self.path = state_dir / DB_NAME
        self._clock = clock
        if read_only:
            self._db = _open_read_only(self.path)
            return
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None)
            os.chmod(self.path, 0o600)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot open the outbox {self.path}: {exc}") from exc

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def _write(self, statements: Callable[[sqlite3.Connection], None]) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                statements(self._db)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StateError(f"cannot write the outbox {self.path}: {exc}") from exc

    def _read(self, sql: str, args: Sequence[object] = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"cannot read the outbox {self.path}: {exc}") from exc

    # --- writes ---

    def add(self, task_id: str, entries: Iterable[ConsistencyEntry]) -> int:
        """Queue results; a newer result for a pending directory replaces it (and its backoff).
        Each entry is checked against the API's limits here, once: what is queued can be sent."""
        now = self._clock()
        entries = list(entries)
        for entry in entries:
            validate_entry(entry)

        def run(db: sqlite3.Connection) -> None:
            for entry in entries:
                version = db.execute(_NEXT_VERSION).fetchone()[0]
                db.execute(
                    "INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?, 0, ?, NULL)",
                    (task_id, entry.dir_check, _dump(entry), version, now, now),
                )
                _set_last(db, entry.dir_check, task_id, entry, now, "pending", None)

        self._write(run)
        return len(entries)

    def record(
        self, dir_check: str, entry: ConsistencyEntry | None, state: str, detail: str | None
    ) -> None:
        """Remember a result that is not queued (no endpoint, or the directory failed)."""
        now = self._clock()
        self._write(lambda db: _set_last(db, dir_check, None, entry, now, state, detail))

    def delivered(self, task_id: str, sent: Sequence[Pending]) -> int:
        """Remove what a 2xx acknowledged; a result replaced meanwhile stays queued."""
        now = self._clock()
        removed = 0

        def run(db: sqlite3.Connection) -> None:
            nonlocal removed
            for p in sent:
                removed += _remove_version(db, task_id, p)
                db.execute(
                    "UPDATE last_results SET state = 'delivered', detail = NULL, delivered_at = ? "
                    "WHERE dir_check = ? AND task_id = ? AND entry = ?",
                    (now, p.entry.dir_check, task_id, _dump(p.entry)),
                )

        self._write(run)
        return removed

    def defer(
        self, task_id: str, attempted: Sequence[Pending], next_try: float, error: str
    ) -> None:
        """After a failed POST: count the attempt and hold the whole task until `next_try`."""

        def run(db: sqlite3.Connection) -> None:
            for p in attempted:
                db.execute(
                    "UPDATE pending SET attempts = attempts + 1 "
                    "WHERE task_id = ? AND dir_check = ? AND version = ?",
                    (task_id, p.entry.dir_check, p.version),
                )
            # The same server would fail the other batches too: no stampede on it.
            db.execute(
                "UPDATE pending SET next_try = MAX(next_try, ?), last_error = ? WHERE task_id = ?",
                (next_try, error, task_id),
            )

        self._write(run)

    def kill(
        self,
        task_id: str,
        items: Sequence[Pending],
        reason: str,
        status: int | None = None,
        error_code: str | None = None,
        error_msg: str | None = None,
    ) -> int:
        """Move entries to the dead letters, with the server's answer."""
        now = self._clock()
        moved = 0

        def run(db: sqlite3.Connection) -> None:
            nonlocal moved
            for p in items:
                if not _remove_version(db, task_id, p):
                    continue  # replaced by a newer result meanwhile: that one gets its chance
                moved += 1
                attempts = p.attempts + (0 if reason == "expired" else 1)
                db.execute(_BURY, (task_id, p.entry.dir_check, _dump(p.entry), p.created_at, now,
                                   attempts, status, error_code, error_msg, reason))  # fmt: skip
                db.execute(
                    "UPDATE last_results SET state = 'dead', detail = ? "
                    "WHERE dir_check = ? AND task_id = ? AND entry = ?",
                    (reason, p.entry.dir_check, task_id, _dump(p.entry)),
                )

        self._write(run)
        return moved

    def expire(self, max_age: float) -> list[Pending]:
        """Move entries pending longer than `max_age` to the dead letters; returns them."""
        cutoff = self._clock() - max_age
        old = self._pending("WHERE created_at < ?", (cutoff,))
        by_task: dict[str, list[Pending]] = {}
        for p in old:
            by_task.setdefault(p.task_id, []).append(p)
        for task_id, items in by_task.items():
            self.kill(task_id, items, "expired", error_msg=items[0].last_error)
        return old

    # --- reads ---

    def _pending(self, where: str, args: Sequence[object]) -> list[Pending]:
        rows = self._read(
            "SELECT task_id, entry, version, created_at, attempts, next_try, last_error "
            f"FROM pending {where} ORDER BY task_id, created_at, dir_check",
            args,
        )
        return [Pending(r[0], _load(r[1]), r[2], r[3], r[4], r[5], r[6]) for r in rows]

    def due(self, now: float | None = None) -> list[Pending]:
        """Pending entries whose next try has come (all of them when `now` is infinite)."""
        return self._pending("WHERE next_try <= ?", (self._clock() if now is None else now,))

    def pending(self) -> list[Pending]:
        return self._pending("", ())

    def next_try(self) -> float | None:
        return self._read("SELECT MIN(next_try) FROM pending")[0][0]

    def counts(self) -> Counts:
        pending, next_try = self._read("SELECT COUNT(*), MIN(next_try) FROM pending")[0]
        dead = self._read("SELECT COUNT(*) FROM dead_letters")[0][0]
        pend_err = self._read(
            "SELECT last_error FROM pending WHERE last_error IS NOT NULL "
            "ORDER BY next_try DESC LIMIT 1"
        )
        dead_err = self._read(
            "SELECT reason, status, error_code, error_msg FROM dead_letters "
            "ORDER BY id DESC LIMIT 1"
        )
        return Counts(
            pending=pending,
            dead=dead,
            last_pending_error=pend_err[0][0] if pend_err else None,
            last_dead_error=_dead_text(*dead_err[0]) if dead_err else None,
            next_try=next_try,
        )

    def last_results(self) -> list[LastResult]:
        rows = self._read(
            "SELECT dir_check, task_id, entry, checked_at, state, detail, delivered_at "
            "FROM last_results ORDER BY dir_check"
        )
        return [
            LastResult(r[0], r[1], _load(r[2]) if r[2] else None, r[3], r[4], r[5], r[6])
            for r in rows
        ]


def _set_last(
    db: sqlite3.Connection,
    dir_check: str,
    task_id: str | None,
    entry: ConsistencyEntry | None,
    now: float,
    state: str,
    detail: str | None,
) -> None:
    db.execute(
        "INSERT OR REPLACE INTO last_results VALUES (?, ?, ?, ?, ?, ?, NULL)",
        (dir_check, task_id, _dump(entry) if entry else None, now, state, detail),
    )


def _dead_text(reason: str, status: int | None, code: str | None, msg: str | None) -> str:
    """A dead letter's reason and the server's answer on one line: `rejected 400 SMS.1:` ..."""
    return " ".join(str(p) for p in (reason, status, code and f"{code}:", msg) if p is not None)


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A connection that never writes, for reading a state directory that may be read-only
    (a read-only mount, another user's files). A missing database reads as empty."""
    if not path.exists():
        empty = sqlite3.connect(":memory:")
        empty.executescript(_SCHEMA)
        return empty
    uri = "file:" + urllib.parse.quote(os.fsencode(path)) + "?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT)
        db.execute("SELECT count(*) FROM last_results").fetchone()
        return db
    except sqlite3.Error as exc:
        last: Exception = exc
    # With WAL, reading needs the -shm file; where it cannot be made (a read-only directory)
    # a copy of the database and its WAL is read, so committed results in the WAL count.
    try:
        with tempfile.TemporaryDirectory() as scratch:
            for suffix in ("", "-wal"):
                if os.path.exists(f"{path}{suffix}"):
                    shutil.copyfile(f"{path}{suffix}", os.path.join(scratch, DB_NAME + suffix))
            copy = sqlite3.connect(os.path.join(scratch, DB_NAME))
            memory = sqlite3.connect(":memory:")
            copy.backup(memory)
            copy.close()
            return memory
    except (OSError, sqlite3.Error) as exc:
        last = exc
    raise StateError(f"cannot read the outbox {path}: {last}")


def _remove_version(db: sqlite3.Connection, task_id: str, p: Pending) -> int:
    """Delete exactly the queued version that was sent; a newer one replacing it stays."""
    return db.execute(
        "DELETE FROM pending WHERE task_id = ? AND dir_check = ? AND version = ?",
        (task_id, p.entry.dir_check, p.version),
    ).rowcount
