"""Compose `smsagent run`: schedule verifications, watch for changes, deliver, reload, stop.

Threads: the main thread runs the control loop and owns the scheduler, the watcher and every
decision; one job thread verifies at a time (so `limits.read_mb_per_s` and `limits.workers`
hold for the whole agent, and no directory is verified twice at once); one delivery thread
flushes the outbox. Signals only set flags and wake the loop through a self-pipe.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import select
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any, Callable, List

from ..config import AgentConfig, DirectoryConfig, load_config
from ..errors import AgentError
from ..model import DirResult
from ..sms import delivery
from ..sms.outbox import Outbox
from ..verify.plan import check_targets, exclude_rules
from ..verify.runner import run_verification
from . import metrics
from .notify import Notifier, watchdog_interval
from .scheduler import Scheduler
from .taskfollow import TaskFollower

log = logging.getLogger(__name__)

CONFIG_POLL = 2.0  # seconds between looks at the config file's mtime
WATCH_CHECK = 5.0  # seconds between watcher health checks
IDLE_FLUSH = 300.0  # the delivery loop looks at the outbox at least this often
MAX_SLEEP = 60.0  # re-read the wall clock at least this often (it can jump)
STOP_BUDGET = 7.0  # SIGTERM to exit within 10 s, even if a helper is slow to quit
STOP_GRACE = 2.0  # then the helpers still hashing (our child processes) are terminated

Verify = Callable[..., List[DirResult]]


class _Waker:
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


@dataclass(frozen=True)
class _Finished:
    paths: tuple[str, ...]
    queued: int
    summary: str | None  # None: nothing was verified (only the task's settings were read)
    config: AgentConfig | None = None  # with the task's settings as just read


def config_signature(path: Path | None) -> tuple[int, ...] | None:
    """What changes when the config file is rewritten, renamed over, or touched."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def child_pids(pid: int | None = None) -> list[int]:
    """Direct child processes, from /proc (CONFIG_PROC_CHILDREN); [] where unavailable."""
    pid = pid or os.getpid()
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    children: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                children += [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            continue
    return children


def terminate_children() -> None:
    """SIGTERM our own helpers; unreaped children keep their pid, so none can be a stranger."""
    for child in child_pids():
        log.info("stopping helper process %d", child)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)


def validate_for_daemon(config: AgentConfig) -> AgentConfig:
    """What `run` needs beyond a parseable file: directories, each with a target."""
    if not (config.directories_from_task or config.target_from_task):
        check_targets(config, config.directories)  # else they come with the task, each cycle
    return config


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


class Daemon:
    """The long-running agent; `run()` returns the exit code."""

    def __init__(
        self,
        config: AgentConfig,
        config_path: Path | None,
        *,
        verify: Verify = run_verification,
        load: Callable[[Path | None], AgentConfig] = load_config,
        notifier: Notifier | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ):
        environ = os.environ if environ is None else environ
        self.config = validate_for_daemon(config)
        # With directories, excludes or target from the task, self.config has them applied.
        self._task: TaskFollower | None = None
        if config.reads_task:
            self._task = TaskFollower(self.config, monotonic=monotonic)
            self.config = self._task.current()
        self.config_path = config_path
        self._verify = verify
        self._load = load
        self.notifier = notifier or Notifier.from_env(environ)
        self._ping_every = watchdog_interval(environ)
        self._clock = clock
        self._monotonic = monotonic
        self.stop = stop or threading.Event()
        self._waker = _Waker()
        self._lock = threading.Lock()  # guards the fields threads hand back below
        self._changed: list[str] = []
        self._finished: _Finished | None = None
        self._term = False
        self._hup = False
        self._flush_now = threading.Event()
        self._pending = 0
        self._job: threading.Thread | None = None
        self._watcher: Any = None  # agent.watch.Watcher, imported only when watching
        self._watch_generation = 0  # a watcher started for an older config is dropped
        self._watch_started: list[tuple[int, Any, bool]] = []
        self._last_summary = "no verification yet"
        self.scheduler = Scheduler(
            config.schedule, [d.path for d in config.directories], now=clock(), rand=rand
        )

    # --- entry points for other threads and signal handlers ---

    def request_stop(self) -> None:
        self._term = True
        self._waker.wake()

    def request_reload(self) -> None:
        self._hup = True
        self._waker.wake()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only flags: the loop acts on them, so no lock is ever taken inside a handler.
        if signum == signal.SIGHUP:
            self._hup = True
        else:
            self._term = True

    def _on_change(self, path: str) -> None:
        log.info(
            "%s: changes settled, verifying it again", path, extra={"ctx": {"directory": path}}
        )
        with self._lock:
            self._changed.append(path)
        self._waker.wake()

    # --- the control loop ---

    def run(self, *, handle_signals: bool = True) -> int:
        restore = self._install_signals() if handle_signals else None
        # Daemon threads: after STOP_BUDGET the process exits even if one is stuck in I/O; the
        # outbox loses nothing, since an entry leaves it only after SMS acknowledged it.
        deliverer = threading.Thread(
            target=self._deliver_loop, name="smsagent-deliver", daemon=True
        )
        try:
            with Outbox(self.config.state_dir):  # READY promises the state is usable
                pass
            self._write_metrics()
            self._announce(self.config)
            deliverer.start()
            self._start_watcher(self.config)
            self.notifier.ready(f"started; {self._last_summary}")
            self._log_next()
            self._loop()
        finally:
            self.notifier.stopping("stopping")
            self.stop.set()
            self._flush_now.set()
            deadline = self._monotonic() + STOP_BUDGET
            self._watch_generation += 1
            if self._watcher is not None:
                self._watcher.stop()
            with self._lock:
                late, self._watch_started = self._watch_started, []
            for _, watcher, _ in late:
                watcher.stop()
            if self._job is not None:
                self._job.join(STOP_GRACE)
                if self._job.is_alive():
                    # A helper finishes the file it is hashing before it reads its closed
                    # stdin; a throttled read of a large file would hold the exit for minutes.
                    terminate_children()
            for thread in (self._job, deliverer):
                if thread is not None and thread.is_alive():
                    thread.join(max(0.1, deadline - self._monotonic()))
                    if thread.is_alive():
                        log.warning("%s did not stop in time; exiting anyway", thread.name)
            if restore:
                restore()
            self.notifier.close()
            self._waker.close()
        log.info("stopped")
        return 0

    def _loop(self) -> None:
        start = self._monotonic()
        # A timer that does not apply waits forever, so it never cuts the sleep short.
        next_ping = start if self._ping_every is not None else math.inf
        next_config_look = start + CONFIG_POLL if self.config_path is not None else math.inf
        next_watch_check = start + WATCH_CHECK
        signature = config_signature(self.config_path)
        while not self._term:
            mono = self._monotonic()
            if self._ping_every is not None and mono >= next_ping:
                self.notifier.watchdog()
                next_ping = mono + self._ping_every
            reload_reason = None
            if self._hup:
                self._hup, reload_reason = False, "SIGHUP"
            if self.config_path is not None and mono >= next_config_look:
                next_config_look = mono + CONFIG_POLL
                current = config_signature(self.config_path)
                if current is not None and current != signature:
                    reload_reason = reload_reason or "the config file changed"
            if reload_reason:
                signature = config_signature(self.config_path)
                self._reload(reload_reason)
            if mono >= next_watch_check:
                next_watch_check = mono + WATCH_CHECK
                if self._watcher is not None and not self._watcher.check():
                    self._watcher.stop()
                    self._watcher = None
            self._adopt_watchers()
            self._collect()
            self._maybe_start()
            self._waker.wait(self._sleep_time(next_ping, next_config_look, next_watch_check))

    def _sleep_time(self, *monotonic_deadlines: float) -> float:
        mono = self._monotonic()
        candidates = [MAX_SLEEP]
        candidates += [d - mono for d in monotonic_deadlines]
        if self._job is None:
            wake = self.scheduler.next_wakeup()
            if wake is not None:
                candidates.append(wake - self._clock())
            if self._task is not None:
                candidates.append(self._task.next_look() - mono)
        return max(0.0, min(candidates))

    def _collect(self) -> None:
        with self._lock:
            changed, self._changed = self._changed, []
            finished, self._finished = self._finished, None
        for path in changed:
            self.scheduler.request(path)
        if finished is not None:
            if self._job is not None:
                self._job.join()
                self._job = None
            self.scheduler.finish(finished.paths, self._clock())
            if finished.config is not None and finished.config != self.config:
                self._adopt(self.config, finished.config)
            if finished.summary is None:
                return
            when = datetime.fromtimestamp(self._clock())
            self._last_summary = f"last run {when:%H:%M:%S}: {finished.summary}"
            if finished.queued:
                self._flush_now.set()
            self.notifier.status(self._status_text())
            self._log_next()

    def _maybe_start(self) -> None:
        if self._job is not None or self.stop.is_set():
            return
        due = self.scheduler.due(self._clock())
        look = self._task is not None and self._monotonic() >= self._task.next_look()
        if not due and not look:
            return
        config = self.config
        by_path = {d.path: d for d in config.directories}
        directories = [by_path[p] for p in due if p in by_path]
        self.scheduler.start(due, self._clock())
        self._job = threading.Thread(
            target=self._verify_job,
            args=(config, directories),
            name="smsagent-verify",
            daemon=True,
        )
        if directories:
            self.notifier.status(f"verifying {len(directories)} directories; {self._last_summary}")
        self._job.start()

    def _log_next(self) -> None:
        wake = self.scheduler.next_wakeup()
        if wake is not None and wake > self._clock():
            log.info(
                "next verification at %s", datetime.fromtimestamp(wake).isoformat(" ", "seconds")
            )

    def _status_text(self) -> str:
        return f"{self._last_summary}; {self._pending} result(s) awaiting delivery"

    # --- work on other threads ---

    def _verify_job(self, config: AgentConfig, directories: list[DirectoryConfig]) -> None:
        fresh = None
        if self._task is not None:  # the task's settings at each cycle, before verifying
            config = fresh = self._task.refresh()
            by_path = {d.path: d for d in config.directories}
            directories = [by_path[d.path] for d in directories if d.path in by_path]
            if not directories:
                with self._lock:
                    self._finished = _Finished((), 0, None, fresh)
                self._waker.wake()
                return
        paths = tuple(d.path for d in directories)
        started = self._monotonic()
        queued, summary = 0, "interrupted"
        try:
            results = self._verify(config, directories, stop=self.stop)
            elapsed = self._monotonic() - started
            if self.stop.is_set():
                # Directories finished before the stop are kept; the one cut short is not.
                results = [r for r in results if r.error is None]
                log.info("stopping: queueing the %d directories verified before the stop",
                         len(results))  # fmt: skip
            if results:
                summary = summarize(results, elapsed)
                report = delivery.enqueue(config, results)
                queued = report.queued
                self._write_metrics(results)
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
        with self._lock:
            self._finished = _Finished(paths, queued, summary, fresh)
        self._waker.wake()

    def _deliver_loop(self) -> None:
        while not self.stop.is_set():
            self._flush_now.clear()
            wait = IDLE_FLUSH
            try:
                report = delivery.flush(self.config, stop_event=self.stop)
                self._pending = report.pending
                self._write_metrics(flushed=report)
                if report.next_try is not None:
                    wait = min(wait, report.next_try - self._clock())
            except AgentError as exc:
                log.warning("delivery failed, results stay queued: %s", exc)
            except Exception:
                log.exception("delivery failed, results stay queued")
            self._flush_now.wait(max(0.2, wait))

    def _write_metrics(
        self, results: Sequence[DirResult] = (), flushed: delivery.FlushReport | None = None
    ) -> None:
        """Called from the job and delivery threads; the writer takes its own lock."""
        config = self.config
        try:
            metrics.write(config, results, flushed, keep=[d.path for d in config.directories])
        except AgentError as exc:
            log.warning("metrics not written: %s", exc)

    # --- configuration and the watcher ---

    def _reload(self, reason: str) -> None:
        self.notifier.reloading()
        try:
            new = validate_for_daemon(self._load(self.config_path))
        except AgentError as exc:
            log.error("%s: configuration not reloaded, the previous one stays in force: %s",
                      reason, exc)  # fmt: skip
            self.notifier.ready(f"reload rejected; {self._status_text()}")
            return
        if not new.reads_task:
            self._task = None
        elif self._task is None:
            self._task = TaskFollower(new, monotonic=self._monotonic)
            new = self._task.current()
        else:
            new = self._task.rebase(new)
        if new == self.config:
            log.info("%s: configuration unchanged", reason)
        else:
            self._adopt(self.config, new)
            log.info("%s: configuration reloaded from %s", reason, new.source)
        self.notifier.ready(self._status_text())

    def _adopt(self, old: AgentConfig, new: AgentConfig) -> None:
        """Run with a new configuration: a reloaded file, or the task's settings changed."""
        self.config = new
        self._announce(new)
        self.scheduler.reconfigure(
            new.schedule, [d.path for d in new.directories], now=self._clock()
        )
        if self._watch_inputs(new) != self._watch_inputs(old) or self._watcher is None:
            if self._watcher is not None:
                self._watcher.stop()
                self._watcher = None
            self._start_watcher(new)

    def _announce(self, config: AgentConfig) -> None:
        for warning in config.warnings:
            log.warning("%s", warning)
        s = config.schedule
        log.info(
            "%d directories, every %gs (jitter %gs)%s%s; state in %s",
            len(config.directories), s.interval, s.jitter,
            " inside the window" if s.window else "",
            f", watching changes (debounce {s.debounce:g}s)" if s.watch else "",
            config.state_dir,
        )  # fmt: skip
        if not config.endpoint or not config.task_id:
            log.warning("endpoint or task_id is not set: results are kept locally, not uploaded")

    @staticmethod
    def _watch_inputs(config: AgentConfig) -> tuple[object, ...]:
        s = config.schedule
        return (s.watch, s.debounce, config.directories, config.exclude, config.state_dir)

    def _start_watcher(self, config: AgentConfig) -> None:
        """Start watching on a thread of its own: adding a watch for every directory of a big
        tree takes a while, and the loop must keep answering systemd's watchdog meanwhile."""
        self._watch_generation += 1
        generation = self._watch_generation
        if not config.schedule.watch:
            return
        from .watch import WatchedDir, Watcher  # watchdog is loaded only when watching

        dirs = [WatchedDir(d.path, exclude_rules(config, d).excluded) for d in config.directories]
        watcher = Watcher(
            dirs,
            debounce=config.schedule.debounce,
            on_change=self._on_change,
            ignored=[str(config.state_dir)],
        )

        def start() -> None:
            ok = watcher.start()
            with self._lock:
                self._watch_started.append((generation, watcher, ok))
            self._waker.wake()

        threading.Thread(target=start, name="smsagent-watch-start", daemon=True).start()

    def _adopt_watchers(self) -> None:
        with self._lock:
            started, self._watch_started = self._watch_started, []
        for generation, watcher, ok in started:
            if ok and generation == self._watch_generation and not self.stop.is_set():
                self._watcher = watcher
                log.info("watching %d directories for changes", len(watcher.dirs))
            else:
                watcher.stop()  # failed (it warned), or made for a config since replaced

    def _install_signals(self) -> Callable[[], None] | None:
        if threading.current_thread() is not threading.main_thread():
            return None
        old_fd = signal.set_wakeup_fd(self._waker.w, warn_on_full_buffer=False)
        previous = {
            sig: signal.signal(sig, self._on_signal)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }

        def restore() -> None:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_fd)

        return restore
