"""Log lines: one per event, journald priorities, JSON fields, and no secrets."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator

import pytest

from agent.secret import Secret
from agent.service.logs import setup_logging, stderr_is_journal

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def emit(fmt: str, environ: dict[str, str] | None = None, stream: io.StringIO | None = None) -> str:
    stream = stream or io.StringIO()
    setup_logging(fmt, stream=stream, environ=environ or {})
    log = logging.getLogger("agent.service.daemon")
    log.info(
        "verified %s: %d files\nsecond line", "/srv", 12,
        extra={"ctx": {"directory": "/srv", "total": 12, "elapsed": 0.5}},
    )  # fmt: skip
    log.warning("token is %r", Secret("s3cr3t"))
    return stream.getvalue()


def test_text_is_one_line_per_event(restore_root: None) -> None:
    lines = emit("text").splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO agent.service.daemon: verified /srv: 12 files\\nsecond line")
    assert "s3cr3t" not in lines[1] and "****" in lines[1]


def test_json_carries_the_context_fields(restore_root: None) -> None:
    records = [json.loads(line) for line in emit("json").splitlines()]
    assert records[0]["level"] == "info"
    assert records[0]["directory"] == "/srv" and records[0]["total"] == 12
    assert records[0]["msg"] == "verified /srv: 12 files\nsecond line"
    assert "s3cr3t" not in json.dumps(records)


def test_journal_stream_gets_syslog_priorities(restore_root: None, tmp_path) -> None:
    with open(tmp_path / "stream", "w+") as stream:
        st = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stderr_is_journal(environ, stream)
        setup_logging("text", stream=stream, environ=environ)
        logging.getLogger("x").warning("careful")
        stream.seek(0)
        assert stream.read() == "<4>WARNING x: careful\n"
    assert not stderr_is_journal({"JOURNAL_STREAM": "1:2"}, io.StringIO())


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("xml")
