"""Gitignore-style exclude patterns, applied alike to the source and the target side.

A pattern without a slash matches a name at any depth (`*.tmp`, `cache`); one with a slash is
anchored at the verified directory (`logs/*.gz`, `/tmp`). A leading slash may also give an
absolute source path (`/var/log` excludes `log` when `/var` is verified). A trailing slash
matches directories only, `**` crosses directories, and `!` re-includes what an earlier pattern
excluded. An excluded directory is not entered at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[bytes]
    anchored: bool  # matched against the whole relative path, else against the name
    absolute: bool  # given with a leading slash: also tried against the absolute path
    dir_only: bool
    negate: bool


def _translate(body: str) -> bytes:
    """A glob body (no leading/trailing slash) as a regular expression over bytes."""
    out = []
    i = 0
    raw = body.encode("utf-8", "surrogateescape")
    n = len(raw)
    while i < n:
        c = raw[i : i + 1]
        if raw.startswith(b"**", i):
            at_start = i == 0 or raw[i - 1 : i] == b"/"
            after = raw[i + 2 : i + 3]
            if at_start and after == b"/":
                out.append(b"(?:.*/)?")  # `**/`: zero or more directories
                i += 3
                continue
            if at_start and i + 2 == n:
                out.append(b".*")  # trailing `/**`: everything inside
                i += 2
                continue
            out.append(b"[^/]*")
            i += 2
            continue
        if c == b"*":
            out.append(b"[^/]*")
        elif c == b"?":
            out.append(b"[^/]")
        elif c == b"[":
            # A `]` first in the class (after a `!` or `^`) is a member, not its end.
            first = i + 2 if raw[i + 1 : i + 2] in (b"!", b"^") else i + 1
            end = raw.find(b"]", first + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                inner = raw[i + 1 : end]
                if inner[:1] in (b"!", b"^"):
                    inner = b"^" + inner[1:] + b"/"  # as in git, no class matches a slash
                out.append(b"[" + inner.replace(b"\\", b"\\\\") + b"]")
                i = end
        elif c == b"\\" and i + 1 < n:
            i += 1
            out.append(re.escape(raw[i : i + 1]))
        else:
            out.append(re.escape(c))
        i += 1
    return b"".join(out)


def _trim(pattern: str) -> str:
    """The pattern without its trailing spaces, as git reads it: a space escaped with a
    backslash stays (`foo\\ ` is `foo` and a space), other whitespace is kept."""
    text = pattern.rstrip("\n")
    end = len(text)
    while end and text[end - 1] == " ":
        slashes = len(text[: end - 1]) - len(text[: end - 1].rstrip("\\"))
        if slashes % 2:  # escaped: this space and everything before it stay
            break
        end -= 1
    return text[:end]


def _compile(pattern: str) -> _Rule | None:
    text = _trim(pattern)
    if not text or text.startswith("#"):
        return None
    negate = text.startswith("!")
    if negate:
        text = text[1:]
    # One slash each end is syntax, as in git (`a//` is `a/` for directories: no match).
    dir_only = text.endswith("/")
    text = text[:-1] if dir_only else text
    absolute = text.startswith("/")
    body = text[1:] if absolute else text
    if not body:
        return None
    anchored = absolute or "/" in body
    regex = re.compile(b"^" + _translate(body) + b"$", re.DOTALL)
    return _Rule(regex, anchored, absolute, dir_only, negate)


class ExcludeRules:
    """Decides whether a path, relative to the verified directory `base`, is excluded."""

    def __init__(self, patterns: Iterable[str], base: str = "/"):
        self.patterns = tuple(patterns)
        self._rules = [rule for rule in map(_compile, self.patterns) if rule is not None]
        prefix = base.rstrip("/").lstrip("/").encode("utf-8", "surrogateescape")
        self._abs_prefix = prefix + b"/" if prefix else b""

    def __bool__(self) -> bool:
        return bool(self._rules)

    def excluded(self, rel: bytes, is_dir: bool) -> bool:
        """`rel` has no leading slash, e.g. b"log/syslog"."""
        result = False
        name = rel.rsplit(b"/", 1)[-1]
        for rule in self._rules:
            if rule.negate != result:
                continue  # only a rule that could change the answer needs testing
            if rule.dir_only and not is_dir:
                continue
            if rule.anchored:
                hit = rule.regex.match(rel) is not None
                if not hit and rule.absolute and self._abs_prefix:
                    hit = rule.regex.match(self._abs_prefix + rel) is not None
            else:
                hit = rule.regex.match(name) is not None
            if hit:
                result = not rule.negate
        return result
