"""Compare one directory tree on the source with its target through two pools of helpers.

The engine drives the walk: it asks both sides to scan one directory (list it sorted, and
digest its small files on the spot unless the hash cache row sent along vouches for them),
merges the two scans (compare.merge), asks for digests only of the same-size pairs still
unread (large files), and keeps several directories in flight so that both sides' helpers
stay busy. It holds only the directories in flight, never the whole tree.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import AgentError, TargetError
from ..model import DirCounts, DirResult, Verdict
from .cache import HashCache
from .channel import Channel, Pool, Reply, call, wait_for_replies
from .compare import KIND, MTIME, NAME, SIZE, VALUE, Entry, judge_digests, merge
from .excludes import ExcludeRules
from .helper import row_entries, row_from_entries
from .report import escape

log = logging.getLogger(__name__)

ReportSink = Callable[[str, Verdict, bytes, "str | None"], None]
ProgressSink = Callable[[int, int], None]  # files settled, bytes hashed (run totals so far)

MAX_OPEN_DIRS = 256  # directories listed but not yet settled
# Directories per scan request: a batch costs both processes one message instead of one per
# directory (on the benchmark's 1,400 directories of 70 files, 0.06 s of a 1 s run).
SCAN_BATCH = 8
LIST_AHEAD = 8  # scan requests in flight per helper: it must never wait for the next
HASH_CHUNK_FILES = 256
HASH_CHUNK_BYTES = 16 << 20  # so several workers share the files of one large directory
MAX_ERROR_SAMPLES = 50
REPLY_TIMEOUT = 300.0  # a helper silent this long is taken as hung


class Interrupted(AgentError):
    """The run was asked to stop (SIGTERM, Ctrl-C)."""


@dataclass
class _Tally:
    total: int = 0
    identical: int = 0
    different: int = 0
    missing: int = 0
    more: int = 0
    errors: int = 0
    specials: int = 0
    bytes_hashed: int = 0
    files_hashed: int = 0
    cache_hits: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, verdict: Verdict) -> None:
        if verdict is Verdict.IDENTICAL:
            self.identical += 1
            self.total += 1
        elif verdict is Verdict.MISSING:
            self.missing += 1
            self.total += 1
        elif verdict is Verdict.MORE:
            self.more += 1
        else:
            self.different += 1
            self.total += 1
            if verdict is Verdict.ERROR:
                self.errors += 1

    def freeze(self) -> DirCounts:
        return DirCounts(
            total=self.total,
            identical=self.identical,
            different=self.different,
            missing=self.missing,
            more=self.more,
            errors=self.errors,
            skipped_special=self.specials,
            bytes_hashed=self.bytes_hashed,
            files_hashed=self.files_hashed,
            cache_hits=self.cache_hits,
        )


@dataclass
class _Task:
    """One relative directory being compared."""

    rel: bytes
    on_src: bool
    on_tgt: bool
    target_unreadable: str | None = None
    source_unreadable: bool = False  # its error entry stands for everything under it
    target_unlisted: bool = False  # the target's listing of this very directory failed
    # Each side's scan as the helper sent it; a side with no such directory has none.
    scans: dict[str, dict[str, Any]] = field(default_factory=dict)
    waiting: int = 0
    pairs: list[tuple[Entry, Entry]] = field(default_factory=list)
    src_digests: list[Any] = field(default_factory=list)  # per pair: (digest, error)
    tgt_digests: list[Any] = field(default_factory=list)
    # Per side, the hash cache row as loaded (dev, JSON text), and as the scan and later
    # digests say it should be saved once every digest is in.
    cache_old: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    cache_new: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    cache_more: dict[str, dict[int, tuple[Any, ...]]] = field(default_factory=dict)
    devs: dict[str, int] = field(default_factory=dict)  # each side's device, from its scan


class Engine:
    """Compares trees through a source pool and a target pool; one instance serves a run."""

    def __init__(
        self,
        source: Pool,
        target: Pool,
        *,
        cache: HashCache | None = None,
        report: ReportSink | None = None,
        progress: ProgressSink | None = None,
        stop: threading.Event | None = None,
        one_file_system: bool = False,
    ):
        self.source = source
        self.target = target
        self.cache = cache
        self.report = report
        self.progress = progress
        self.stop = stop or threading.Event()
        self.one_file_system = one_file_system
        self.channels = source.channels + target.channels
        self.files_done = 0
        self.bytes_done = 0

    # --- one directory ----------------------------------------------------------------

    def compare(
        self, dir_check: str, src_root: bytes, tgt_root: bytes, rules: ExcludeRules
    ) -> DirResult:
        """Verify one directory; a problem with the tree as a whole is the result's `error`."""
        started = time.monotonic()
        tally = _Tally()
        try:
            self._run(dir_check, src_root, tgt_root, rules, tally)
            error = None
        except AgentError as exc:
            error = str(exc)
        if self.cache is not None:
            self.cache.commit()
        return DirResult(
            dir_check=dir_check,
            target=tgt_root.decode("utf-8", "surrogateescape"),
            counts=tally.freeze(),
            elapsed=time.monotonic() - started,
            hash_algorithm=self.source.algorithm,
            error=error,
            notes=tuple(tally.samples),
        )

    def _run(
        self, dir_check: str, src_root: bytes, tgt_root: bytes, rules: ExcludeRules, tally: _Tally
    ) -> None:
        src_kind, src_dev, src_why = self._stat_root(self.source, src_root)
        if src_kind != "d":
            why = {
                "missing": "does not exist",
                "notdir": "is not a directory",
                "p": "is a pseudo filesystem, which is never verified",
            }.get(src_kind, src_why)
            raise TargetError(f"source {dir_check}: {why}")
        tgt_kind, tgt_dev, tgt_why = self._stat_root(self.target, tgt_root)
        unreadable = tgt_why if tgt_kind == "e" else None
        run = _Run(self, dir_check, src_root, tgt_root, rules, tally, src_dev, tgt_dev)
        root = _Task(b"", True, tgt_kind == "d", unreadable, target_unlisted=bool(unreadable))
        run.stack.append(root)
        run.loop()

    def _stat_root(self, pool: Pool, root: bytes) -> tuple[str, int, str]:
        kind, dev, why = call(pool.pick(), "stat", root.decode("latin-1"), timeout=REPLY_TIMEOUT)
        return kind, dev, why


class _Run:
    """The state of one directory's comparison: the work stack and requests in flight."""

    def __init__(
        self,
        engine: Engine,
        dir_check: str,
        src_root: bytes,
        tgt_root: bytes,
        rules: ExcludeRules,
        tally: _Tally,
        src_dev: int,
        tgt_dev: int,
    ):
        self.e = engine
        self.dir_check = dir_check
        self.roots = {"src": src_root.rstrip(b"/"), "tgt": tgt_root.rstrip(b"/")}
        self.devs = {"src": src_dev, "tgt": tgt_dev}
        cache = engine.cache
        # The sides whose scope has rows in the hash cache, to look up per directory.
        self.cached = {
            side: cache is not None and cache.holds(pool.scope)
            for side, pool in (("src", engine.source), ("tgt", engine.target))
        }
        self.rules = rules
        self.tally = tally
        self.stack: list[_Task] = []
        self.open = 0
        # Per request: the directories it is for (one for a hash request), side, op and, for
        # a hash request, the indexes of the pairs it digests.
        self.inflight: dict[tuple[Channel, int], tuple[list[_Task], str, str, list[int]]] = {}
        self.last_reply = time.monotonic()

    def loop(self) -> None:
        e = self.e
        while self.stack or self.inflight:
            if e.stop.is_set():
                self._abandon()
                raise Interrupted("interrupted before the directory was fully verified")
            # With nothing in flight a directory is always started, whatever the counters say.
            while (
                self.stack
                and self.open < MAX_OPEN_DIRS
                and (self._room_to_list() or not self.inflight)
            ):
                room = min(SCAN_BATCH, MAX_OPEN_DIRS - self.open, len(self.stack))
                self._start([self.stack.pop() for _ in range(room)])
            if not self.inflight:
                continue
            replies = wait_for_replies(e.channels, 0.5)
            if replies:
                self.last_reply = time.monotonic()
            elif time.monotonic() - self.last_reply > REPLY_TIMEOUT:
                raise TargetError(f"no answer from the helpers for {REPLY_TIMEOUT:g}s")
            for reply in replies:
                self._handle(reply)

    def _room_to_list(self) -> bool:
        return min(c.outstanding for c in self.e.source.channels) < LIST_AHEAD

    def _abandon(self) -> None:
        # Replies still on their way belong to no directory any more; they are dropped as
        # they come (and still counted off their channel's `outstanding`).
        self.inflight.clear()

    def _pool(self, side: str) -> Pool:
        return self.e.source if side == "src" else self.e.target

    def _path(self, side: str, rel: bytes) -> str:
        root = self.roots[side]
        return (root + b"/" + rel if rel else root or b"/").decode("latin-1")

    def _start(self, batch: list[_Task]) -> None:
        self.open += len(batch)
        self._scan([t for t in batch if t.on_src], "src")
        self._scan([t for t in batch if t.on_tgt and not t.target_unreadable], "tgt")
        for task in batch:
            if task.waiting == 0:
                self._merge(task)

    def _scan(self, tasks: list[_Task], side: str) -> None:
        """Ask one helper of `side` to scan these directories, in one request."""
        if not tasks:
            return
        pool = self._pool(side)
        cache = self.e.cache
        dirs: list[list[Any]] = []
        rows: list[bytes] = []
        for task in tasks:
            path = self._path(side, task.rel)
            # Small files are read during the scan only where both sides have the
            # directory: a file with no counterpart is never read.
            speculate = task.on_src and task.on_tgt and not task.target_unreadable
            options: dict[str, Any] = {"hash": speculate}
            if self.e.one_file_system:
                options["same_dev"] = self.devs[side]
            row = None
            if cache is not None:
                options["remember"] = True
                if self.cached[side]:
                    row = cache.load_row(pool.scope, path.encode("latin-1"), pool.algorithm)
                if row is not None:
                    task.cache_old[side] = row
                    options["cache_dev"] = row[0]
            dirs.append([path, options])
            rows.append(row[1] if row else b"")
        self._send(tasks, side, "scan", [], dirs, attach=rows)

    def _send(
        self,
        tasks: list[_Task],
        side: str,
        op: str,
        indexes: list[int],
        *args: Any,
        attach: Sequence[bytes] = (),
    ) -> None:
        pool = self._pool(side)
        if not pool.alive:
            raise TargetError(f"{pool.channels[0].label}: connection lost")
        channel = pool.pick()
        ident = channel.send(op, *args, attach=attach)
        self.inflight[(channel, ident)] = (tasks, side, op, indexes)
        for task in tasks:
            task.waiting += 1

    def _handle(self, reply: Reply) -> None:
        channel, message = reply.channel, reply.message
        if message is None:
            if any(ch is channel for ch, _ in self.inflight):
                raise TargetError(f"{channel.label}: {channel.failure()}")
            return
        channel.outstanding -= 1
        key = (channel, message[1])
        if key not in self.inflight:
            return  # a reply for an abandoned directory
        tasks, side, op, indexes = self.inflight.pop(key)
        if op == "scan":
            failed = message[0] != "ok"  # the whole request, not one directory of it
            for i, task in enumerate(tasks):
                if failed:
                    self._listed(task, side, {"error": message[2]}, b"", b"")
                else:
                    self._listed(task, side, message[2][i], message[3 + 2 * i], message[4 + 2 * i])
                task.waiting -= 1
                if task.waiting == 0:
                    self._merge(task)
            return
        task = tasks[0]
        task.waiting -= 1
        self._hashed(task, side, message, indexes)
        if task.waiting == 0:
            self._settle(task)

    # --- listings -----------------------------------------------------------------------

    def _listed(
        self, task: _Task, side: str, scan: dict[str, Any], listing: bytes, cache_row: bytes
    ) -> None:
        if "error" in scan:
            why = scan["error"]
            reason = "vanished before it was listed" if scan.get("gone") else f"cannot list: {why}"
            if side == "src":
                # What is inside cannot be counted: one different entry, and nothing under it
                # on the target is counted either (it would count the directory twice).
                task.source_unreadable = True
                self._verdict(Verdict.ERROR, task.rel, f"source: {reason}")
            else:
                task.target_unreadable = reason
                task.target_unlisted = True
            return
        scan["entries"] = listing
        tally = self.tally
        tally.files_hashed += scan["read"]
        tally.bytes_hashed += scan["bytes"]
        tally.cache_hits += scan["hits"]
        self.e.bytes_done += scan["bytes"]
        task.devs[side] = scan["dev"]
        if scan["new_row"] and self.e.cache is not None:
            task.cache_new[side] = (scan["dev"], cache_row)
        task.scans[side] = scan

    def _entries(self, task: _Task, side: str) -> list[Entry]:
        scan = task.scans.get(side)
        if scan is None:
            return []
        return self._filter(task.rel, json.loads(scan["entries"]))

    def _filter(self, rel: bytes, entries: list[Entry]) -> list[Entry]:
        rules = self.rules
        if not rules:
            return entries
        prefix = rel + b"/" if rel else b""
        excluded = rules.excluded
        return [
            entry
            for entry in entries
            if not excluded(prefix + entry[NAME].encode("latin-1"), entry[KIND] == "d")
        ]

    def _merge(self, task: _Task) -> None:
        if task.source_unreadable:
            task.scans = {}
            self._settle(task)
            return
        if task.target_unlisted:
            # It may hold anything: one entry more at the target, with the reason (and each
            # source file under it is different, by merge's target_unreadable).
            self._verdict(Verdict.MORE, task.rel, f"target: {task.target_unreadable}")
        src, tgt = task.scans.get("src"), task.scans.get("tgt")
        if (
            src is not None
            and tgt is not None
            and src["complete"]
            and tgt["complete"]
            and src["entries"] == tgt["entries"]
            and not self.rules
            and not task.target_unreadable
        ):
            self._equal(task, src)
            return
        merged = merge(
            self._entries(task, "src"),
            self._entries(task, "tgt"),
            target_unreadable=task.target_unreadable,
        )
        task.scans = {}  # the listings are no longer needed
        self.tally.specials += merged.specials
        prefix = task.rel + b"/" if task.rel else b""
        self._identical(task.rel, "/".join(merged.identical))
        for verdict, name, reason in merged.verdicts:
            self._verdict(verdict, prefix + name.encode("latin-1"), reason)
        inherited = task.target_unreadable
        for name, on_src, on_tgt in merged.subdirs:
            child = _Task(prefix + name.encode("latin-1"), on_src, on_tgt)
            if on_src and not on_tgt:
                child.target_unreadable = inherited or merged.blind.get(name)
            self.stack.append(child)
        self.e.files_done += len(merged.identical) + len(merged.verdicts)
        if merged.to_hash:
            self._request_digests(task, merged.to_hash)
        if task.waiting == 0:
            self._settle(task)

    # --- digests ------------------------------------------------------------------------

    def _equal(self, task: _Task, scan: dict[str, Any]) -> None:
        """The common case: two complete scans with the same text are identical directories,
        settled from the scan's summary without looking at single entries."""
        task.scans = {}
        prefix = task.rel + b"/" if task.rel else b""
        self.tally.specials += scan["specials"]
        self.e.files_done += self._identical(task.rel, scan["files"])
        for name in scan["subdirs"]:
            self.stack.append(_Task(prefix + name.encode("latin-1"), True, True))
        self._settle(task)

    def _request_digests(self, task: _Task, pairs: list[tuple[Entry, Entry]]) -> None:
        task.pairs = pairs
        task.src_digests = [(s[VALUE], None) for s, _ in pairs]
        task.tgt_digests = [(t[VALUE], None) for _, t in pairs]
        for side, digests in (("src", task.src_digests), ("tgt", task.tgt_digests)):
            wanted = [i for i, (digest, _) in enumerate(digests) if digest is None]
            self._send_hash_chunks(task, side, wanted)

    def _send_hash_chunks(self, task: _Task, side: str, wanted: list[int]) -> None:
        column = 0 if side == "src" else 1
        path = self._path(side, task.rel)
        chunk: list[int] = []
        size = 0
        for index in wanted:
            entry = task.pairs[index][column]
            chunk.append(index)
            size += entry[SIZE]
            if len(chunk) >= HASH_CHUNK_FILES or size >= HASH_CHUNK_BYTES:
                self._send_hash(task, side, path, chunk)
                chunk, size = [], 0
        if chunk:
            self._send_hash(task, side, path, chunk)

    def _send_hash(self, task: _Task, side: str, path: str, indexes: list[int]) -> None:
        column = 0 if side == "src" else 1
        entries = [task.pairs[i][column] for i in indexes]
        names = [e[NAME] for e in entries]
        sizes = [e[SIZE] for e in entries]
        mtimes = [e[MTIME] for e in entries]
        want_stats = self.e.cache is not None
        self._send([task], side, "hash", indexes, path, names, sizes, mtimes, want_stats)

    def _hashed(self, task: _Task, side: str, message: list[Any], indexes: list[int]) -> None:
        digests = task.src_digests if side == "src" else task.tgt_digests
        if message[0] != "ok":
            for i in indexes:
                digests[i] = (None, str(message[2]))
            return
        found, errors, stats, nbytes = message[2], message[3], message[4], message[5]
        for i, digest in zip(indexes, found):
            digests[i] = (digest, None)
        for position, reason in errors.items():
            digests[indexes[int(position)]] = (None, reason)
        self.tally.bytes_hashed += nbytes
        self.tally.files_hashed += len(indexes)
        self.e.bytes_done += nbytes
        if stats and self.e.cache is not None:
            self._remember(task, side, indexes, found, stats)

    def _remember(
        self, task: _Task, side: str, indexes: list[int], found: list[Any], stats: list[Any]
    ) -> None:
        more = task.cache_more.setdefault(side, {})
        for digest, st in zip(found, stats):
            if digest is not None and st is not None and st[4]:  # not modified too recently
                more[st[0]] = (st[1], st[2], st[3], digest)

    def _save_cache(self, task: _Task) -> None:
        """Store the rows the scans sent, with the digests of large files read since."""
        cache = self.e.cache
        assert cache is not None
        for side in ("src", "tgt"):
            row = task.cache_new.get(side)
            more = task.cache_more.get(side)
            if more:
                base = row or task.cache_old.get(side)
                entries = row_entries(base[1]) if base and base[0] == task.devs[side] else {}
                entries.update(more)
                row = (task.devs[side], row_from_entries(entries))
            if row is not None:
                pool = self._pool(side)
                path = self._path(side, task.rel).encode("latin-1")
                cache.save_row(pool.scope, path, pool.algorithm, row[0], row[1])
        task.cache_old, task.cache_new, task.cache_more = {}, {}, {}

    def _settle(self, task: _Task) -> None:
        prefix = task.rel + b"/" if task.rel else b""
        same: list[str] = []
        for (s, _), (sd, se), (td, te) in zip(task.pairs, task.src_digests, task.tgt_digests):
            if se is None and te is None and sd == td:
                same.append(s[NAME])
                continue
            verdict, reason = judge_digests(sd, se, td, te)
            self._verdict(verdict, prefix + s[NAME].encode("latin-1"), reason)
        self._identical(task.rel, "/".join(same))
        self.e.files_done += len(task.pairs)
        if self.e.cache is not None:
            self._save_cache(task)
        task.pairs, task.src_digests, task.tgt_digests = [], [], []
        self.open -= 1
        if self.e.progress is not None:
            self.e.progress(self.e.files_done, self.e.bytes_done)

    def _identical(self, rel: bytes, names: str) -> int:
        """Count and report identical files of one directory in bulk: `names` are joined by
        "/", which no file name holds. Returns how many there were."""
        if not names:
            return 0
        count = names.count("/") + 1
        self.tally.identical += count
        self.tally.total += count
        report = self.e.report
        if report is not None:
            bulk = getattr(report, "many", None)
            if bulk is not None:
                bulk(self.dir_check, Verdict.IDENTICAL, rel, names)
            else:
                prefix = rel + b"/" if rel else b""
                for name in names.split("/"):
                    report(self.dir_check, Verdict.IDENTICAL, prefix + name.encode("latin-1"), None)
        return count

    def _verdict(self, verdict: Verdict, rel: bytes, reason: str | None) -> None:
        self.tally.add(verdict)
        if reason and verdict is Verdict.MORE:
            self.tally.errors += 1
        if reason and len(self.tally.samples) < MAX_ERROR_SAMPLES:
            self.tally.samples.append(f"{escape(rel)}: {reason}")
        if self.e.report is not None:
            self.e.report(self.dir_check, verdict, rel, reason)
