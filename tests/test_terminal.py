"""The terminal side: a throttled progress line that clears itself, and a reader of stdout
that goes away is no error."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

from agent.terminal import Progress


def test_progress_is_one_line_refreshed_at_most_five_times_a_second() -> None:
    out = io.StringIO()
    progress = Progress(out)
    progress("/srv", 10, 2_000_000)
    progress("/srv", 11, 2_100_000)  # within 0.2 s of the first: not shown
    text = out.getvalue()
    assert text.count("\r\x1b[K") == 1 and "/srv: 10 files, 2.0 MB hashed" in text
    assert "\n" not in text
    progress.clear()
    assert out.getvalue().endswith("\r\x1b[K") and out.getvalue().count("\r\x1b[K") == 2


def test_nothing_shown_means_nothing_to_clear() -> None:
    out = io.StringIO()
    Progress(out).clear()
    assert out.getvalue() == ""


def test_a_reader_that_left_is_no_error() -> None:
    script = textwrap.dedent("""
        from agent.terminal import reader_may_leave
        with reader_may_leave():
            raise BrokenPipeError(32, "Broken pipe")
        print("later output goes nowhere")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"" and done.stderr == b""
