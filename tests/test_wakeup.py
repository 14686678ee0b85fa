"""The daemon's wake-up: a self-pipe that threads and signals write to, and signal routing that
is undone afterwards."""

from __future__ import annotations

import os
import signal
import threading
import time

from agent.service.wakeup import Waker, install_signals


def test_a_wake_from_another_thread_ends_the_wait_at_once() -> None:
    waker = Waker()
    try:
        threading.Timer(0.05, waker.wake).start()
        started = time.monotonic()
        waker.wait(10)
        assert time.monotonic() - started < 5
        started = time.monotonic()
        waker.wait(0.1)  # the wake was consumed: this one times out
        assert time.monotonic() - started >= 0.09
        for _ in range(100_000):  # a full pipe never blocks the waker
            waker.wake()
        waker.wait(0)
    finally:
        waker.close()


def test_signals_reach_the_handler_and_wake_the_loop_until_restored() -> None:
    waker = Waker()
    seen: list[int] = []
    before = signal.getsignal(signal.SIGHUP)
    restore = install_signals(lambda signum, frame: seen.append(signum), waker.w)
    assert restore is not None  # pytest runs tests on the main thread
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        started = time.monotonic()
        waker.wait(10)  # the signal's byte arrives through the pipe
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 5
        while not seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert seen == [signal.SIGHUP]
    finally:
        restore()
        waker.close()
    assert signal.getsignal(signal.SIGHUP) == before


def test_signals_are_left_alone_off_the_main_thread() -> None:
    results: list[object] = []
    thread = threading.Thread(target=lambda: results.append(install_signals(print, -1)))
    thread.start()
    thread.join()
    assert results == [None]
