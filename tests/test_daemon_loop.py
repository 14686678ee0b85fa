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


class SlowEngine:
    """Takes `seconds` per run and records overlaps; stands in for run_verification."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.running = 0
        self.overlaps = 0
        self.calls: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, config, directories, *, stop=None, **_: object) -> list[DirResult]:
        with self.lock:
            self.running += 1
            self.overlaps += self.running > 1
            self.calls.append([d.path for d in directories])
        try:
            assert stop is not None
            stop.wait(self.seconds)
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
    engine = SlowEngine(0.5)
    daemon = Daemon(config, None, verify=engine, notifier=Notifier(None), environ={})
    runner = threading.Thread(target=daemon.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        time.sleep(1.8)
    finally:
        daemon.request_stop()
        runner.join(10)
    assert not runner.is_alive()
    assert engine.overlaps == 0
    # 0.5 s runs against a 0.1 s interval: about 3 runs, not 18, each with both directories.
    assert 2 <= len(engine.calls) <= 4
    assert all(call == ["/a", "/b"] for call in engine.calls)
