"""The control loop in-process, with a slow stand-in for the engine: one run at a time."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import ScheduleConfig, parse_config
from agent.model import DirCounts, DirResult
from agent.service.daemon import Daemon
from agent.service.notify import Notifier

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


class GatedEngine:
    """Stands in for run_verification: each run waits until the test lets it finish (or the
    run is stopped), and records overlaps."""

    def __init__(self) -> None:
        self.running = 0
        self.overlaps = 0
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()
        self.started = threading.Semaphore(0)
        self.finish = threading.Semaphore(0)

    def __call__(self, config, directories, *, stop=None, **_: object) -> list[DirResult]:
        with self.lock:
            self.running += 1
            self.overlaps += self.running > 1
            self.calls.append([d.path for d in directories])
        self.started.release()
        try:
            assert stop is not None
            while not self.finish.acquire(timeout=0.01) and not stop.is_set():
                pass
            return [DirResult(d.path, "/t" + d.path, DirCounts(total=1, identical=1), 0.0)
                    for d in directories]  # fmt: skip
        finally:
            with self.lock:
                self.running -= 1


def test_a_run_longer_than_the_interval_is_never_started_twice(tmp_path: Path) -> None:
    config = parse_config(
        {
            "state_dir": str(tmp_path / "state"),
            "target": "/t",
            "directories": ["/a", "/b"],
        }
    )
    # Shorter than the file allows (1 s), to keep the test quick.
    config = replace(config, schedule=ScheduleConfig(interval=0.1, jitter=0))
    engine = GatedEngine()
    daemon = Daemon(config, None, verify=engine, notifier=Notifier(None), environ={})
    runner = threading.Thread(target=daemon.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        for run in range(1, 4):
            assert engine.started.acquire(timeout=10), f"run {run} never started"
            # Five intervals pass while this run is held: none of them starts another.
            time.sleep(0.5)
            assert len(engine.calls) == run and engine.running == 1
            engine.finish.release()
        assert engine.started.acquire(timeout=10), "the run after the third never started"
    finally:
        daemon.request_stop()  # the fourth run ends through its stop handle
        runner.join(10)
    assert not runner.is_alive()
    assert engine.overlaps == 0
    assert engine.calls == [["/a", "/b"]] * 4
