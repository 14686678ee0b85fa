"""A brute-force statement of the counting rules, to check the engine against."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Collection


def snapshot(root: bytes, excluded: Callable[[bytes, bool], bool]) -> dict[bytes, tuple]:
    """Every entry under root: rel path -> (kind, content or link text), never following links.
    Each directory is opened relative to its parent's descriptor, so any depth is read."""
    out: dict[bytes, tuple] = {}

    def visit(fd: int, rel: bytes) -> None:
        for name in sorted(os.fsencode(n) for n in os.listdir(fd)):
            child = rel + b"/" + name if rel else name
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if excluded(child, True):
                    continue
                out[child] = ("d", None)
                inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    visit(inner, child)
                finally:
                    os.close(inner)
            elif excluded(child, False):
                continue
            elif stat.S_ISLNK(st.st_mode):
                out[child] = ("l", os.readlink(name, dir_fd=fd))
            elif stat.S_ISREG(st.st_mode):
                handle = os.open(name, os.O_RDONLY, dir_fd=fd)
                with os.fdopen(handle, "rb") as stream:
                    out[child] = ("f", stream.read())
            else:
                out[child] = ("s", None)

    if os.path.isdir(root):
        top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            visit(top, b"")
        finally:
            os.close(top)
    return out


def _under(rel: bytes, folders: Collection[bytes]) -> bytes | None:
    """The folder of `folders` that holds `rel` (or is it), if any."""
    for folder in folders:
        if not folder or rel == folder or rel.startswith(folder + b"/"):
            return folder
    return None


def expected_counts(
    src: bytes,
    tgt: bytes,
    excluded: Callable[[bytes, bool], bool] = lambda p, d: False,
    *,
    unlistable_src: Collection[bytes] = (),
    unlistable_tgt: Collection[bytes] = (),
) -> dict[str, int]:
    """The counts, read with every permission; `unlistable_*` are the directories (relative,
    b"" for the root) that the agent cannot list on that side. The rules for them: a source
    directory that cannot be listed is one different entry, and nothing under it on either
    side is counted; a target one is one entry more at the target, and each source file
    under it is different. Each of these is an error ("errors" in the result)."""
    s, t = snapshot(src, excluded), snapshot(tgt, excluded)
    counts = {"total": 0, "identical": 0, "different": 0, "missing": 0, "more": 0}
    errors = 0
    hidden_src = [d for d in unlistable_src if _under(d, [x for x in unlistable_src if x != d])
                  is None]  # fmt: skip
    for _folder in hidden_src:
        counts["total"] += 1
        counts["different"] += 1
        errors += 1
    blind_tgt = [d for d in unlistable_tgt if _under(d, hidden_src) is None]
    for _folder in blind_tgt:
        counts["more"] += 1
        errors += 1
    for rel, (kind, value) in s.items():
        if kind not in ("f", "l") or _under(rel, hidden_src) is not None:
            continue
        counts["total"] += 1
        other = t.get(rel)
        if _under(rel, blind_tgt) is not None:
            counts["different"] += 1
            errors += 1
        elif other is None:
            counts["missing"] += 1
        elif other == (kind, value):
            counts["identical"] += 1
        else:
            counts["different"] += 1
    for rel, (kind, _) in t.items():
        if _under(rel, hidden_src) is not None or _under(rel, blind_tgt) is not None:
            continue
        if kind in ("f", "l") and s.get(rel, ("",))[0] not in ("f", "l"):
            counts["more"] += 1
    if unlistable_src or unlistable_tgt:
        counts["errors"] = errors
    return counts
