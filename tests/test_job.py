"""The daemon's verification job: one run at a time, queued for SMS, never raising, and
stopped through its cancel handle."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest

from agent.config import AgentConfig, ScheduleConfig, parse_config
from agent.errors import TargetError
from agent.model import DirCounts, DirResult
from agent.service.job import Job, run_unaffected, summarize, verify_and_queue
from agent.sms.outbox import Outbox
from agent.verify.cancel import Cancel

pytestmark = pytest.mark.usefixtures("no_leaked_threads")


def config_for(tmp_path: Path) -> AgentConfig:
    return parse_config({"state_dir": str(tmp_path / "state"), "target": "/t",
                         "endpoint": "http://127.0.0.1:9", "task_id": "T",
                         "directories": ["/a", "/b"]})  # fmt: skip


def result(path: str, error: str | None = None, different: int = 0) -> DirResult:
    counts = DirCounts(total=2, identical=2 - different, different=different)
    return DirResult(path, "/t" + path, counts, 0.5, error=error)


def test_summarize() -> None:
    results = [result("/a"), result("/b", different=1), result("/c", error="gone")]
    assert summarize(results, 1.25) == (
        "3 verified in 1.2s: 1 consistent, 1 with differences, 1 not verified")  # fmt: skip


def test_a_run_is_queued_for_sms(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    done = verify_and_queue(lambda c, d, stop: [result(x.path) for x in d], config,
                            config.directories, Cancel())  # fmt: skip
    assert (done.paths, done.queued) == (("/a", "/b"), 2)
    assert done.summary.startswith("2 verified in")
    with Outbox(config.state_dir) as box:
        assert sorted(p.entry.dir_check for p in box.pending()) == ["/a", "/b"]


def test_a_stopped_run_queues_only_what_finished(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    cancel = Cancel()

    def verify(c: AgentConfig, directories: object, stop: Cancel) -> list[DirResult]:
        stop.set()  # the stop came while /b was being verified
        return [result("/a"), result("/b", error="interrupted")]

    done = verify_and_queue(verify, config, config.directories, cancel)
    assert done.queued == 1
    with Outbox(config.state_dir) as box:
        assert [p.entry.dir_check for p in box.pending()] == ["/a"]


@pytest.mark.parametrize(("failure", "summary"), [
    (TargetError("no route to host"), "failed: no route to host"),
    (RuntimeError("a bug"), "failed with an internal error"),
])  # fmt: skip
def test_a_failing_run_never_raises(tmp_path: Path, failure: Exception, summary: str) -> None:
    config = config_for(tmp_path)

    def verify(*args: object, **kwargs: object) -> list[DirResult]:
        raise failure

    done = verify_and_queue(verify, config, config.directories, Cancel())
    assert (done.queued, done.summary) == (0, summary)


def test_job_runs_on_its_thread_and_stops_through_its_cancel(tmp_path: Path) -> None:
    config = config_for(tmp_path)
    woke = threading.Semaphore(0)
    started = threading.Event()

    def verify(c: AgentConfig, directories: object, stop: Cancel) -> list[DirResult]:
        started.set()
        stop.wait(30)  # until the job is stopped
        return []

    job = Job(verify, woke.release, lambda: 0.0)
    assert not job.busy and job.finished() is None
    job.start(config, config.directories)
    assert job.busy and started.wait(10)
    assert job.finished() is None  # still running
    job.stop(grace=5, deadline=10)
    assert woke.acquire(timeout=10)
    done = job.finished()
    assert done is not None and done.summary == "interrupted" and not job.busy


@pytest.mark.parametrize(("change", "unaffected"), [
    ({}, True),
    ({"schedule": {"interval": "1h"}}, True),  # when runs start, not what they do
    ({"upload": {"backoff_max": "1s"}, "metrics": {"textfile": "/m.prom"}}, True),
    ({"directories": ["/b", "/a", "/c"]}, True),  # another directory, and another order
    ({"directories": ["/a"]}, False),  # /b is no longer to be verified
    ({"exclude": ["*.tmp"]}, False),
    ({"target": "/elsewhere"}, False),
    ({"limits": {"read_mb_per_s": 5}}, False),
    ({"task_id": "U"}, False),  # the results belong to another task
    ({"state_dir": "/other"}, False),
    ({"mode": "quick"}, False),
])  # fmt: skip
def test_a_reload_leaves_a_run_alone_only_when_it_changes_nothing_the_run_does(
    tmp_path: Path, change: dict[str, object], unaffected: bool
) -> None:
    old = config_for(tmp_path)
    raw = {"state_dir": str(tmp_path / "state"), "target": "/t",
           "endpoint": "http://127.0.0.1:9", "task_id": "T", "directories": ["/a", "/b"]}  # fmt: skip
    new = parse_config({**raw, **change})
    assert run_unaffected(old, new, ["/a", "/b"]) is unaffected


def test_a_run_that_reads_the_task_is_never_left_alone(tmp_path: Path) -> None:
    old = config_for(tmp_path)
    reads = replace(old, directories_from_task=True)
    assert reads.reads_task
    assert not run_unaffected(reads, reads, ["/a", "/b"])


class HeldRun:
    """Stands in for run_verification as the real one behaves on a stop: /a is finished at
    once, /b is held until the run is stopped, and then carries the interruption."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.stop_reason = ""

    def __call__(self, c: AgentConfig, directories: object, stop: Cancel) -> list[DirResult]:
        self.started.set()
        stop.wait(30)
        self.stop_reason = stop.reason
        return [result("/a"), result("/b", error="interrupted before the directory was fully "
                                                 "verified")]  # fmt: skip


def held_job(tmp_path: Path) -> tuple[AgentConfig, Job, HeldRun, threading.Semaphore]:
    """A job whose run of /a and /b is under way; the semaphore is released when it ends."""
    config = config_for(tmp_path)
    woke = threading.Semaphore(0)
    run = HeldRun()
    job = Job(run, woke.release, lambda: 0.0)
    job.start(config, config.directories)
    assert run.started.wait(10)
    return config, job, run, woke


def test_a_reload_ends_the_run_queues_what_it_finished_and_names_all_to_redo(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config, job, run, woke = held_job(tmp_path)
    with caplog.at_level("INFO"):
        job.supersede(config, replace(config, exclude=("*.tmp",)), "SIGHUP")
        assert woke.acquire(timeout=10), "the run did not end on the reload"
    done = job.finished()
    assert done is not None and not job.busy
    assert done.superseded == ("/a", "/b") and done.queued == 1 and run.stop_reason == "reload"
    with Outbox(config.state_dir) as box:  # the interrupted /b is neither queued nor recorded
        assert [p.entry.dir_check for p in box.pending()] == ["/a"]
        assert [r.dir_check for r in box.last_results()] == ["/a"]
    assert "SIGHUP: the verification in progress is cancelled; its 2 directories" in caplog.text
    assert "reloading: queueing the 1 directory verified before the reload" in caplog.text


def test_a_reload_that_changes_nothing_the_run_does_lets_it_finish(tmp_path: Path) -> None:
    config, job, run, woke = held_job(tmp_path)
    job.supersede(config, replace(config, schedule=ScheduleConfig(interval=60)), "SIGHUP")
    assert not woke.acquire(timeout=0.5), "the run was cut short"
    job.stop(grace=5, deadline=10)
    assert woke.acquire(timeout=10)
    done = job.finished()
    assert done is not None and done.superseded == () and run.stop_reason == "stop"
