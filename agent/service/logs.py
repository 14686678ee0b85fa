"""Set up logging to stderr: one line per event, for journald (text) or log shippers (json).

Callers add structured values with `extra={"ctx": {...}}`; the text format already carries them
in the message, the JSON format adds them as fields. Secrets never reach a log record: they are
`Secret` objects whose repr is masked, and nothing formats their value.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import IO, Any

UTC = timezone.utc  # datetime.UTC is 3.11

FORMATS = ("text", "json")

# journald reads a "<N>" prefix as the syslog priority of the line (SyslogLevelPrefix=yes).
_SYSLOG_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def _priority(levelno: int) -> int:
    for level, priority in sorted(_SYSLOG_PRIORITY.items(), reverse=True):
        if levelno >= level:
            return priority
    return 7


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    """`LEVEL logger: message`; timestamped unless journald, which stamps lines itself."""

    def __init__(self, *, journal: bool):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += " | " + self.formatException(record.exc_info)
        line = _one_line(line)
        if self.journal:
            return f"<{_priority(record.levelno)}>{line}"
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        return f"{stamp}Z {line}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the record's `ctx` fields."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        ctx = getattr(record, "ctx", None)
        if isinstance(ctx, Mapping):
            for key, value in ctx.items():
                data.setdefault(str(key), value)
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


def stderr_is_journal(environ: Mapping[str, str], stream: IO[str]) -> bool:
    """True when `stream` is the journal stream systemd connected ($JOURNAL_STREAM = dev:inode)."""
    expected = environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup_logging(
    fmt: str = "text",
    *,
    level: int = logging.INFO,
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
    replace_all: bool = False,
) -> logging.Handler:
    """Route every logger to one stderr handler in the chosen format; returns the handler.

    `replace_all` also drops handlers set up earlier (e.g. by `logging.basicConfig`).
    """
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    stream = stream if stream is not None else sys.stderr
    environ = environ if environ is not None else os.environ
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter(journal=stderr_is_journal(environ, stream)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if replace_all or getattr(h, "_smsagent", False)]:
        root.removeHandler(old)
    handler._smsagent = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Libraries' chatter (per-request lines, inotify internals) is not the operator's concern.
    for noisy in ("urllib3", "watchdog"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    return handler
