"""How the daemon's control loop is woken: a self-pipe that signals (through set_wakeup_fd)
and other threads write to, so the loop sleeps in one select() and no lock is ever taken
inside a signal handler."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
from types import FrameType
from typing import Callable


class Waker:
    """A self-pipe: signals (via set_wakeup_fd) and threads wake the control loop through it."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full: the loop wakes anyway
            os.write(self.w, b"!")

    def wait(self, timeout: float) -> None:
        ready, _, _ = select.select([self.r], [], [], max(0.0, timeout))
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.r, 512):
                    pass

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


def install_signals(
    handler: Callable[[int, FrameType | None], None], wakeup_fd: int
) -> Callable[[], None] | None:
    """Route SIGTERM, SIGINT and SIGHUP to `handler`; returns how to undo it."""
    if threading.current_thread() is not threading.main_thread():
        return None
    old_fd = signal.set_wakeup_fd(wakeup_fd, warn_on_full_buffer=False)
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT,
                                                             signal.SIGHUP)}  # fmt: skip

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)
        signal.set_wakeup_fd(old_fd)

    return restore
