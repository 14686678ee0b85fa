"""The terminal side of the commands: a progress line on stderr, and output to a reader that
may go away (`smsagent verify | head -1`), which is no error for a Unix tool."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import IO

from . import output


class Progress:
    """A one-line progress display, refreshed at most five times a second."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def __call__(self, dir_check: str, files: int, nbytes: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.2:
            return
        self.last = now
        text = output.progress_line(dir_check, files, nbytes, now - self.started)
        self.stream.write("\r\x1b[K" + text[:200])
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Output to a reader that may close its end (`| head -1`): that is not an error."""
    try:
        yield
    except BrokenPipeError:
        silence_stdout()


def silence_stdout() -> None:
    # Later writes, and Python's flush at exit, would fail again on the closed pipe.
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
