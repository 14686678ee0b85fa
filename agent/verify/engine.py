"""Compare one directory tree on the source with its target through two pools of helpers.

The engine drives the walk: it asks both sides to scan one directory (list it sorted, and
digest its small files on the spot unless the hash cache row sent along vouches for them),
merges the two scans (compare.merge), asks for digests only of the same-size pairs still
unread (large files), and keeps several directories in flight so that both sides' helpers
stay busy. It holds only the directories in flight, never the whole tree, and of a huge
directory only the chunks of its sorted listings that the merge has not reached yet.

The engine only schedules requests: what their answers mean for one directory is decided by
its Folder (folder.py), verdicts go to a ResultSink (report.py) and hash cache rows to a
RowBook (cache.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..errors import AgentError, TargetError
from ..model import DirResult
from ..names import escape
from .cache import HashCache, RowBook
from .channel import Channel, Pool, call, wait_for_replies
from .compare import Side
from .folder import Folder
from .plan import DirPlan
from .report import ProgressSink, ReportSink, ResultSink
from .wire import DirScan, Reply, ScanFailure, chunk_of, digests_of, scans_of

MAX_OPEN_DIRS = 256  # directories listed but not yet settled
# Directories per scan request: a batch costs both processes one message instead of one per
# directory (on the benchmark's 1,400 directories of 70 files, 0.06 s of a 1 s run).
SCAN_BATCH = 8
LIST_AHEAD = 8  # scan requests in flight per helper: it must never wait for the next
HASH_CHUNK_FILES = 256
HASH_CHUNK_BYTES = 16 << 20  # so several workers share the files of one large directory
REPLY_TIMEOUT = 300.0  # a helper silent this long is taken as hung

SOURCE, TARGET = Side.SOURCE, Side.TARGET


class Interrupted(AgentError):
    """The run was asked to stop (SIGTERM, Ctrl-C)."""


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
    ):
        self.source = source
        self.target = target
        self.cache = cache
        self.report = report
        self.progress = progress
        self.stop = stop or threading.Event()

    def compare(self, plan: DirPlan) -> DirResult:
        """Verify one directory; a problem with the tree as a whole is the result's `error`."""
        started = time.monotonic()
        sink = ResultSink(plan.dir_check, self.report, self.progress)
        try:
            self._walk(plan, sink)
            error = None
        except AgentError as exc:
            error = str(exc)
        if self.cache is not None:
            self.cache.commit()
        return DirResult(
            dir_check=plan.dir_check,
            target=plan.target_text,
            source=plan.source_text,
            counts=sink.tally.freeze(),
            elapsed=time.monotonic() - started,
            hash_algorithm=self.target.algorithm,
            hash_via=self.target.via,
            source_via=self.source.via,
            error=error,
            notes=tuple(sink.tally.samples),
            mode="content" if plan.quick is None else "quick",
            modify_window=plan.quick or 0,
        )

    def _walk(self, plan: DirPlan, sink: ResultSink) -> None:
        src_kind, src_dev, src_why = self._stat_root(self.source, plan.source.path)
        if src_kind != "d":
            why = {
                "missing": "does not exist",
                "notdir": "is not a directory",
                "p": "is a pseudo filesystem, which is never verified",
            }.get(src_kind, src_why)
            raise TargetError(f"source {escape(plan.source_text)}: {why}")
        tgt_kind, tgt_dev, tgt_why = self._stat_root(self.target, plan.target.path)
        unreadable = tgt_why if tgt_kind == "e" else None
        walk = _Walk(self, plan, sink, {SOURCE: src_dev, TARGET: tgt_dev})
        root = Folder(b"", True, tgt_kind == "d", unreadable)
        root.target_unlisted = bool(unreadable)
        walk.stack.append(root)
        walk.loop()

    def _stat_root(self, pool: Pool, root: bytes) -> tuple[str, int, str]:
        kind, dev, why = call(pool.pick(), "stat", root.decode("latin-1"), timeout=REPLY_TIMEOUT)
        return kind, dev, why


class _Request(NamedTuple):
    """What a request in flight is for."""

    folders: list[Folder]  # the directories of a scan; the one directory of a hash request
    side: Side
    indexes: list[int] | None  # the pairs a hash request digests; None for a scan
    more: bool = False  # the next chunk of the one directory's streamed listing


class _Walk:
    """Schedules one directory tree's requests: the work stack and the requests in flight."""

    def __init__(
        self, engine: Engine, plan: DirPlan, sink: ResultSink, devs: dict[Side, int]
    ) -> None:
        self.pools = {SOURCE: engine.source, TARGET: engine.target}
        self.channels = engine.source.channels + engine.target.channels
        self.stop = engine.stop
        self.roots = {SOURCE: plan.source.path.rstrip(b"/"), TARGET: plan.target.path.rstrip(b"/")}
        self.devs = devs
        self.rules = plan.rules
        self.one_file_system = plan.one_file_system
        self.quick = plan.quick
        self.sink = sink
        self.rows: RowBook | None = None
        if engine.cache is not None:
            scopes = {side: (pool.scope, pool.algorithm) for side, pool in self.pools.items()}
            self.rows = RowBook(engine.cache, scopes)
        self.stack: list[Folder] = []
        self.open = 0
        self.inflight: dict[tuple[Channel, int], _Request] = {}
        # A streamed listing lives in the helper that scanned the directory: its next
        # chunks are asked of that helper, whichever is least busy. (helper, stream number)
        self.streamers: dict[tuple[Folder, Side], tuple[Channel, int]] = {}
        self.last_reply = time.monotonic()

    def loop(self) -> None:
        while self.stack or self.inflight:
            if self.stop.is_set():
                # Replies still on their way belong to no directory any more: dropped.
                self.inflight.clear()
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
            replies = wait_for_replies(self.channels, 0.5)
            if replies:
                self.last_reply = time.monotonic()
            elif time.monotonic() - self.last_reply > REPLY_TIMEOUT:
                raise TargetError(f"no answer from the helpers for {REPLY_TIMEOUT:g}s")
            for reply in replies:
                self._handle(reply)

    def _room_to_list(self) -> bool:
        return min(c.outstanding for c in self.pools[SOURCE].channels) < LIST_AHEAD

    def _path(self, side: Side, rel: bytes) -> bytes:
        root = self.roots[side]
        return root + b"/" + rel if rel else root or b"/"

    def _start(self, batch: list[Folder]) -> None:
        self.open += len(batch)
        self._scan([t for t in batch if t.on_src], SOURCE)
        self._scan([t for t in batch if t.on_tgt and not t.target_unreadable], TARGET)
        for folder in batch:
            if folder.waiting == 0:
                self._merge(folder)

    def _scan(self, folders: list[Folder], side: Side) -> None:
        """Ask one helper of `side` to scan these directories, in one request."""
        if not folders:
            return
        dirs: list[list[Any]] = []
        rows: list[bytes] = []
        for folder in folders:
            path = self._path(side, folder.rel)
            # Small files are read during the scan only where both sides have the
            # directory: a file with no counterpart is never read.
            speculate = folder.on_src and folder.on_tgt and not folder.target_unreadable
            options: dict[str, Any] = {"hash": speculate}
            if self.quick is not None:  # size and mtime only: nothing is read
                options = {"hash": False, "quick": True}
            if self.one_file_system:
                options["same_dev"] = self.devs[side]
            row = None
            if self.rows is not None:
                options["remember"] = True
                row = self.rows.load(side, path)
                if row is not None:
                    options["cache_dev"] = row[0]
            dirs.append([path.decode("latin-1"), options])
            rows.append(row[1] if row else b"")
        self._send(_Request(folders, side, None), "scan", dirs, attach=rows)

    def _send(
        self, request: _Request, op: str, *args: Any, attach: Sequence[bytes] = (),
        channel: Channel | None = None,
    ) -> None:  # fmt: skip
        """Send on `channel`, or on the side's least busy helper."""
        pool = self.pools[request.side]
        if not pool.alive:
            raise TargetError(f"{pool.channels[0].label}: connection lost")
        channel = channel or pool.pick()
        ident = channel.send(op, *args, attach=attach)
        self.inflight[(channel, ident)] = request
        for folder in request.folders:
            folder.waiting += 1

    def _handle(self, reply: Reply) -> None:
        channel = reply.channel
        if reply.ident is None:  # the helper died
            if any(ch is channel for ch, _ in self.inflight):
                raise TargetError(f"{channel.label}: {channel.failure()}")
            return
        request = self.inflight.pop((channel, reply.ident), None)
        if request is None:
            return  # a reply for an abandoned directory
        if request.more:
            self._chunk(request.folders[0], request.side, reply)
            return
        if request.indexes is None:
            for folder, scan in zip(request.folders, scans_of(reply, len(request.folders))):
                self._listed(folder, request.side, scan)
                if isinstance(scan, DirScan) and scan.stream:
                    self.streamers[(folder, request.side)] = (channel, scan.stream)
                folder.waiting -= 1
                if folder.waiting == 0:
                    self._merge(folder)
            return
        folder = request.folders[0]
        folder.waiting -= 1
        self._hashed(folder, request.side, reply, request.indexes)
        if folder.waiting == 0:
            self._settle(folder)

    # --- listings -----------------------------------------------------------------------

    def _listed(self, folder: Folder, side: Side, scan: DirScan | ScanFailure) -> None:
        if isinstance(scan, ScanFailure):
            folder.unlisted(side, scan, self.sink)
            return
        self.sink.read(scan.files_read, scan.bytes_read, hits=scan.cache_hits)
        if self.rows is not None:
            new_row = scan.row if scan.new_row else None
            self.rows.scanned(side, self._path(side, folder.rel), scan.dev, new_row)
        folder.scans[side] = scan

    def _merge(self, folder: Folder) -> None:
        hashing = len(folder.pairs)
        self.stack.extend(folder.merge(self.rules, self.sink, self.quick))
        self._merged(folder, hashing)

    def _chunk(self, folder: Folder, side: Side, reply: Reply) -> None:
        """The next chunk of a streamed listing: merged as far as both sides reach."""
        folder.waiting -= 1
        if reply.error is not None:
            what = escape(self._path(side, folder.rel))
            raise TargetError(f"{side.value} {what}: the listing broke off: {reply.error}")
        listing, end = chunk_of(reply)
        if end:
            del self.streamers[(folder, side)]
        folder.take(side, listing, end, self.rules)
        hashing = len(folder.pairs)
        self.stack.extend(folder.advance(self.rules, self.sink, self.quick))
        self._merged(folder, hashing)

    def _merged(self, folder: Folder, hashing: int) -> None:
        """After a merge step: digests asked for the pairs it found from index `hashing` on,
        the next chunks of streamed listings, and the directory settled when all is in."""
        if len(folder.pairs) > hashing:
            for side in (SOURCE, TARGET):
                self._send_hash_chunks(folder, side, folder.unread(side, hashing))
        for side, stream in folder.wanted():
            request = _Request([folder], side, None, more=True)
            self._send(request, "next", stream, channel=self.streamers[(folder, side)][0])
        if folder.source_unreadable:
            # Nothing of the directory is compared: the rest of a listing still held for it
            # is dropped, not kept until the run ends.
            owner = self.streamers.pop((folder, TARGET), None)
            if owner is not None:
                owner[0].send("drop", owner[1])
        if folder.waiting == 0:
            self._settle(folder)

    # --- digests ------------------------------------------------------------------------

    def _send_hash_chunks(self, folder: Folder, side: Side, wanted: list[int]) -> None:
        chunk: list[int] = []
        size = 0
        for index in wanted:
            chunk.append(index)
            size += folder.pairs[index][0].size  # the same on both sides
            if len(chunk) >= HASH_CHUNK_FILES or size >= HASH_CHUNK_BYTES:
                self._send_hash(folder, side, chunk)
                chunk, size = [], 0
        if chunk:
            self._send_hash(folder, side, chunk)

    def _send_hash(self, folder: Folder, side: Side, indexes: list[int]) -> None:
        column = 0 if side is SOURCE else 1
        entries = [folder.pairs[i][column] for i in indexes]
        path = self._path(side, folder.rel).decode("latin-1")
        names = [e.name for e in entries]
        sizes = [e.size for e in entries]
        mtimes = [e.mtime for e in entries]
        want_stats = self.rows is not None
        request = _Request([folder], side, indexes)
        self._send(request, "hash", path, names, sizes, mtimes, want_stats)

    def _hashed(self, folder: Folder, side: Side, reply: Reply, indexes: list[int]) -> None:
        if reply.error is not None:
            folder.record(side, indexes, reply.error)
            return
        answer = digests_of(reply)
        folder.record(side, indexes, answer)
        self.sink.read(len(indexes), answer.bytes_read)
        if answer.stats and self.rows is not None:
            path = self._path(side, folder.rel)
            self.rows.hashed(side, path, answer.digests, answer.stats)

    def _settle(self, folder: Folder) -> None:
        if folder.pairs:
            folder.judge(self.sink)
        if self.rows is not None:
            for side in (SOURCE, TARGET):
                self.rows.save(side, self._path(side, folder.rel))
        self.open -= 1
        self.sink.tell_progress()
