"""How a file name is shown and sent: one escaping rule for tables, reports, logs, JSON and
the `dir_check` posted to SMS."""

from __future__ import annotations

import os

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


def counted(count: int, one: str, many: str) -> str:
    """`1 directory`, `2 directories`: a count with its noun in the right number."""
    return f"{count:,} {one if count == 1 else many}"
