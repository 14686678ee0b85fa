"""A brute-force statement of the counting rules, to check the engine against."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable


def snapshot(root: bytes, excluded: Callable[[bytes, bool], bool]) -> dict[bytes, tuple]:
    """Every entry under root: rel path -> (kind, content or link text), never following links."""
    out: dict[bytes, tuple] = {}

    def visit(rel: bytes) -> None:
        folder = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(folder)):
            child = rel + b"/" + name if rel else name
            st = os.lstat(os.path.join(root, child))
            if stat.S_ISDIR(st.st_mode):
                if excluded(child, True):
                    continue
                out[child] = ("d", None)
                visit(child)
            elif excluded(child, False):
                continue
            elif stat.S_ISLNK(st.st_mode):
                out[child] = ("l", os.readlink(os.path.join(root, child)))
            elif stat.S_ISREG(st.st_mode):
                with open(os.path.join(root, child), "rb") as handle:
                    out[child] = ("f", handle.read())
            else:
                out[child] = ("s", None)

    if os.path.isdir(root):
        visit(b"")
    return out


def expected_counts(
    src: bytes, tgt: bytes, excluded: Callable[[bytes, bool], bool] = lambda p, d: False
) -> dict[str, int]:
    s, t = snapshot(src, excluded), snapshot(tgt, excluded)
    counts = {"total": 0, "identical": 0, "different": 0, "missing": 0, "more": 0}
    for rel, (kind, value) in s.items():
        if kind not in ("f", "l"):
            continue
        counts["total"] += 1
        other = t.get(rel)
        if other is None:
            counts["missing"] += 1
        elif other == (kind, value):
            counts["identical"] += 1
        else:
            counts["different"] += 1
    for rel, (kind, _) in t.items():
        if kind in ("f", "l") and s.get(rel, ("",))[0] not in ("f", "l"):
            counts["more"] += 1
    return counts
