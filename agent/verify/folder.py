"""One directory in flight: its two sides' scans merged into verdicts and subdirectories,
and its same-size file pairs waiting for their digests. The engine schedules the requests;
this decides what their answers mean."""

from __future__ import annotations

from typing import Optional, Tuple

from ..model import Verdict
from .compare import DIR, Entry, Side, judge_digests, merge, quick_merge
from .excludes import ExcludeRules
from .report import ResultSink
from .wire import Digests, DirScan, ScanFailure, entries_of

SOURCE, TARGET = Side.SOURCE, Side.TARGET
# Per same-size pair still to be read, each side's outcome: (digest, None) or (None, why).
Outcome = Tuple[Optional[str], Optional[str]]


class Folder:
    """One relative directory being compared."""

    __slots__ = ("rel", "prefix", "on_src", "on_tgt", "target_unreadable", "source_unreadable",
                 "target_unlisted", "scans", "waiting", "pairs", "outcomes")  # fmt: skip

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
        self.outcomes: dict[Side, list[Outcome]] = {}

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
            self.pairs = merged.to_hash
            self.outcomes = {
                SOURCE: [(s.value, None) for s, _ in self.pairs],
                TARGET: [(t.value, None) for _, t in self.pairs],
            }
        inherited, blind = self.target_unreadable, merged.blind
        return [
            Folder(prefix + name.encode("latin-1"), on_src, on_tgt,
                   (inherited or blind.get(name)) if on_src and not on_tgt else None)
            for name, on_src, on_tgt in merged.subdirs
        ]  # fmt: skip

    def _entries(self, scan: DirScan | None, rules: ExcludeRules) -> list[Entry]:
        """A side's scanned entries that are not excluded (none where it has no scan)."""
        if scan is None:
            return []
        entries = entries_of(scan.listing)
        if not rules:
            return entries
        prefix, excluded = self.prefix, rules.excluded
        return [
            e for e in entries if not excluded(prefix + e.name.encode("latin-1"), e.kind is DIR)
        ]

    def unread(self, side: Side) -> list[int]:
        """The pairs whose file on `side` is still to be read."""
        return [i for i, (digest, _) in enumerate(self.outcomes[side]) if digest is None]

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
        self.pairs, self.outcomes = [], {}
