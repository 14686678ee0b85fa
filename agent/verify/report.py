"""How paths and results are shown: one escaping rule for reports, logs and JSON."""

from __future__ import annotations

import os
from typing import IO

from ..model import Verdict

_NAMED = {0x0A: "\\n", 0x09: "\\t", 0x0D: "\\r", 0x5C: "\\\\"}


def escape(name: bytes | str) -> str:
    """A file name as text: valid UTF-8 stays readable, control characters and invalid bytes
    become backslash escapes (`\\n`, `\\u0085`; `\\xff` only for a byte that is not UTF-8),
    and a backslash is doubled, so the text is unambiguous and fits on one line."""
    if isinstance(name, str):
        name = os.fsencode(name)
    text = name.decode("utf-8", "surrogateescape")
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code in _NAMED:
            out.append(_NAMED[code])
        elif not ch.isprintable():
            # \\u and \\U for characters, so \\x always means a raw byte.
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return "".join(out)


def join_display(dir_check: str, rel: bytes) -> str:
    """The source-side path of an entry, escaped: `/var` + `log/x` -> `/var/log/x`."""
    base = dir_check.rstrip("/")
    return f"{base}/{escape(rel)}" if rel else (base or "/")


class ReportWriter:
    """Writes one line per compared path in the style of `rclone check --combined`:
    `= ` identical, `* ` different, `+ ` missing at the target, `- ` more at the target,
    `! ` could not be verified (followed by a tab and the reason)."""

    def __init__(self, stream: IO[str]):
        self.stream = stream
        self.lines = 0

    def __call__(self, dir_check: str, verdict: Verdict, rel: bytes, reason: str | None) -> None:
        line = f"{verdict.value} {join_display(dir_check, rel)}"
        if reason:
            line += f"\t{reason}"
        self.stream.write(line + "\n")
        self.lines += 1

    def many(self, dir_check: str, verdict: Verdict, folder: bytes, names: str) -> None:
        """Lines for files of one folder with the same verdict and no reason, in one write.
        `names` are joined by "/" (which no file name holds), each byte one character."""
        head = f"{verdict.value} {dir_check.rstrip('/')}/"
        if folder:
            head += escape(folder) + "/"
        if names.isascii() and names.isprintable() and "\\" not in names:
            # Nothing to escape, the common case: the lines are made in one step.
            text = head + names.replace("/", "\n" + head) + "\n"
        else:
            text = "".join([f"{head}{escape(n.encode('latin-1'))}\n" for n in names.split("/")])
        self.stream.write(text)
        self.lines += names.count("/") + 1
