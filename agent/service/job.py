"""The daemon's verification job: one run at a time on its own thread, verified, queued for SMS
and summed up in one line, and stopped, or cut short by a reload, through the run's cancel
handle."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Sequence
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

# What a running verification never reads: a reload that changes only these lets it finish,
# since its results are then exactly what a new run would give.
NOT_READ_BY_A_RUN = ("schedule", "upload", "auth", "tls", "metrics", "origin", "warnings")


@dataclass(frozen=True)
class Finished:
    paths: tuple[str, ...]
    queued: int
    summary: str | None  # None: nothing was verified (only the task's settings were read)
    config: AgentConfig | None = None  # with the task's settings as just read
    # Cut short by a reload: the directories it was started with, to verify again at once.
    superseded: tuple[str, ...] = ()


def run_unaffected(old: AgentConfig, new: AgentConfig, paths: Collection[str]) -> bool:
    """Whether `new` verifies and queues the directories `paths` exactly as `old` does: only the
    schedule, the delivery's settings, the metrics file or other directories differ."""
    if old.reads_task or new.reads_task:
        return False  # the run reads the task's settings, and with the old configuration

    def what_a_run_reads(config: AgentConfig) -> AgentConfig:
        ours = sorted((d for d in config.directories if d.path in paths), key=lambda d: d.path)
        unread = {name: getattr(old, name) for name in NOT_READ_BY_A_RUN}
        return replace(config, directories=tuple(ours), **unread)

    return what_a_run_reads(old) == what_a_run_reads(new)


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
            doing = "stopping" if cancel.reason == "stop" else "reloading"
            log.info("%s: queueing the %s verified before the %s", doing,
                     counted(len(results), "directory", "directories"), cancel.reason)  # fmt: skip
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
        self._running: tuple[str, ...] = ()  # the directories of the run in progress
        self._superseded = False

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
        self._running, self._superseded = tuple(d.path for d in directories), False

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
            if self._superseded:
                done = replace(done, superseded=self._running)
            self._running = ()
        return done

    def supersede(self, old: AgentConfig, new: AgentConfig, reason: str) -> None:
        """A reload replaced `old` with `new`: end the run in progress at once, unless `new`
        changes nothing it does. Its helpers end through their pools; the directories it
        finished are queued, the one cut short is not, and `finished()` then names them all
        to verify again on `new`."""
        if self._thread is None or self._superseded or run_unaffected(old, new, self._running):
            return
        log.info("%s: the verification in progress is cancelled; its %s are verified again "
                 "on the new configuration", reason,
                 counted(len(self._running), "directory", "directories"))  # fmt: skip
        self._superseded = True
        self._cancel.terminate("reload")

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
