"""The daemon's verification job: one run at a time on its own thread, verified, queued for SMS
and summed up in one line, and stopped through the run's cancel handle."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, List

from ..config import AgentConfig, DirectoryConfig
from ..errors import AgentError
from ..model import DirResult
from ..names import counted
from ..sms import delivery
from ..verify.cancel import Cancel

if TYPE_CHECKING:
    from .taskfollow import TaskFollower

log = logging.getLogger(__name__)

Verify = Callable[..., List[DirResult]]


@dataclass(frozen=True)
class Finished:
    paths: tuple[str, ...]
    queued: int
    summary: str | None  # None: nothing was verified (only the task's settings were read)
    config: AgentConfig | None = None  # with the task's settings as just read


def result_fields(result: DirResult) -> dict[str, object]:
    """One directory's outcome as plain fields, for JSON logs."""
    c = result.counts
    return {
        "directory": result.dir_check,
        "total": c.total,
        "different": c.different,
        "missing": c.missing,
        "more": c.more,
        "errors": c.errors,
        "elapsed": round(result.elapsed, 3),
        "error": result.error,
    }


def summarize(results: Sequence[DirResult], elapsed: float) -> str:
    failed = sum(1 for r in results if r.error)
    different = sum(1 for r in results if not r.error and not r.counts.consistent)
    consistent = len(results) - failed - different
    return (
        f"{len(results)} verified in {elapsed:.1f}s: {consistent} consistent, "
        f"{different} with differences, {failed} not verified"
    )


def verify_and_queue(
    verify: Verify,
    config: AgentConfig,
    directories: Sequence[DirectoryConfig],
    cancel: Cancel,
    monotonic: Callable[[], float] = time.monotonic,
    on_queued: Callable[[Sequence[DirResult]], None] = lambda results: None,
) -> Finished:
    """One scheduled run: verify, then write the results to the outbox and hand them to
    `on_queued` (the metrics). Never raises."""
    paths = tuple(d.path for d in directories)
    started = monotonic()
    queued, summary = 0, "interrupted"
    try:
        results = verify(config, directories, stop=cancel)
        elapsed = monotonic() - started
        if cancel.is_set():
            # Directories finished before the stop are kept; the one cut short is not.
            results = [r for r in results if r.error is None]
            log.info("stopping: queueing the %s verified before the stop",
                     counted(len(results), "directory", "directories"))  # fmt: skip
        if results:
            summary = summarize(results, elapsed)
            report = delivery.enqueue(config, results)
            queued = report.queued
            on_queued(results)
            log.info(
                "%s; %d queued for SMS%s", summary, queued,
                f" ({report.reason})" if report.reason else "",
                extra={"ctx": {"elapsed": round(elapsed, 3), "queued": queued,
                               "results": [result_fields(r) for r in results]}},
            )  # fmt: skip
    except AgentError as exc:
        summary = f"failed: {exc}"
        log.error("verification of %s failed: %s", ", ".join(paths), exc)
    except Exception:  # the daemon outlives a bug in one run; the traceback is logged
        summary = "failed with an internal error"
        log.exception("verification of %s failed", ", ".join(paths))
    return Finished(paths, queued, summary)


class Job:
    """At most one verification at a time, on a thread of its own; `wake` is called when it
    finishes, and the loop then collects the outcome with `finished()`."""

    def __init__(
        self,
        verify: Verify,
        wake: Callable[[], None],
        monotonic: Callable[[], float],
        queued: Callable[[Sequence[DirResult]], None] = lambda results: None,
    ) -> None:
        self._verify = verify
        self._queued = queued
        self._wake = wake
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._done: Finished | None = None
        self._thread: threading.Thread | None = None
        self._cancel = Cancel()

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(
        self,
        config: AgentConfig,
        directories: Sequence[DirectoryConfig],
        task: TaskFollower | None = None,
    ) -> None:
        """Verify `directories`; with a `task`, read its settings first and verify those of
        the directories it still lists, with its excludes and target."""
        assert self._thread is None, "one verification at a time"
        cancel = self._cancel = Cancel()

        def run() -> None:
            done = Finished((), 0, None)
            fresh, chosen = None, directories
            if task is not None:  # the task's settings at each cycle, before verifying
                fresh = task.refresh()
                by_path = {d.path: d for d in fresh.directories}
                chosen = [by_path[d.path] for d in directories if d.path in by_path]
            if chosen or task is None:
                done = verify_and_queue(self._verify, fresh or config, chosen, cancel,
                                        self._monotonic, self._queued)  # fmt: skip
            done = replace(done, config=fresh)
            with self._lock:
                self._done = done
            self._wake()

        self._thread = threading.Thread(target=run, name="smsagent-verify", daemon=True)
        self._thread.start()

    def finished(self) -> Finished | None:
        """The outcome of a run that has ended since the last call, if any."""
        with self._lock:
            done, self._done = self._done, None
        if done is not None and self._thread is not None:
            self._thread.join()
            self._thread = None
        return done

    def stop(self, grace: float, deadline: float) -> None:
        """Ask the run to stop; after `grace` seconds end its helpers; wait until `deadline`
        (monotonic) at most."""
        self._cancel.set()
        thread = self._thread
        if thread is None:
            return
        thread.join(grace)
        if thread.is_alive():
            self._cancel.terminate()  # a helper busy hashing a large file ends now
            thread.join(max(0.1, deadline - self._monotonic()))
            if thread.is_alive():
                log.warning("%s did not stop in time; exiting anyway", thread.name)
