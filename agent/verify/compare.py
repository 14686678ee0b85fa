"""Pure comparison rules: merge two sorted directory listings into verdicts and further work.

Entries are typed here (the channel decodes the helper's compact lists into them). A name is
the text the helper sent: each byte of the file name as one latin-1 character, so names sort
in byte order and `name.encode("latin-1")` gives the bytes back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import NamedTuple

from ..model import Verdict


class Kind(enum.Enum):
    """What a listed entry is; the values are the helper's wire letters."""

    FILE = "f"  # value: its digest, or None when it must still be read
    LINK = "l"  # value: where it points
    DIR = "d"
    SPECIAL = "s"  # socket, FIFO or device: never compared
    NOT_ENTERED = "p"  # a directory not to enter (pseudo filesystem, other filesystem)
    UNREADABLE = "e"  # cannot be examined; value: why
    GONE = "gone"  # vanished while being listed


class Side(enum.Enum):
    SOURCE = "source"
    TARGET = "target"


class Entry(NamedTuple):
    name: str
    kind: Kind
    size: int
    value: str | None
    mtime: int = 0  # of a file still to be read: the read must find it unchanged


# Module-level names: the loops below run once per entry of a tree.
FILE, LINK, DIR, SPECIAL = Kind.FILE, Kind.LINK, Kind.DIR, Kind.SPECIAL
NOT_ENTERED, UNREADABLE, GONE = Kind.NOT_ENTERED, Kind.UNREADABLE, Kind.GONE
COMPARED = (FILE, LINK)  # the kinds that are counted (a tuple: enum hashing is slow)


@dataclass
class Merged:
    """What one directory's two listings decide, and what they leave to do."""

    identical: list[str] = field(default_factory=list)  # the common case, kept apart
    verdicts: list[tuple[Verdict, str, str | None]] = field(default_factory=list)
    subdirs: list[tuple[str, bool, bool]] = field(default_factory=list)  # name, on src, on tgt
    # Same-size file pairs of which at least one side still has to be read.
    to_hash: list[tuple[Entry, Entry]] = field(default_factory=list)
    specials: int = 0  # sockets, FIFOs and devices on the source, never compared
    # Source subdirectories whose target counterpart could not be examined, with why.
    blind: dict[str, str] = field(default_factory=dict)


def merge(src: list[Entry], tgt: list[Entry], *, target_unreadable: str | None = None) -> Merged:
    """Walk both sorted listings at once; `target_unreadable` marks a target that could not
    be listed here, so source files are errors, not missing."""
    out = Merged()
    if not target_unreadable and len(src) == len(tgt) and _same_names(src, tgt):
        _merge_aligned(out, src, tgt)
        return out
    i = j = 0
    ns, nt = len(src), len(tgt)
    while i < ns or j < nt:
        if j >= nt or (i < ns and src[i].name < tgt[j].name):
            _source_only(out, src[i], target_unreadable)
            i += 1
        elif i >= ns or tgt[j].name < src[i].name:
            _target_only(out, tgt[j])
            j += 1
        else:
            _both(out, src[i], tgt[j])
            i += 1
            j += 1
    return out


def _same_names(src: list[Entry], tgt: list[Entry]) -> bool:
    return all(s.name == t.name for s, t in zip(src, tgt))


def _merge_aligned(out: Merged, src: list[Entry], tgt: list[Entry]) -> None:
    """The common case of a migrated copy: the same names on both sides."""
    for s, t in zip(src, tgt):
        if s.kind is FILE and t.kind is FILE and s.size == t.size and s.size:
            _same_size(out, s, t)
        else:
            _both(out, s, t)


def _source_only(out: Merged, s: Entry, target_unreadable: str | None) -> None:
    kind = s.kind
    if kind in COMPARED:
        if target_unreadable:
            out.verdicts.append((Verdict.ERROR, s.name, f"target: {target_unreadable}"))
        else:
            out.verdicts.append((Verdict.MISSING, s.name, None))
    elif kind is DIR:
        out.subdirs.append((s.name, True, False))
    elif kind is UNREADABLE:
        out.verdicts.append((Verdict.ERROR, s.name, f"source: {s.value}"))
    elif kind is SPECIAL:
        out.specials += 1


def _target_only(out: Merged, t: Entry) -> None:
    kind = t.kind
    if kind in COMPARED:
        out.verdicts.append((Verdict.MORE, t.name, None))
    elif kind is DIR:
        out.subdirs.append((t.name, False, True))
    elif kind is UNREADABLE:
        # Something is there that could not be examined: never call that consistent.
        out.verdicts.append((Verdict.MORE, t.name, f"target: {t.value}"))


def _both(out: Merged, s: Entry, t: Entry) -> None:
    skind, tkind = s.kind, t.kind
    if skind is GONE:
        _target_only(out, t)
        return
    if tkind is GONE:
        _source_only(out, s, None)
        return
    if skind is NOT_ENTERED or tkind is NOT_ENTERED:
        return  # not entered on one side, so not on the other either
    if skind is DIR:
        if tkind is DIR:
            out.subdirs.append((s.name, True, True))
            return
        out.subdirs.append((s.name, True, False))
        if tkind is UNREADABLE:  # what is under it on the source cannot be called missing
            out.blind[s.name] = f"{t.value}"
        if tkind in COMPARED or tkind is UNREADABLE:
            _target_only(out, t)  # no file at this path on the source
        return
    if skind is SPECIAL:
        out.specials += 1
        if tkind is DIR:
            out.subdirs.append((t.name, False, True))
        elif tkind in COMPARED or tkind is UNREADABLE:
            _target_only(out, t)
        return
    if skind is UNREADABLE:
        # One entry for whatever is here: the target's side of it is not counted again.
        out.verdicts.append((Verdict.ERROR, s.name, f"source: {s.value}"))
        return
    # The source holds a file or symlink here.
    if tkind is UNREADABLE:
        out.verdicts.append((Verdict.ERROR, s.name, f"target: {t.value}"))
    elif tkind is not skind:
        out.verdicts.append((Verdict.DIFFERENT, s.name, None))
        if tkind is DIR:
            out.subdirs.append((t.name, False, True))
    elif skind is LINK:
        _equal_if(out, s.value == t.value, s.name)
    elif s.size != t.size:
        out.verdicts.append((Verdict.DIFFERENT, s.name, None))
    elif s.size == 0:
        out.identical.append(s.name)  # nothing to read
    else:
        _same_size(out, s, t)


def _same_size(out: Merged, s: Entry, t: Entry) -> None:
    if s.value is None or t.value is None:
        out.to_hash.append((s, t))
    else:
        _equal_if(out, s.value == t.value, s.name)


def _equal_if(out: Merged, same: bool, name: str) -> None:
    if same:
        out.identical.append(name)
    else:
        out.verdicts.append((Verdict.DIFFERENT, name, None))


def quick_merge(
    src: list[Entry], tgt: list[Entry], window: int, *, target_unreadable: str | None = None
) -> Merged:
    """The quick check (`mode: quick`): a file pair of the same size is identical when the
    mtimes, in whole seconds, are at most `window` apart (rsync's --modify-window); nothing
    is left to read. The helper sends every file's mtime in this mode, empty files included."""
    out = merge(src, tgt, target_unreadable=target_unreadable)
    pairs, out.to_hash = out.to_hash, []
    for s, t in pairs:
        _equal_if(out, _close(s, t, window), s.name)
    empty_src = {e.name: e for e in src if e.kind is FILE and e.size == 0}
    if empty_src:
        empty_tgt = {e.name: e for e in tgt if e.kind is FILE and e.size == 0}
        apart = {
            name
            for name, s in empty_src.items()
            if name in empty_tgt and not _close(s, empty_tgt[name], window)
        }
        if apart:
            out.identical = [name for name in out.identical if name not in apart]
            out.verdicts += [(Verdict.DIFFERENT, name, None) for name in sorted(apart)]
    return out


def _close(s: Entry, t: Entry, window: int) -> bool:
    return abs(s.mtime // 1_000_000_000 - t.mtime // 1_000_000_000) <= window


def judge_digests(
    src_digest: str | None, src_error: str | None, tgt_digest: str | None, tgt_error: str | None
) -> tuple[Verdict, str | None]:
    """The verdict for a same-size file pair once both sides were hashed (or failed)."""
    if src_error:
        return Verdict.ERROR, f"source: {src_error}"
    if tgt_error:
        return Verdict.ERROR, f"target: {tgt_error}"
    return (Verdict.IDENTICAL if src_digest == tgt_digest else Verdict.DIFFERENT), None
