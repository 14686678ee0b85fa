"""Pure comparison rules: merge two sorted directory listings into verdicts and further work.

An entry is a list as the helper's scan sends it: [name, kind, size, value], and for a file
not yet hashed also its mtime_ns. Kinds: "f" file (value: its digest, or None when it must
still be read), "l" symlink (value: where it points), "d" directory, "s" socket/FIFO/device,
"p" a directory not to enter (pseudo filesystem, other filesystem), "e" cannot be examined
(value: why), "gone" vanished while being listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List

from ..model import Verdict

Entry = List[Any]
NAME, KIND, SIZE, VALUE, MTIME = range(5)
COMPARED = ("f", "l")  # the kinds that are counted


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
        if j >= nt or (i < ns and src[i][NAME] < tgt[j][NAME]):
            _source_only(out, src[i], target_unreadable)
            i += 1
        elif i >= ns or tgt[j][NAME] < src[i][NAME]:
            _target_only(out, tgt[j])
            j += 1
        else:
            _both(out, src[i], tgt[j])
            i += 1
            j += 1
    return out


def _same_names(src: list[Entry], tgt: list[Entry]) -> bool:
    return all(s[NAME] == t[NAME] for s, t in zip(src, tgt))


def _merge_aligned(out: Merged, src: list[Entry], tgt: list[Entry]) -> None:
    """The common case of a migrated copy: the same names on both sides."""
    for s, t in zip(src, tgt):
        if s[KIND] == "f" and t[KIND] == "f" and s[SIZE] == t[SIZE] and s[SIZE]:
            _same_size(out, s, t)
        else:
            _both(out, s, t)


def _source_only(out: Merged, s: Entry, target_unreadable: str | None) -> None:
    kind = s[KIND]
    if kind in COMPARED:
        if target_unreadable:
            out.verdicts.append((Verdict.ERROR, s[NAME], f"target: {target_unreadable}"))
        else:
            out.verdicts.append((Verdict.MISSING, s[NAME], None))
    elif kind == "d":
        out.subdirs.append((s[NAME], True, False))
    elif kind == "e":
        out.verdicts.append((Verdict.ERROR, s[NAME], f"source: {s[VALUE]}"))
    elif kind == "s":
        out.specials += 1


def _target_only(out: Merged, t: Entry) -> None:
    kind = t[KIND]
    if kind in COMPARED:
        out.verdicts.append((Verdict.MORE, t[NAME], None))
    elif kind == "d":
        out.subdirs.append((t[NAME], False, True))
    elif kind == "e":
        # Something is there that could not be examined: never call that consistent.
        out.verdicts.append((Verdict.MORE, t[NAME], f"target: {t[VALUE]}"))


def _both(out: Merged, s: Entry, t: Entry) -> None:
    skind, tkind = s[KIND], t[KIND]
    if skind == "gone":
        _target_only(out, t)
        return
    if tkind == "gone":
        _source_only(out, s, None)
        return
    if skind == "p" or tkind == "p":
        return  # not entered on one side, so not on the other either
    if skind == "d":
        if tkind == "d":
            out.subdirs.append((s[NAME], True, True))
            return
        out.subdirs.append((s[NAME], True, False))
        if tkind == "e":  # what is under it on the source cannot be called missing
            out.blind[s[NAME]] = f"{t[VALUE]}"
        if tkind in COMPARED or tkind == "e":
            _target_only(out, t)  # no file at this path on the source
        return
    if skind == "s":
        out.specials += 1
        if tkind == "d":
            out.subdirs.append((t[NAME], False, True))
        elif tkind in COMPARED or tkind == "e":
            _target_only(out, t)
        return
    if skind == "e":
        # One entry for whatever is here: the target's side of it is not counted again.
        out.verdicts.append((Verdict.ERROR, s[NAME], f"source: {s[VALUE]}"))
        return
    # The source holds a file or symlink here.
    if tkind == "e":
        out.verdicts.append((Verdict.ERROR, s[NAME], f"target: {t[VALUE]}"))
    elif tkind != skind:
        out.verdicts.append((Verdict.DIFFERENT, s[NAME], None))
        if tkind == "d":
            out.subdirs.append((t[NAME], False, True))
    elif skind == "l":
        _equal_if(out, s[VALUE] == t[VALUE], s[NAME])
    elif s[SIZE] != t[SIZE]:
        out.verdicts.append((Verdict.DIFFERENT, s[NAME], None))
    elif s[SIZE] == 0:
        out.identical.append(s[NAME])  # nothing to read
    else:
        _same_size(out, s, t)


def _same_size(out: Merged, s: Entry, t: Entry) -> None:
    if s[VALUE] is None or t[VALUE] is None:
        out.to_hash.append((s, t))
    else:
        _equal_if(out, s[VALUE] == t[VALUE], s[NAME])


def _equal_if(out: Merged, same: bool, name: str) -> None:
    if same:
        out.identical.append(name)
    else:
        out.verdicts.append((Verdict.DIFFERENT, name, None))


def judge_digests(
    src_digest: str | None, src_error: str | None, tgt_digest: str | None, tgt_error: str | None
) -> tuple[Verdict, str | None]:
    """The verdict for a same-size file pair once both sides were hashed (or failed)."""
    if src_error:
        return Verdict.ERROR, f"source: {src_error}"
    if tgt_error:
        return Verdict.ERROR, f"target: {tgt_error}"
    return (Verdict.IDENTICAL if src_digest == tgt_digest else Verdict.DIFFERENT), None
