"""One directory in flight: its two sides' scans merged into verdicts and subdirectories,
and its same-size file pairs waiting for their digests. The engine schedules the requests;
this decides what their answers mean."""

from __future__ import annotations

from bisect import bisect_left
from typing import Optional, Tuple

from ..model import Verdict
from .compare import DIR, Entry, Side, judge_digests, merge, quick_merge
from .excludes import ExcludeRules
from .report import ResultSink
from .wire import Digests, DirScan, Row, ScanFailure, rows_of, same_files, typed

SOURCE, TARGET = Side.SOURCE, Side.TARGET
# Per same-size pair still to be read, each side's outcome: (digest, None) or (None, why).
Outcome = Tuple[Optional[str], Optional[str]]
# Entries of a streamed listing held for a side that is ahead of the other; past this, the
# side is not asked for more until the other catches up.
PENDING_MAX = 1 << 15
SAME_BLOCK = 1024  # entries compared whole at a time: a difference makes only its block slow


class Folder:
    """One relative directory being compared."""

    __slots__ = ("rel", "prefix", "on_src", "on_tgt", "target_unreadable", "source_unreadable",
                 "target_unlisted", "scans", "waiting", "pairs", "outcomes", "streams",
                 "pending", "asked")  # fmt: skip

    def __init__(
        self, rel: bytes, on_src: bool, on_tgt: bool, target_unreadable: str | None = None
    ):
        self.rel = rel
        self.prefix = rel + b"/" if rel else b""  # what its entries' names are appended to
        self.on_src = on_src
        self.on_tgt = on_tgt
        self.target_unreadable = target_unreadable
        self.source_unreadable = False  # its error entry stands for everything under it
        self.target_unlisted = False  # the target's listing of this very directory failed
        self.scans: dict[Side, DirScan] = {}  # a side with no such directory has none
        self.waiting = 0  # requests not answered yet
        self.pairs: list[tuple[Entry, Entry]] = []  # same-size files still to be read
        self.outcomes: dict[Side, list[Outcome]] = {SOURCE: [], TARGET: []}
        # A huge directory's listings arrive in chunks: per side the stream still to read
        # from (absent once it ended), the entries not merged yet, and a chunk asked for.
        self.streams: dict[Side, int] = {}
        self.pending: dict[Side, list[Row]] = {SOURCE: [], TARGET: []}
        self.asked: set[Side] = set()

    def unlisted(self, side: Side, failure: ScanFailure, sink: ResultSink) -> None:
        """A side's scan of this directory failed."""
        gone = failure.gone
        reason = "vanished before it was listed" if gone else f"cannot list: {failure.why}"
        if side is SOURCE:
            # What is inside cannot be counted: one different entry, and nothing under it
            # on the target is counted either (it would count the directory twice).
            self.source_unreadable = True
            sink.verdict(Verdict.ERROR, self.rel, f"source: {reason}")
        else:
            self.target_unreadable = reason
            self.target_unlisted = True

    def merge(
        self, rules: ExcludeRules, sink: ResultSink, quick: int | None = None
    ) -> list[Folder]:
        """Settle what the two scans decide and return the subdirectories to walk; the
        same-size pairs still to be read are left in `pairs` (none in quick mode: `quick`
        is then the modify window, in seconds)."""
        src, tgt = self.scans.get(SOURCE), self.scans.get(TARGET)
        self.scans = {}  # the listings are no longer needed
        if self.source_unreadable:
            return []
        if self.target_unlisted:
            # It may hold anything: one entry more at the target, with the reason (and each
            # source file under it is different, by merge's target_unreadable).
            sink.verdict(Verdict.MORE, self.rel, f"target: {self.target_unreadable}")
        if (
            src is not None
            and tgt is not None
            and src.complete
            and tgt.complete
            and src.stream is None
            and tgt.stream is None
            and src.listing == tgt.listing
            and not rules
            and not self.target_unreadable
        ):
            # The common case: two complete scans with the same text are identical
            # directories, settled from the summary without looking at single entries.
            sink.tally.skipped_special += src.specials
            sink.settled(sink.identical(self.rel, src.files))
            return [
                Folder(self.prefix + name.encode("latin-1"), True, True) for name in src.subdirs
            ]
        for side, scan in ((SOURCE, src), (TARGET, tgt)):
            if scan is not None:
                self.pending[side] = rows_of(scan.listing)
                if scan.stream:
                    self.streams[side] = scan.stream
        return self.advance(rules, sink, quick)

    def take(self, side: Side, listing: bytes, end: bool, rules: ExcludeRules) -> None:
        """The next chunk of a side's streamed listing."""
        self.asked.discard(side)
        self.pending[side] += rows_of(listing)
        if end:
            del self.streams[side]

    def wanted(self) -> list[tuple[Side, int]]:
        """The streams to ask for their next chunk: one chunk in flight per side, and none
        while a side's entries wait for the other side to catch up."""
        out = []
        for side, stream in self.streams.items():
            if side not in self.asked and len(self.pending[side]) < PENDING_MAX:
                self.asked.add(side)
                out.append((side, stream))
        return out

    def advance(
        self, rules: ExcludeRules, sink: ResultSink, quick: int | None = None
    ) -> list[Folder]:
        """Merge the entries both sides have listed so far, up to the first name a side still
        streaming may not have sent yet; the rest waits for the next chunks."""
        src, tgt = self.pending[SOURCE], self.pending[TARGET]
        bound: str | None = None
        for side in self.streams:
            if not self.pending[side]:
                return []  # its next entry may come before any the other side has
            last = self.pending[side][-1][0]
            if bound is None or last < bound:
                bound = last
        if bound is None:
            src_part, tgt_part = src, tgt
            self.pending = {SOURCE: [], TARGET: []}
        else:
            # A name never holds NUL: this key sorts after `bound` and before any later name.
            key = [bound + "\0"]
            cut_src, cut_tgt = bisect_left(src, key), bisect_left(tgt, key)
            src_part, tgt_part = src[:cut_src], tgt[:cut_tgt]
            del src[:cut_src], tgt[:cut_tgt]
        return self._decide(src_part, tgt_part, rules, sink, quick)

    def _decide(
        self, src: list[Row], tgt: list[Row], rules: ExcludeRules, sink: ResultSink,
        quick: int | None,
    ) -> list[Folder]:  # fmt: skip
        """Settle what two sorted runs of entries (covering the same names) decide, and
        return the subdirectories. Blocks of them that are equal files on both sides, the
        common case, are settled whole; only the others are typed and merged entry by entry."""
        if rules or self.target_unreadable or not src or not tgt:
            return self._merge_typed(src, tgt, rules, sink, quick)
        subdirs: list[Folder] = []
        start = tgt_start = 0
        while start < len(src):
            end = min(start + SAME_BLOCK, len(src))
            tgt_end = len(tgt)
            if end < len(src):  # the target's entries up to the block's last name
                tgt_end = bisect_left(tgt, [src[end - 1][0] + "\0"], tgt_start)
            src_block, tgt_block = src[start:end], tgt[tgt_start:tgt_end]
            names = same_files(src_block, tgt_block, quick is not None)
            if names is None:
                subdirs += self._merge_typed(src_block, tgt_block, rules, sink, quick)
            else:
                sink.settled(sink.identical(self.rel, names))
            start, tgt_start = end, tgt_end
        return subdirs

    def _merge_typed(
        self, src: list[Row], tgt: list[Row], rules: ExcludeRules, sink: ResultSink,
        quick: int | None,
    ) -> list[Folder]:  # fmt: skip
        src_entries, tgt_entries = self._entries(src, rules), self._entries(tgt, rules)
        if quick is None:
            merged = merge(src_entries, tgt_entries, target_unreadable=self.target_unreadable)
        else:
            merged = quick_merge(
                src_entries, tgt_entries, quick, target_unreadable=self.target_unreadable
            )
        prefix = self.prefix
        sink.tally.skipped_special += merged.specials
        sink.identical(self.rel, "/".join(merged.identical))
        for verdict, name, reason in merged.verdicts:
            sink.verdict(verdict, prefix + name.encode("latin-1"), reason)
        sink.settled(len(merged.identical) + len(merged.verdicts))
        if merged.to_hash:
            self.pairs += merged.to_hash
            self.outcomes[SOURCE] += [(s.value, None) for s, _ in merged.to_hash]
            self.outcomes[TARGET] += [(t.value, None) for _, t in merged.to_hash]
        inherited, blind = self.target_unreadable, merged.blind
        return [
            Folder(prefix + name.encode("latin-1"), on_src, on_tgt,
                   (inherited or blind.get(name)) if on_src and not on_tgt else None)
            for name, on_src, on_tgt in merged.subdirs
        ]  # fmt: skip

    def _entries(self, rows: list[Row], rules: ExcludeRules) -> list[Entry]:
        """Listed entries that are not excluded."""
        entries = typed(rows)
        if not rules:
            return entries
        prefix, excluded = self.prefix, rules.excluded
        return [
            e for e in entries if not excluded(prefix + e.name.encode("latin-1"), e.kind is DIR)
        ]

    def unread(self, side: Side, start: int = 0) -> list[int]:
        """The pairs from `start` on whose file on `side` is still to be read."""
        outcomes = self.outcomes[side]
        return [i for i in range(start, len(outcomes)) if outcomes[i][0] is None]

    def record(self, side: Side, indexes: list[int], answer: Digests | str) -> None:
        """A hash request's answer for the pairs at `indexes` (a string: why it failed)."""
        outcomes = self.outcomes[side]
        if isinstance(answer, str):
            for i in indexes:
                outcomes[i] = (None, answer)
            return
        for i, digest in zip(indexes, answer.digests):
            outcomes[i] = (digest, None)
        for position, reason in answer.errors.items():
            outcomes[indexes[position]] = (None, reason)

    def judge(self, sink: ResultSink) -> None:
        """The verdicts of the pairs, once both sides' files were read (or failed)."""
        same: list[str] = []
        pairs = zip(self.pairs, self.outcomes[SOURCE], self.outcomes[TARGET])
        for (s, _), (sd, se), (td, te) in pairs:
            if se is None and te is None and sd == td:
                same.append(s.name)
                continue
            verdict, reason = judge_digests(sd, se, td, te)
            sink.verdict(verdict, self.prefix + s.name.encode("latin-1"), reason)
        sink.identical(self.rel, "/".join(same))
        sink.settled(len(self.pairs))
        self.pairs, self.outcomes = [], {SOURCE: [], TARGET: []}
